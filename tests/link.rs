//! Over a real, rate-limited link between two hosts: two network namespaces
//! of this test's own joined by a veth pair with private addresses, both
//! egresses shaped by `tc … tbf` to 200 Mbit/s. `sluice send` with no
//! `--compress` (adaptive by default) compresses what shrinks there, while
//! toward a receiver on this host it does not; the copy is byte-identical
//! either way. Needs root and iproute2 (`.ci/run` installs it).

mod cluster;
mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The tests of this file run one at a time: adaptive compression measures
/// the CPU, and a concurrent transfer on the same two cores would skew it.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

use cluster::netns::{self, Rig};

/// The release build `.ci/run` names in `SLUICE_RELEASE_BIN`, if any.
fn named_release() -> Option<String> {
    std::env::var("SLUICE_RELEASE_BIN").ok().filter(|b| Path::new(b).is_file())
}

/// The binary the transfers run: the release build where one is named (its
/// codecs run at the speed users see; a debug build's lz4 is several times
/// slower, so what adaptive compression takes on depends on the CPU the
/// receiver leaves over), else this test's debug build.
fn in_ns(rig: &Rig, side: usize) -> Command {
    match named_release() {
        Some(bin) => rig.exec(side, &bin),
        None => rig.exec(side, env!("CARGO_BIN_EXE_sluice")),
    }
}

/// One transfer of `src` from namespace `a` to a receiver in `b`; returns
/// the sender's compression ratio (its last log line) and its log.
fn transfer(rig: &Rig, src: &Path, dest: &Path, extra: &[&str]) -> (f64, String) {
    let token = dest.with_extension("token");
    let mut recv = in_ns(rig, 1)
        .args(["recv", "--listen", "10.78.0.2:4444", "--token-file"])
        .arg(&token)
        .arg("--dir")
        .arg(dest)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while std::fs::metadata(&token).map_or(true, |m| m.len() == 0) {
        assert!(t.elapsed() < Duration::from_secs(10), "the receiver did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = in_ns(rig, 0)
        .args(["send", "--to", "10.78.0.2:4444", "--streams", "2"])
        .args(extra)
        .arg(src)
        .env("SLUICE_TOKEN", std::fs::read_to_string(&token).unwrap().trim())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "send failed: {log}");
    assert!(recv.wait().unwrap().success());
    let line = log.lines().rfind(|l| l.contains("compression ratio")).unwrap_or_else(|| panic!("no summary: {log}"));
    (line.rsplit(' ').next().unwrap().parse().unwrap(), log)
}

/// A generated corpus (half repetitive text, half random pages) of
/// `big_mib` MiB in big files and `small` small files, in `dir`/src.
fn corpus(dir: &Path, big_mib: &str, small: &str) -> std::path::PathBuf {
    let src = dir.join("src");
    let generated = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["-q", "gen-sample", "--corpus", "--big-mib", big_mib, "--small", small])
        .arg(&src)
        .status()
        .unwrap();
    assert!(generated.success());
    src
}

/// Two namespaces joined by a veth pair (10.78.0.1 ↔ 10.78.0.2), both
/// egresses shaped to `rate` (unshaped if `None`); `None` (reported)
/// without root or iproute2.
fn rig(tag: &str, rate: Option<&str>) -> Option<Rig> {
    if let Some(why) = netns::unavailable() {
        common::skip(&why);
        return None;
    }
    let rig = Rig::new(tag, 78);
    if let Some(rate) = rate {
        rig.shape(rate);
    }
    Some(rig)
}

