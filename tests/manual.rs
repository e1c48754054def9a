//! Manual SST with real MariaDB servers: `sluice send --backup` from a
//! running server, `sluice recv --prepare --datadir` into an empty datadir,
//! the restored server starts with equal tables; a Galera node restored
//! this way joins its cluster from the written grastate.dat; busy or
//! non-empty datadirs are refused. Needs root and the MariaDB packages
//! (.ci/run installs them); elsewhere SKIPPED.

mod cluster;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cluster::{Cluster, Spec};

fn workdir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(name)
}

fn sluice() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
}

fn wait_ready(c: &mut Cluster, i: usize) {
    let t = Instant::now();
    while c.sql(i, "SELECT 1").is_err() {
        assert!(c.running(i), "node {} exited:\n{}", i + 1, c.log_tail(i, 30));
        assert!(t.elapsed() < Duration::from_secs(120), "node {} not ready", i + 1);
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `recv --prepare` into node 2's datadir (or, `two_step`, `recv
/// --dir` and then `restore`) and `send --backup` from node 1; returns the
/// stderr of the step that restored.
fn manual_sst(c: &Cluster, extra_send: &[&str], two_step: bool) -> String {
    let staging = c.root.join("received-backup");
    let mut recv = sluice();
    recv.args(["recv", "--listen", "127.0.0.1:0", "--json"]);
    if two_step {
        recv.arg("--dir").arg(&staging);
    } else {
        recv.args(["--prepare", "--datadir"]).arg(&c.nodes[1].datadir);
    }
    let mut recv = recv.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(recv.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    let (addr, token) = (v["addr"].as_str().unwrap().to_string(), v["token"].as_str().unwrap().to_string());
    let sent = sluice()
        .args(["send", "--backup", "--to", &addr, "--user", "sstuser"])
        .arg("--defaults-file")
        .arg(&c.nodes[0].cnf)
        .arg("--socket")
        .arg(&c.nodes[0].socket)
        .arg("--backup-log")
        .arg(c.nodes[0].dir.join("manual-backup.log"))
        .args(extra_send)
        .env("SLUICE_TOKEN", &token)
        .env("MYSQL_PWD", "sstpass")
        .output()
        .unwrap();
    let out = recv.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(sent.status.success(), "send --backup failed: {}", String::from_utf8_lossy(&sent.stderr));
    assert!(out.status.success(), "recv failed: {err}");
    if !two_step {
        return err;
    }
    assert!(staging.join("xtrabackup_checkpoints").exists() || staging.join("mariadb_backup_checkpoints").exists(), "a backup arrived");
    let restored = sluice().args(["restore", "--backup-dir"]).arg(&staging).arg("--datadir").arg(&c.nodes[1].datadir).output().unwrap();
    let err = String::from_utf8_lossy(&restored.stderr).into_owned();
    assert!(restored.status.success(), "restore failed: {err}");
    err
}

#[test]
fn manual_sst_between_two_standalone_servers() {
    if let Some(why) = cluster::unavailable() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let mut spec = Spec::new(26_000);
    spec.mysqld = "wsrep_on=OFF\n".into();
    let mut c = Cluster::new(&workdir("manual-standalone"), &spec, Path::new(env!("CARGO_BIN_EXE_sluice")));
    c.install(0);
    c.start(0, false);
    wait_ready(&mut c, 0);
    c.create_sst_user(0);
    c.load(0, 32);

    // Refusals first: a datadir a running server holds, a non-empty one.
    let busy = sluice().args(["recv", "--listen", "127.0.0.1:0", "--prepare", "--datadir"]).arg(&c.nodes[0].datadir).output().unwrap();
    assert!(!busy.status.success());
    let e = String::from_utf8_lossy(&busy.stderr);
    assert!(e.contains("held by a running mysqld"), "{e}");
    std::fs::write(c.nodes[1].datadir.join("leftover.ibd"), b"old").unwrap();
    let full = sluice().args(["recv", "--listen", "127.0.0.1:0", "--prepare", "--datadir"]).arg(&c.nodes[1].datadir).output().unwrap();
    assert!(!full.status.success());
    assert!(String::from_utf8_lossy(&full.stderr).contains("is not empty"));
    assert_eq!(std::fs::read(c.nodes[1].datadir.join("leftover.ibd")).unwrap(), b"old", "a refusal touches nothing");
    std::fs::remove_file(c.nodes[1].datadir.join("leftover.ibd")).unwrap();

    let log = manual_sst(&c, &[], false);
    assert!(log.contains("no Galera position"), "{log}");
    let d = &c.nodes[1].datadir;
    assert!(d.join("ibdata1").exists() && !d.join(".sst").exists() && !d.join("grastate.dat").exists());
    c.start(1, false);
    wait_ready(&mut c, 1);
    assert_eq!(c.checksums(0), c.checksums(1), "the restored server's tables differ");

    // The same in two steps: receive the backup, check it, restore it.
    c.stop(1);
    c.wipe(1);
    c.sql(0, "INSERT INTO sb.small (a, s) VALUES (99, 'second manual SST')").unwrap();
    manual_sst(&c, &[], true);
    c.start(1, false);
    wait_ready(&mut c, 1);
    assert_eq!(c.checksums(0), c.checksums(1), "the two-step restore differs");
}

#[test]
fn a_galera_node_restored_by_hand_joins_from_its_grastate() {
    if let Some(why) = cluster::unavailable() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let mut c = Cluster::new(&workdir("manual-galera"), &Spec::new(26_100), Path::new(env!("CARGO_BIN_EXE_sluice")));
    c.install(0);
    c.start(0, true);
    c.wait_synced(0, Duration::from_secs(120)).unwrap();
    c.create_sst_user(0);
    c.load(0, 16);
    let log = manual_sst(&c, &["--galera-info"], false);
    assert!(log.contains("grastate.dat at "), "{log}");
    let grastate = std::fs::read_to_string(c.nodes[1].datadir.join("grastate.dat")).unwrap();
    assert!(grastate.contains("version: 2.1") && grastate.contains("safe_to_bootstrap: 0"), "{grastate}");
    let uuid =
        c.sql(0, "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME='wsrep_local_state_uuid'").unwrap();
    assert!(grastate.contains(&format!("uuid:    {uuid}")), "{grastate}");
    c.start(1, false);
    c.wait_synced(1, Duration::from_secs(300)).unwrap();
    assert_eq!(c.checksums(0), c.checksums(1));
    assert!(!c.error_log(1).contains("sluice SST started on joiner"), "no SST was needed:\n{}", c.log_tail(1, 40));
}
