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
//! a joiner that keeps its old data aside pays for. With `FAULT=kill3`,
//! every established connection on the joiner's SST port is killed (`ss
//! -K`, both ends) three times, 1 s apart, from 0.5 s after the first
//! connection: the SST that survives it is timed, one that fails is
//! reported as failed (the stock method's socat pipe cannot resume).
//! `FAULT=outage` is a 5 s outage 1 s into the transfer: every connection
//! on the SST port is killed as soon as it is established, for 5 s, so the
//! sender's reconnections fail and (backup mode) its replay buffer fills
//! and holds mariadb-backup back: the peak RSS shows what a full buffer
//! costs. A list (`FAULT=kill3,outage`) names one fault per round.
//! `FAULT=linkdown` (with `LINK`) takes the donor's end of the SST's link
//! down for 20 s, 1 s into the transfer, and brings it up again:
//! connections are not killed, nothing is acknowledged meanwhile, and the
//! sender's replay buffer fills. (The SST has a link of its own in this
//! rig: down, the one link of a two-node cluster would partition it and
//! the donor would lose quorum, as a first try showed — mariadb-backup's
//! BACKUP LOCK failed with "WSREP has not yet prepared node for
//! application use".)
//!
//! With `LINK=1gbit` (any tc rate) the two nodes run as two hosts: each in
//! a network namespace of its own, joined by a veth pair shaped by `tc …
//! tbf` to that rate (`CC=cubic` to change the congestion control from
//! BBR); each SST then also reports the bytes that crossed the link and the
//! CPU seconds per GiB of table data of each node's SST processes (the
//! script and every helper it waited for: mariadb-backup, socat, the
//! compressor, sluice). Methods beyond the three above: `mariabackup-zstd`
//! (the stock method with `compressor=zstd -1` / `decompressor=zstd -d`),
//! `rsync` (the stock rsync method; needs `SST_OS_USER`, it will not run as
//! root), `sluice-none` (backup mode with `compressor=none`),
//! `sluice-copy-full` (copy mode with `delta=off`: everything travels),
//! `sluice-full` (backup mode with `delta=off`), `sluice-fixed` (backup mode
//! with `streams=2`: a fixed count, as before streams were chosen by
//! measurement).
//!
//! With `OLD_DATADIR=1 CHANGE_PCT=5`, before each SST that percentage of
//! every table's rows (a contiguous range of ids, a different one each
//! time) is updated on the donor: the joiner's old datadir is stale by
//! that much, the case of a delta SST (`sluice` and `sluice-copy`, whose
//! `delta` is on by default toward another host).
//!
//! With `JOINER_FS=xfs` the joiner's datadir is an XFS filesystem of its
//! own (a sparse image beside the workdir on a loop device, `reflink=1`,
//! as `mkfs.xfs` makes it by default since xfsprogs 5.1): there a delta
//! SST's joiner assembles its new files from the old ones by sharing
//! extents (`copy_file_range` reflinks), instead of writing the datadir
//! again — the joiner a production host on XFS is. Needs `mkfs.xfs`
//! (xfsprogs) and a loop device. `JOINER_FS=xfs-ram` puts that image in
//! /dev/shm: the joiner's disk is then not the donor's (two hosts have a
//! disk each; on this rig both namespaces otherwise share one), and a
//! fast one.

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
    let link = std::env::var("LINK").ok().filter(|l| !l.is_empty());
    if link.is_some() {
        spec.netns = Some(79);
    }
    // Declared before the cluster, so it is unmounted after the cluster's
    // nodes have stopped.
    let mut _joiner_fs: Option<Mounted> = None;
    let mut c = Cluster::new(&work, &spec, &sluice.canonicalize().expect("sluice binary"));
    if let Ok(kind) = std::env::var("JOINER_FS") {
        let image = match kind.as_str() {
            "xfs" => work.with_extension("joiner-xfs.img"),
            "xfs-ram" => std::path::Path::new("/dev/shm").join(format!("sluice-joiner-{}.img", std::process::id())),
            _ => panic!("JOINER_FS takes xfs or xfs-ram"),
        };
        let m = Mounted::xfs(&image, &c.nodes[1].datadir);
        println!("the joiner's datadir is an XFS filesystem of its own (reflink=1) on {}", m.image.display());
        _joiner_fs = Some(m);
    }
    if let Ok(old) = std::env::var("SLUICE_OLD") {
        // The old build under another method name (it recognises only its
        // own name, so a wrapper runs its `sst` subcommand).
        let old = PathBuf::from(old).canonicalize().expect("SLUICE_OLD binary");
        let w = c.bin_dir.join("wsrep_sst_sluiceold");
        std::fs::write(&w, format!("#!/bin/sh\nexec {} sst \"$@\"\n", old.display())).unwrap();
        std::fs::set_permissions(&w, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    if let (Some(rate), Some(rig)) = (&link, &c.rig) {
        rig.shape(rate);
        rig.congestion_control(&std::env::var("CC").unwrap_or_else(|_| "bbr".into()));
        println!("two hosts: network namespaces {} ↔ {} over a {rate} tbf link", rig.addr[0], rig.addr[1]);
    }
    // Each SST writes its method's [sst] lines after these.
    let base_cnf: Vec<String> = c.nodes.iter().map(|n| std::fs::read_to_string(&n.cnf).unwrap()).collect();
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
    let mut expect = c.checksums(0);
    let table_gib = size.trim().parse::<f64>().unwrap_or(0.0) / 1024.0;
    for round in 1..=rounds {
        let methods: Vec<String> = std::env::var("METHODS").map_or_else(
            |_| vec!["mariabackup".into(), "sluice".into(), "sluice-copy".into()],
            |m| m.split(',').map(String::from).collect(),
        );
        for (m, method) in methods.iter().map(String::as_str).enumerate() {
            c.stop(1);
            if let Some(pct) = std::env::var("CHANGE_PCT").ok().and_then(|p| p.parse::<u64>().ok()) {
                let t = Instant::now();
                let turn = (round - 1) * methods.len() + m;
                for table in ["blobs", "texts", "small"] {
                    let n: u64 = c.sql(0, &format!("SELECT MAX(id) FROM sb.{table}")).unwrap().trim().parse().unwrap_or(0);
                    let span = n * pct / 100;
                    let from = (turn as u64 * span) % n.max(1);
                    let set = match table {
                        "blobs" => "b = REVERSE(b)",
                        "texts" => "t = REVERSE(t)",
                        _ => "s = REVERSE(s)",
                    };
                    c.sql(0, &format!("UPDATE sb.{table} SET {set} WHERE id > {from} AND id <= {}", from + span)).unwrap();
                }
                println!("round {round} {method:<12} updated {pct} % of the rows first ({:.1} s)", t.elapsed().as_secs_f64());
                expect = c.checksums(0);
            }
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
            // Both nodes' [sst] lines for this method: the donor reads its
            // own at SST time (compression is the sender's choice), the
            // joiner's mode decides the mode.
            let extra = match method {
                "mariabackup-zstd" => "compressor=zstd -1\ndecompressor=zstd -d\n".to_string(),
                "sluice-none" => "compressor=none\nmode=backup\n".to_string(),
                "sluice-copy-full" => "mode=copy\ndelta=off\n".to_string(),
                "sluice-full" => "mode=backup\ndelta=off\n".to_string(),
                // The stream count fixed at the start's (as before streams
                // were chosen by measurement).
                "sluice-fixed" => "mode=backup\nstreams=2\n".to_string(),
                m if m.starts_with("sluice") => format!("mode={}\n", if copy { "copy" } else { "backup" }),
                _ => String::new(),
            };
            for (i, base) in base_cnf.iter().enumerate() {
                std::fs::write(&c.nodes[i].cnf, format!("{base}{extra}")).unwrap();
            }
            c.set_sst_method(
                1,
                match (old, method.starts_with("sluice")) {
                    (true, _) => "sluiceold",
                    (false, true) => "sluice",
                    (false, false) => method.trim_end_matches("-zstd"),
                },
            );
            let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
            let (cpu0, tx0) = (c.children_cpu(0), c.rig.as_ref().map_or(0, |r| r.tx_bytes(0)));
            c.start(1, false);
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let rss = {
                let stop = std::sync::Arc::clone(&stop);
                std::thread::spawn(move || peak_rss(&stop))
            };
            // FAULT may list one fault per round ("kill3,outage").
            let faults = std::env::var("FAULT").unwrap_or_default();
            let list: Vec<&str> = faults.split(',').collect();
            let fault = list[(round - 1) % list.len()].to_string();
            let linkdown = (fault == "linkdown").then(|| {
                let rig = c.rig.as_ref().expect("FAULT=linkdown needs LINK (two hosts)");
                let sst = rig.second.as_ref().expect("the rig's SST link");
                let (ns, dev, port) = (rig.ns[0].clone(), sst.dev[0].clone(), c.nodes[1].sst_port);
                let joiner_ns = c.nodes[1].ns.clone();
                std::thread::spawn(move || link_down(joiner_ns.as_deref(), &ns, &dev, port, Duration::from_secs(20)))
            });
            let killer = matches!(fault.as_str(), "kill3" | "outage").then(|| {
                let port = c.nodes[1].sst_port;
                let outage = fault == "outage";
                // `ss` where the joiner's sockets are.
                let ns = c.nodes[1].ns.clone();
                std::thread::spawn(move || {
                    if outage { outage_of(ns.as_deref(), port, Duration::from_secs(5)) } else { kill_connections(ns.as_deref(), port, 3) }
                })
            });
            let synced = c.wait_synced(1, Duration::from_secs(1200));
            stop.store(true, std::sync::atomic::Ordering::Release);
            let (donor_rss, joiner_rss) = rss.join().unwrap_or_default();
            let killed = killer.map(|k| k.join().unwrap_or(0));
            if let Some(l) = linkdown {
                let _ = l.join();
                println!("round {round} {method:<12} link down for 20 s, 1 s into the transfer");
            }
            let took = match synced {
                Ok(t) => t,
                Err(e) if killed.is_some() => {
                    println!("round {round} {method:<12} FAILED after {} killed sockets: {e}", killed.unwrap_or(0));
                    c.keep_logs(&work.with_extension(format!("logs-{round}-{method}")));
                    continue;
                }
                Err(e) => panic!("{method}: {e}"),
            };
            assert_eq!(c.checksums(1), expect, "{method}: tables differ");
            // The donor's SST process may end a moment after the joiner
            // is Synced; its CPU counts once mariadbd has reaped it, and
            // the donor is Synced again only then.
            let _ = c.wait_synced(0, Duration::from_secs(30));
            let (cpu_donor, cpu_joiner) = (c.children_cpu(0) - cpu0, c.children_cpu(1));
            let wire = c.rig.as_ref().map(|r| r.tx_bytes(0) - tx0);
            if let Some(k) = killed {
                let resent = c.error_log(0).lines().filter(|l| l.contains("resumed after")).count();
                println!("round {round} {method:<12} survived {k} killed sockets ({resent} stream resumptions on the donor)");
            }
            let mut line = format!(
                "round {round} {method:<12} SST {:6.1} s  (loadavg {})",
                took.as_secs_f64(),
                load.split_whitespace().next().unwrap_or("?")
            );
            if let Some(w) = wire {
                let _ = std::fmt::Write::write_fmt(
                    &mut line,
                    format_args!(
                        "  wire {} MiB  CPU s/GiB donor {:.1} joiner {:.1}",
                        w >> 20,
                        cpu_donor / table_gib,
                        cpu_joiner / table_gib
                    ),
                );
            }
            if method == "sluice" || method == "sluice-old" {
                line += &breakdown(&c.error_log(1));
            }
            if method.starts_with("sluice") {
                let _ = std::fmt::Write::write_fmt(
                    &mut line,
                    format_args!("  peak RSS donor {} MiB, joiner {} MiB", donor_rss >> 10, joiner_rss >> 10),
                );
            }
            let joiner_log = c.error_log(1);
            let this_sst = joiner_log.rfind("sluice SST started on joiner").map_or(&joiner_log[..], |i| &joiner_log[i..]);
            // (A stock method's SST leaves the last sluice SST's lines in the log.)
            if let Some(line_) =
                this_sst.lines().rev().find(|l| l.contains("taken from the old copy")).filter(|_| method.starts_with("sluice"))
            {
                if let Some(d) = line_.split("delta: ").nth(1) {
                    line.push_str("  delta: ");
                    line.push_str(d.trim());
                }
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

/// Kills every established connection on `port` (both ends) `times`
/// times, 1 s apart, starting 0.5 s after the first connection is
/// established; returns how many sockets it killed.
fn kill_connections(ns: Option<&str>, port: u16, times: usize) -> usize {
    let ss = |kill: bool| {
        let mut c = ss_in(ns);
        if kill {
            c.arg("-K");
        }
        let side = if kill { "dport" } else { "sport" };
        let out = c.args(["-t", "-n", "state", "established", &format!("( {side} = :{port} or sport = :{port} )")]).output().expect("ss");
        String::from_utf8_lossy(&out.stdout).lines().skip(1).filter(|l| !l.trim().is_empty()).count()
    };
    let t = Instant::now();
    while ss(false) == 0 && t.elapsed() < Duration::from_secs(600) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut killed = 0;
    for i in 0..times {
        std::thread::sleep(Duration::from_millis(if i == 0 { 500 } else { 1000 }));
        killed += ss(true);
    }
    killed
}

/// Waits for the first connection on `port` (seen in namespace `seen_in`),
/// then 1 s later sets `dev` in namespace `ns` down for `span`, then up.
fn link_down(seen_in: Option<&str>, ns: &str, dev: &str, port: u16, span: Duration) {
    let t = Instant::now();
    loop {
        let out = ss_in(seen_in).args(["-t", "-n", "state", "established", &format!("( sport = :{port} )")]).output().expect("ss");
        if String::from_utf8_lossy(&out.stdout).lines().skip(1).any(|l| !l.trim().is_empty()) || t.elapsed() > Duration::from_secs(600) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(1));
    let ip = |state: &str| std::process::Command::new("ip").args(["-n", ns, "link", "set", dev, state]).status().expect("ip");
    assert!(ip("down").success());
    std::thread::sleep(span);
    assert!(ip("up").success());
}

/// `ss`, run in namespace `ns` if given.
fn ss_in(ns: Option<&str>) -> std::process::Command {
    match ns {
        Some(ns) => {
            let mut c = std::process::Command::new("ip");
            c.args(["netns", "exec", ns, "ss"]);
            c
        }
        None => std::process::Command::new("ss"),
    }
}

/// Waits for the first connection on `port`, then 1 s later kills every
/// established connection on it every 20 ms for `span`; returns how many
/// it killed.
fn outage_of(ns: Option<&str>, port: u16, span: Duration) -> usize {
    let ss = |kill: bool| {
        let mut c = ss_in(ns);
        if kill {
            c.arg("-K");
        }
        let out = c.args(["-t", "-n", "state", "established", &format!("( dport = :{port} or sport = :{port} )")]).output().expect("ss");
        String::from_utf8_lossy(&out.stdout).lines().skip(1).filter(|l| !l.trim().is_empty()).count()
    };
    let t = Instant::now();
    while ss(false) == 0 && t.elapsed() < Duration::from_secs(600) {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(1));
    let (start, mut killed) = (Instant::now(), 0);
    while start.elapsed() < span {
        killed += ss(true);
        std::thread::sleep(Duration::from_millis(20));
    }
    killed
}

/// Peak RSS (KiB, VmHWM) of the donor's and the joiner's SST processes
/// (any process whose command line runs `wsrep_sst_sluice` or the old
/// build's `sluice sst`), sampled
/// every 50 ms until `stop`.
fn peak_rss(stop: &std::sync::atomic::AtomicBool) -> (u64, u64) {
    let (mut donor, mut joiner) = (0u64, 0u64);
    while !stop.load(std::sync::atomic::Ordering::Acquire) {
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else { continue };
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if !(cmd.contains("wsrep_sst_sluice") || cmd.contains("sluice sst --role")) {
                continue;
            }
            let hwm = std::fs::read_to_string(e.path().join("status"))
                .ok()
                .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()))
                .unwrap_or(0);
            if cmd.contains("--role donor") {
                donor = donor.max(hwm);
            } else if cmd.contains("--role joiner") {
                joiner = joiner.max(hwm);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (donor, joiner)
}

/// A filesystem image mounted (loop) on a directory until dropped.
struct Mounted {
    image: PathBuf,
    on: PathBuf,
}

impl Mounted {
    fn xfs(image: &std::path::Path, on: &std::path::Path) -> Self {
        let run = |cmd: &mut std::process::Command| {
            let out = cmd.output().expect("running a filesystem tool");
            assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let _ = std::fs::remove_file(image);
        std::fs::File::create(image).and_then(|f| f.set_len(32 << 30)).expect("creating the XFS image");
        run(std::process::Command::new("mkfs.xfs").args(["-q", "-f", "-m", "reflink=1"]).arg(image));
        run(std::process::Command::new("mount").args(["-o", "loop"]).arg(image).arg(on));
        Mounted { image: image.to_path_buf(), on: on.to_path_buf() }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.on).status();
        let _ = std::fs::remove_file(&self.image);
        if let Some(root) = self.on.parent().and_then(std::path::Path::parent) {
            let _ = std::fs::remove_dir_all(root);
        }
    }
}