#[test]
fn adaptive_compression_pays_on_a_slow_link_and_the_copy_is_identical() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(rig) = rig("t", Some("200mbit")) else { return };

    // Half repetitive text, half random pages: what a datadir looks like.
    let tmp = tempfile::tempdir().unwrap();
    let src = corpus(tmp.path(), "96", "200");

    let (adaptive, log) = transfer(&rig, &src, &tmp.path().join("adaptive"), &[]);
    let (off, _) = transfer(&rig, &src, &tmp.path().join("off"), &["--compress", "none"]);
    for d in ["adaptive", "off"] {
        sluice_engine::diff::compare(&src, &tmp.path().join(d)).unwrap_or_else(|e| panic!("{d}: the copy differs: {e}"));
    }
    // A debug build's lz4 is several times slower than a release build's,
    // so how much the adaptive codec takes on depends on the CPU left over:
    // 1.13–1.43 seen on the reference machine; the release build (what CI
    // runs here) 1.81 on the perf corpus (perf/RESULTS.md). Either clearly
    // compresses; `--compress none` stays at 1.00.
    eprintln!("adaptive ratio {adaptive}");
    let floor = if named_release().is_some() { 1.5 } else { 1.1 };
    assert!(adaptive > floor, "no --compress over a 200 Mbit/s link: compression ratio {adaptive} (want > {floor})");
    assert!((off - 1.0).abs() < 0.01, "--compress none: ratio {off}");
    // The link, not the CPU, is the limit: the governor keeps a codec.
    assert!(!log.contains("none instead of"), "stopped compressing on a slow link:\n{log}");

    // Toward a receiver on this host the default does not compress.
    let dest = tmp.path().join("local");
    let out = Command::new(env!("CARGO_BIN_EXE_sluice")).arg("copy").arg(&src).arg(&dest).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && log.contains("adaptive compression off"), "{log}");
    assert!(log.lines().rfind(|l| l.contains("compression ratio")).is_some_and(|l| l.ends_with("1.00")), "{log}");
}

/// The release build, which `.ci/run` builds before the tests and names in
/// `SLUICE_RELEASE_BIN`: whether compressing pays depends on the codec's
/// speed, and a debug build's lz4 is too slow to be tried at all.
fn release_bin() -> Option<String> {
    let bin = named_release();
    if bin.is_none() {
        common::skip("SLUICE_RELEASE_BIN (a release build of sluice: cargo build --release) is not set");
    }
    bin
}

/// Issue 15: a fast link to a receiver short of CPU — here an unshaped
/// veth, both ends pinned to one core — drains the socket slowly, which
/// looks like a slow link to the per-chunk policy (measured, release
/// build, 2 GiB: 2.5 s uncompressed, 3.2 s compressing). The session's
/// governor measures the data delivered with and without compression and
/// stops compressing; the copy is identical. (`--adapt-after 0.5`: the
/// first measurement after 0.5 s instead of 8 and the next ones as soon,
/// so a short transfer gives the challenger several tries: a win needs
/// two epochs in a row, and one try was seen to lose to noise in CI.)
#[test]
fn adaptive_compression_stops_when_the_cpu_is_the_bottleneck() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(bin) = release_bin() else { return };
    let Some(rig) = rig("u", None) else { return };
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let generated =
        Command::new(&bin).args(["-q", "gen-sample", "--corpus", "--big-mib", "4096", "--small", "0"]).arg(&src).status().unwrap();
    assert!(generated.success());
    let pinned = |side: usize| {
        let mut c = rig.exec(side, "taskset");
        c.args(["-c", "0", &bin]);
        c
    };
    let dest = tmp.path().join("dest");
    let token = tmp.path().join("token");
    let mut recv =
        pinned(1).args(["recv", "--listen", "10.78.0.2:4444", "--token-file"]).arg(&token).arg("--dir").arg(&dest).spawn().unwrap();
    let t = Instant::now();
    while std::fs::metadata(&token).map_or(true, |m| m.len() == 0) {
        assert!(t.elapsed() < Duration::from_secs(10), "the receiver did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = pinned(0)
        .args(["send", "--to", "10.78.0.2:4444", "--streams", "2", "--adapt-after", "0.5"])
        .arg(&src)
        .env("SLUICE_TOKEN", std::fs::read_to_string(&token).unwrap().trim())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success() && recv.wait().unwrap().success(), "{log}");
    sluice_engine::diff::compare(&src, &dest).unwrap_or_else(|e| panic!("the copy differs: {e}"));
    eprintln!("{:.1} s", t.elapsed().as_secs_f64());
    assert!(log.contains("of the transfer (incumbent at the end: "), "{log}");
    // Measured, lz4 delivers less than a codec that compresses less: the
    // governor leaves it, for none or for zstd:1, whose per-chunk policy
    // then sends most chunks raw (both seen; a debug build never tries).
    assert!(
        log.lines()
            .any(|l| l.contains("adaptive compression: none instead of lz4") || l.contains("adaptive compression: zstd:1 instead of lz4")),
        "the governor never left lz4 toward a CPU-bound receiver:\n{log}"
    );
}

