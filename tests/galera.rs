//! The SST method on a real two-node Galera cluster (MariaDB 10.11 +
//! galera-4 on loopback, started and stopped by this test): a joiner is
//! provisioned by `wsrep_sst_sluice` in backup mode and its tables equal
//! the donor's; a donor with wrong SST credentials makes the joiner abort
//! with sluice's message in its error log and no usable datadir.
//!
//! Needs root and `mariadb-server galera-4 mariadb-backup` (.ci/run
//! installs them); elsewhere the tests say SKIPPED. `SLUICE_GALERA_MIB`
//! sets the data size (default 200), `SLUICE_KEEP_CLUSTER=1` keeps the
//! cluster directory for inspection.

mod cluster;

use std::path::{Path, PathBuf};
use std::time::Duration;

use cluster::{Cluster, Spec};

fn workdir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(name)
}

fn sluice() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_sluice"))
}

/// Bootstraps node 1 with the SST user and `mib` MiB of data.
fn donor(c: &mut Cluster, mib: u64) {
    c.install(0);
    c.start(0, true);
    c.wait_synced(0, Duration::from_secs(120)).unwrap();
    c.create_sst_user(0);
    c.load(0, mib);
}

#[test]
fn a_joiner_is_provisioned_by_sluice_and_its_tables_equal_the_donors() {
    if let Some(why) = cluster::unavailable() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let mib = std::env::var("SLUICE_GALERA_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let mut spec = Spec::new(24_000);
    spec.sst = "streams=2\n".into();
    let mut c = Cluster::new(&workdir("galera-sst"), &spec, sluice());
    donor(&mut c, mib);
    c.start(1, false);
    let synced = c.wait_synced(1, Duration::from_secs(600));
    c.keep_logs(&workdir("galera-sst-logs"));
    let took = synced.unwrap_or_else(|e| panic!("joiner failed: {e}\ndonor log tail:\n{}", c.log_tail(0, 40)));
    eprintln!("joiner Synced {:.1} s after start ({mib} MiB loaded)", took.as_secs_f64());

    let (a, b) = (c.checksums(0), c.checksums(1));
    assert_eq!(a.lines().count(), 3, "{a}");
    assert_eq!(a, b, "CHECKSUM TABLE differs between donor and joiner");
    let rows = c.sql(1, "SELECT COUNT(*) FROM sb.blobs").unwrap();
    assert!(rows.parse::<u64>().unwrap() >= 4096, "{rows}");
    let joiner = c.error_log(1);
    assert!(joiner.contains("WSREP_SST: [INFO] sluice SST finished on joiner"), "joiner log:\n{joiner}");
    assert!(c.error_log(0).contains("WSREP_SST: [INFO] sluice SST finished on donor"));
    assert!(c.nodes[1].datadir.join("mariabackup.prepare.log").exists());
    assert!(c.nodes[1].datadir.join("mariabackup.move.log").exists());
    assert!(c.nodes[0].datadir.join("mariabackup.backup.log").exists());
    assert!(!c.nodes[1].datadir.join(".sst").exists(), "staging directory left behind");
    assert!(!c.nodes[1].datadir.join("sst_in_progress").exists());
    // The cluster works: a write on the joiner reaches the donor.
    c.sql(1, "INSERT INTO sb.small (a, s) VALUES (424242, 'from the joiner')").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(c.sql(0, "SELECT s FROM sb.small WHERE a = 424242").unwrap(), "from the joiner");
}

#[test]
fn a_donor_with_wrong_credentials_fails_the_joiner_with_sluices_message() {
    if let Some(why) = cluster::unavailable() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let mut spec = Spec::new(24_100);
    spec.auth[0] = "sstuser:wrong-password".into();
    let mut c = Cluster::new(&workdir("galera-baddonor"), &spec, sluice());
    donor(&mut c, 16);
    c.start(1, false);
    let exited = c.wait_exit(1, Duration::from_secs(300));
    c.keep_logs(&workdir("galera-baddonor-logs"));
    assert!(exited, "the joiner should abort; log tail:\n{}", c.log_tail(1, 40));
    let joiner = c.error_log(1);
    let donor = c.error_log(0);
    assert!(donor.contains("WSREP_SST: [ERROR] sluice SST failed on donor: mariadb-backup --backup failed"), "donor log:\n{donor}");
    assert!(!donor.contains("wrong-password"), "the password leaked into the donor's log");
    assert!(joiner.contains("WSREP_SST: [ERROR] sluice SST failed on joiner"), "joiner log:\n{joiner}");
    assert!(joiner.contains("mariadb-backup --backup failed"), "the joiner names the donor's cause:\n{joiner}");
    assert!(!joiner.contains("wrong-password"));
    let data = &c.nodes[1].datadir;
    assert!(!data.join("ibdata1").exists() && !data.join("mysql").exists(), "the joiner's datadir looks usable");
    let staging = data.join(".sst");
    assert!(!staging.exists() || staging.join(".sluice-incomplete").exists(), "staging without the incomplete marker");
}
