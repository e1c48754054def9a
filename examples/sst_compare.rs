//! SST benchmark on a real two-node Galera cluster: the same dataset
//! provisioned by the stock `mariabackup` method (socat), by sluice in
//! backup mode and by sluice in copy mode, alternately in one run, timed from the joiner's mariadbd start to
//! `Synced`. sluice's time is broken down from its own log lines.
//!
//! Run by perf/sst-compare.sh (needs root, mariadb-server, galera-4,
//! mariadb-backup, socat). Arguments: `<sluice binary> <MiB> <rounds>
//! <workdir>`; `METHODS=sluice,sluice-copy` picks the methods. With
//! `SLUICE_OLD=<another sluice binary>` (say, the previous main), the
//! methods `sluice-old` and `sluice-copy-old` run that build in the same
//! run, for a before/after comparison. With `OLD_DATADIR=1` the joiner
//! is not wiped between SSTs: each SST (after the first) replaces a full
//! old datadir, whose Galera position is reset to force a full SST — what
//! a joiner that keeps its old data aside pays for.

#[path = "../tests/cluster/mod.rs"]
mod cluster;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cluster::{Cluster, Spec};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let sluice = PathBuf::from(args.get(1).expect("usage: sst_compare <sluice> <MiB> <rounds> <workdir>"));
    let mib: u64 = args.get(2).map_or(4096, |v| v.parse().expect("MiB"));
    let rounds: usize = args.get(3).map_or(2, |v| v.parse().expect("rounds"));
    let work = PathBuf::from(args.get(4).map_or("/tmp/sluice-sst-bench", String::as_str));
    if let Some(why) = cluster::unavailable() {
        eprintln!("cannot run: {why}");
        std::process::exit(2);
    }
    let mut spec = Spec::new(25_000);
    spec.sst = std::env::var("SST_SECTION").unwrap_or_default().replace("\\n", "\n");
    // The stock rsync method cannot run as root (GALERA-TESTING.md §4).
    spec.os_user = std::env::var("SST_OS_USER").ok();
    let mut c = Cluster::new(&work, &spec, &sluice.canonicalize().expect("sluice binary"));
    if let Ok(old) = std::env::var("SLUICE_OLD") {
        // The old build under another method name (it recognises only its
        // own name, so a wrapper runs its `sst` subcommand).
        let old = PathBuf::from(old).canonicalize().expect("SLUICE_OLD binary");
        let w = c.bin_dir.join("wsrep_sst_sluiceold");
        std::fs::write(&w, format!("#!/bin/sh\nexec {} sst \"$@\"\n", old.display())).unwrap();
        std::fs::set_permissions(&w, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    c.install(0);
    c.start(0, true);
    c.wait_synced(0, Duration::from_secs(120)).expect("bootstrap");
    c.create_sst_user(0);
    let t = Instant::now();
    c.load(0, mib);
    let size = c
        .sql(0, "SELECT ROUND(SUM(DATA_LENGTH + INDEX_LENGTH) / 1048576) FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'sb'")
        .unwrap();
    let du = std::process::Command::new("du").args(["-sm"]).arg(&c.nodes[0].datadir).output().unwrap();
    println!(
        "loaded {size} MiB of table data in {:.0} s; donor datadir {} MiB",
        t.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&du.stdout).split_whitespace().next().unwrap_or("?")
    );
    let expect = c.checksums(0);
    for round in 1..=rounds {
        let methods: Vec<String> = std::env::var("METHODS").map_or_else(
            |_| vec!["mariabackup".into(), "sluice".into(), "sluice-copy".into()],
            |m| m.split(',').map(String::from).collect(),
        );
        for method in methods.iter().map(String::as_str) {
            c.stop(1);
            let grastate = c.nodes[1].datadir.join("grastate.dat");
            if std::env::var_os("OLD_DATADIR").is_some() && grastate.exists() {
                let g = std::fs::read_to_string(&grastate).unwrap();
                let reset: String =
                    g.lines().map(|l| if l.starts_with("seqno:") { "seqno:   -1\n".to_string() } else { format!("{l}\n") }).collect();
                std::fs::write(&grastate, reset).unwrap();
            } else {
                c.wipe(1);
            }
            let copy = method.starts_with("sluice-copy");
            let old = method.ends_with("-old");
            let _ = std::fs::remove_file(c.nodes[1].dir.join("console.log"));
            c.set_sst_method(
                1,
                match (old, method.starts_with("sluice")) {
                    (true, _) => "sluiceold",
                    (false, true) => "sluice",
                    (false, false) => method,
                },
            );
            // The joiner's mode decides; the last `mode=` line of [sst] wins.
            let cnf = std::fs::read_to_string(&c.nodes[1].cnf).unwrap();
            std::fs::write(&c.nodes[1].cnf, format!("{cnf}mode={}\n", if copy { "copy" } else { "backup" })).unwrap();
            let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
            c.start(1, false);
            let took = c.wait_synced(1, Duration::from_secs(1200)).unwrap_or_else(|e| panic!("{method}: {e}"));
            assert_eq!(c.checksums(1), expect, "{method}: tables differ");
            let mut line = format!(
                "round {round} {method:<12} SST {:6.1} s  (loadavg {})",
                took.as_secs_f64(),
                load.split_whitespace().next().unwrap_or("?")
            );
            if method == "sluice" || method == "sluice-old" {
                line += &breakdown(&c.error_log(1));
            }
            if copy {
                let log = c.error_log(0);
                let lock = log
                    .lines()
                    .rev()
                    .find_map(|l| l.split("the tables were locked for ").nth(1))
                    .and_then(|r| r.split(' ').next())
                    .unwrap_or("?");
                line.push_str("  donor lock held ");
                line.push_str(lock);
                line.push_str(" s");
            }
            println!("{line}");
            c.keep_logs(&work.with_extension(format!("logs-{round}-{method}")));
        }
    }
}

/// Stage times from the joiner's `WSREP_SST:` lines of the last SST.
fn breakdown(log: &str) -> String {
    let last = log.rfind("sluice SST started on joiner").map_or(log, |i| &log[i..]);
    let grab = |key: &str, after: &str| {
        last.lines()
            .find(|l| l.contains(key))
            .and_then(|l| l.split(after).nth(1))
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or("?")
            .to_string()
    };
    format!(
        "  backup+transfer {} s ({} MiB/s), prepare {} s, move-back {} s",
        grab("received ", " in "),
        grab("received ", "s (").trim_end_matches(')'),
        grab("--prepare took", "took "),
        grab("--move-back took", "took ")
    )
}