/// The sender's flags of [`transfer_through`] by default: 8 MiB/s, two
/// streams, no compression.
const STEADY: [&str; 6] = ["--streams", "2", "--compress", "none", "--rate-limit", "8M"];

/// A transfer (`how`: the sender's flags, e.g. [`STEADY`]; idle timeouts
/// of 60 s) of a generated corpus of `big_mib` MiB and `small` files across
/// the rig, with `fault` run `after` in; both ends must succeed and the
/// copy be identical. Returns the sender's log and how long after `fault`
/// returned the transfer ended.
fn transfer_through(rig: &Rig, big_mib: &str, small: &str, how: &[&str], after: Duration, fault: impl FnOnce()) -> (String, Duration) {
    let tmp = tempfile::tempdir().unwrap();
    let src = corpus(tmp.path(), big_mib, small);
    let dest = tmp.path().join("dest");
    let token = dest.with_extension("token");
    let recv_log = tmp.path().join("recv.log");
    let mut recv = in_ns(rig, 1)
        .args(["recv", "--listen", "10.78.0.2:4444", "--idle-timeout", "60", "--token-file"])
        .arg(&token)
        .arg("--dir")
        .arg(&dest)
        .stderr(std::fs::File::create(&recv_log).unwrap())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while std::fs::metadata(&token).map_or(true, |m| m.len() == 0) {
        assert!(t.elapsed() < Duration::from_secs(10), "the receiver did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let send = in_ns(rig, 0)
        .args(["send", "--to", "10.78.0.2:4444", "--idle-timeout", "60"])
        .args(how)
        .arg(&src)
        .env("SLUICE_TOKEN", std::fs::read_to_string(&token).unwrap().trim())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(after);
    fault();
    let after = Instant::now();
    let out = send.wait_with_output().unwrap();
    let took = after.elapsed();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    let status = recv.wait().unwrap();
    assert!(out.status.success(), "send failed after the fault:\n{log}");
    assert!(status.success(), "recv failed:\n{}", std::fs::read_to_string(&recv_log).unwrap());
    sluice_engine::diff::compare(&src, &dest).unwrap_or_else(|e| panic!("the copy differs: {e}"));
    (log, took)
}

/// Issue 15: the path becomes a black hole for 8 s (the receiver's address
/// is taken away: the sender's packets leave and vanish, as when a path
/// fails in the middle; TCP's retransmission timeout doubles meanwhile, up
/// to 6.4 s here) with the connections left alone: the sender sees them
/// stall (the kernel retransmitting the same data again and again), gives
/// them up and reconnects as soon as the path is back, instead of waiting
/// for TCP's next retransmission; the copy is identical.
#[test]
fn a_stalled_connection_is_given_up_and_the_stream_reconnects_when_the_link_returns() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(rig) = rig("s", Some("400mbit")) else { return };
    let addr = format!("{}/24", rig.addr[1]);
    let (log, took) = transfer_through(&rig, "48", "50", &STEADY, Duration::from_secs(2), || {
        netns::ip(&["-n", &rig.ns[1], "addr", "del", &addr, "dev", &rig.dev[1]]);
        std::thread::sleep(Duration::from_secs(8));
        netns::ip(&["-n", &rig.ns[1], "addr", "add", &addr, "dev", &rig.dev[1]]);
    });
    assert!(log.contains("the connection stalled"), "the sender never saw its connections stall:\n{log}");
    assert!(log.contains("resumed after"), "the sender reconnected and says what it sent again:\n{log}");
    eprintln!("the transfer ended {took:.1?} after the path came back");
}

/// Issue 12: the sender's side of the link goes down for 20 s in the
/// middle of a transfer and every sender socket is killed (`ss -K`) as it
/// goes: the sender keeps trying to reconnect through the dead link, gets
/// through once the link is back, and the session ends byte-identical.
#[test]
fn a_link_down_for_20_s_with_its_connections_killed_is_survived() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(rig) = rig("r", Some("400mbit")) else { return };
    let mut killed = 0;
    let (log, _) = transfer_through(&rig, "64", "100", &STEADY, Duration::from_secs(2), || {
        netns::ip(&["-n", &rig.ns[0], "link", "set", &rig.dev[0], "down"]);
        let out = rig.exec(0, "ss").args(["-K", "-t", "-n", "state", "established", "dst", "10.78.0.2:4444"]).output().unwrap();
        killed = String::from_utf8_lossy(&out.stdout).lines().skip(1).filter(|l| !l.trim().is_empty()).count();
        std::thread::sleep(Duration::from_secs(20));
        netns::ip(&["-n", &rig.ns[0], "link", "set", &rig.dev[0], "up"]);
    });
    assert!(killed >= 2, "ss -K killed {killed} sockets");
    assert!(log.contains("resumed after"), "the sender reconnected and says what it sent again:\n{log}");
}

/// The busy-stream counts a sender's log went through ("streams: 2 → 3").
fn stream_counts(log: &str) -> Vec<usize> {
    log.lines().filter_map(|l| l.split_once("streams: ")?.1.split_once(" → ")?.1.split_once(' ')?.0.parse().ok()).collect()
}

/// Issue 15: streams chosen by measurement. Across a path that limits each
/// connection (every sender socket paced to 4 MiB/s, as a long round trip
/// or a per-flow policer limits a flow) the sender adds streams while the
/// session runs, because each one added raises what the session delivers;
/// across a link that two streams already fill (tbf 200 Mbit/s) the
/// streams it tries buy nothing and are retired. Both copies identical.
#[test]
fn streams_are_added_where_each_connection_is_limited_and_retired_where_the_link_is_full() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(rig) = rig("g", None) else { return };
    let tmp = tempfile::tempdir().unwrap();
    let src = corpus(tmp.path(), "96", "20");

    let adaptive = ["--max-streams", "8", "--compress", "none"];
    let (_, log) = transfer(&rig, &src, &tmp.path().join("paced"), &[&adaptive[..], &["--sockopt", "pacing=4M"]].concat());
    sluice_engine::diff::compare(&src, &tmp.path().join("paced")).unwrap_or_else(|e| panic!("the copy differs: {e}"));
    assert!(log.contains("streams: 2 busy at the start, up to 8"), "{log}");
    let counts = stream_counts(&log);
    eprintln!("paced: the busy streams went through {counts:?}");
    let peak = counts.iter().copied().max().unwrap_or(2);
    assert!(peak >= 4, "paced connections: the sender should have added streams, went through {counts:?}:\n{log}");
    assert!(log.contains(&format!("at most {peak} streams carried data at once")), "{log}");

    rig.shape("200mbit");
    let (_, log) = transfer(&rig, &src, &tmp.path().join("full"), &adaptive);
    sluice_engine::diff::compare(&src, &tmp.path().join("full")).unwrap_or_else(|e| panic!("the copy differs: {e}"));
    let counts = stream_counts(&log);
    eprintln!("full link: the busy streams went through {counts:?}");
    assert!(counts.contains(&3), "the sender never tried a third stream: {counts:?}\n{log}");
    assert!(log.contains("no gain"), "a third stream on a full link should be retired for no gain:\n{log}");
    assert!(counts.iter().all(|&n| n <= 3), "a full link: no stream beyond the one tried: {counts:?}\n{log}");
}

/// Issue 15 with issue 12: every connection of a session that has added
/// streams and parks others (paced connections, as above) is killed
/// (`ss -K`) in the middle: busy and parked streams alike reconnect and go
/// on, and the copy is identical.
#[test]
fn parked_and_busy_streams_alike_survive_their_connections_killed() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(rig) = rig("p", None) else { return };
    let mut killed = 0;
    let how = ["--streams", "2", "--max-streams", "8", "--compress", "none", "--sockopt", "pacing=4M"];
    let (log, _) = transfer_through(&rig, "96", "20", &how, Duration::from_secs(5), || {
        let out = rig.exec(0, "ss").args(["-K", "-t", "-n", "state", "established", "dst", "10.78.0.2:4444"]).output().unwrap();
        killed = String::from_utf8_lossy(&out.stdout).lines().skip(1).filter(|l| !l.trim().is_empty()).count();
    });
    let counts = stream_counts(&log);
    eprintln!("killed {killed} connections; the busy streams went through {counts:?}");
    assert_eq!(killed, 8, "every connection, parked or not, was established when killed");
    assert!(counts.iter().any(|&n| n >= 3), "streams were added before the kill: {counts:?}\n{log}");
    let resumed = log.lines().filter(|l| l.contains("resumed after")).count();
    assert_eq!(resumed, 8, "every stream reconnected once, the parked ones too:\n{log}");
}
