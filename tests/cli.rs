//! The `sluice` binary end to end: a real `recv` process, real `send`
//! processes and raw hostile connections on loopback.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice_engine::wire::{Frame, Hello, MAGIC};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
}

use common::start_recv;

fn wait(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let end = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn send(addr: &str, token: &str, src: &Path) -> std::process::Output {
    bin().args(["send", "--streams", "3", "--to", addr]).env("SLUICE_TOKEN", token).arg(src).output().unwrap()
}

/// Reads until EOF (or a reset) and returns what arrived.
fn drain(mut s: TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut buf = Vec::new();
    match s.read_to_end(&mut buf) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the receiver neither answered nor closed: {e}"),
    }
    buf
}

#[test]
fn impostors_are_turned_away_and_the_real_session_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let src = common::fixture(tmp.path());
    let dest = tmp.path().join("dest");
    let mut r = start_recv(&dest, &tmp.path().join("recv.log"), &[]);

    // A slow-loris connection that never says anything stays open throughout.
    let idle = TcpStream::connect(&r.addr).unwrap();

    let mut http = TcpStream::connect(&r.addr).unwrap();
    http.write_all(b"GET / HTTP/1.1\r\nHost: sluice\r\n\r\n").unwrap();
    assert!(drain(http).is_empty(), "an HTTP client gets no answer");

    let mut noise = TcpStream::connect(&r.addr).unwrap();
    noise.write_all(&(0..200u8).map(|i| i.wrapping_mul(151)).collect::<Vec<_>>()).unwrap();
    assert!(drain(noise).is_empty());

    let mut wrong = TcpStream::connect(&r.addr).unwrap();
    let mut hello = MAGIC.to_vec();
    Frame::Hello(Hello {
        min_version: 1,
        max_version: 1,
        stream_index: 0,
        stream_count: 1,
        capabilities: 0,
        token: [0xAB; 16],
        session_salt: [1; 16],
    })
    .encode(&mut hello);
    wrong.write_all(&hello).unwrap();
    let reply = drain(wrong);
    assert!(String::from_utf8_lossy(&reply).contains("invalid session token"), "reply {reply:?}");

    let bad = send(&r.addr, &"0".repeat(32), &src);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("invalid session token"), "{err}");
    assert!(!err.contains(&r.token), "send must never print the token");

    let good = send(&r.addr, &r.token, &src);
    let out = String::from_utf8_lossy(&good.stderr);
    assert!(good.status.success(), "{out}");
    assert!(!out.contains(&r.token), "send must never print the token");
    assert!(wait(&mut r.child, Duration::from_secs(30)).success());
    drop(idle);
    common::assert_copy(&src, &dest);
    let log = std::fs::read_to_string(&r.log).unwrap();
    assert!(log.matches("refused a connection").count() >= 4, "{log}");
}

#[test]
fn a_killed_sender_fails_the_receiver_and_leaves_the_marker() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let chunk: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7 + i / 4096) as u8).collect();
    let mut f = std::fs::File::create(src.join("large.ibd")).unwrap();
    for _ in 0..768 {
        f.write_all(&chunk).unwrap();
    }
    drop(f);
    let dest = tmp.path().join("dest");
    // A receiver cannot tell a dead sender from a cut connection (both end
    // its streams the same way): it waits the resume window for the sender
    // to reconnect, then fails naming that wait.
    let mut r = start_recv(&dest, &tmp.path().join("recv.log"), &["--io", "copy", "--resume-window", "3"]);
    let mut s = bin()
        // Rate-limited so it is surely still sending when it is killed.
        .args(["send", "--streams", "1", "--io", "copy", "--block-size", "64K", "--rate-limit", "20M", "--to", &r.addr])
        .env("SLUICE_TOKEN", &r.token)
        .arg(&src)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let target = dest.join("large.ibd");
    let end = Instant::now() + Duration::from_secs(20);
    while !target.exists() {
        assert!(Instant::now() < end, "the transfer never started");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(s.try_wait().unwrap().is_none(), "the sender finished before it could be killed");
    s.kill().unwrap();
    s.wait().unwrap();
    let status = wait(&mut r.child, Duration::from_secs(30));
    assert!(!status.success(), "the receiver reported success for a killed sender");
    let log = std::fs::read_to_string(&r.log).unwrap();
    assert!(log.contains("sluice: error: receiving into") && log.contains("did not reconnect within the resume window of 3s"), "{log}");
    assert!(!log.contains("received and verified"), "{log}");
    assert!(dest.join(".sluice-incomplete").exists(), "a failed destination must say it is incomplete");
}

#[test]
fn errors_name_the_culprit() {
    let tmp = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out =
        bin().args(["send", "--connect-timeout", "0", "--to", "127.0.0.1:1", "--token", &"a".repeat(32)]).arg(tmp.path()).output().unwrap();
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(10), "--connect-timeout 0 was not honoured");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("127.0.0.1:1") && err.contains("cannot connect"), "{err}");

    let out = bin().args(["send", "--to", "127.0.0.1:1", "--token", "short"]).arg(tmp.path()).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("32 hex characters"));

    let out = bin().args(["send", "--io", "turbo", "--to", "x:1", "--token", "t", "p"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("turbo"));

    let out = bin().args(["copy", "/nonexistent/sluice-src", tmp.path().join("d").to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("/nonexistent/sluice-src"), "{err}");

    let blocker = tmp.path().join("file-not-dir");
    std::fs::write(&blocker, b"x").unwrap();
    let src = common::fixture(tmp.path());
    let out = bin().arg("copy").arg(&src).arg(&blocker).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("file-not-dir"), "{err}");
}

#[test]
fn copy_and_demo_commands_work() {
    let tmp = tempfile::tempdir().unwrap();
    let src = common::fixture(tmp.path());
    let dest = tmp.path().join("dest");
    let out = bin().args(["copy", "--streams", "4"]).arg(&src).arg(&dest).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    common::assert_copy(&src, &dest);

    let out = bin().args(["demo", "--size", "16", "--dir"]).arg(tmp.path().join("demo")).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("entries identical"), "{err}");
}

/// Issue 14: `--version` names the protocol and the features compiled in,
/// under both names; `wsrep_sst_sluice --help` answers an operator without
/// waiting for mysqld; the man pages and completions are generated from
/// the clap definitions, with every [sst] key on the SST page.
#[test]
fn version_help_man_pages_and_completions() {
    let v = bin().arg("--version").output().unwrap();
    let text = String::from_utf8_lossy(&v.stdout).into_owned();
    let protocol = format!("protocol {}-{}", sluice_engine::wire::MIN_PROTOCOL_VERSION, sluice_engine::wire::PROTOCOL_VERSION);
    assert!(v.status.success() && text.starts_with("sluice ") && text.contains(&protocol), "{text}");
    assert_eq!(text.contains("io_uring") && !text.contains("no io_uring"), cfg!(feature = "uring"), "{text}");
    let dir = tempfile::tempdir().unwrap();
    let sst = dir.path().join("wsrep_sst_sluice");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_sluice"), &sst).unwrap();
    let h = Command::new(&sst).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&h.stdout);
    assert!(h.status.success() && help.contains("--role joiner|donor") && help.contains(&protocol), "{help}");
    let v = Command::new(&sst).arg("--version").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&v.stdout), text);
    let out = dir.path().join("docs");
    assert!(bin().args(["gen-docs", "--out"]).arg(&out).status().unwrap().success());
    for page in ["sluice", "sluice-send", "sluice-recv", "sluice-copy", "sluice-check", "sluice-restore", "wsrep_sst_sluice"] {
        let roff = std::fs::read_to_string(out.join(format!("man/{page}.1"))).unwrap();
        assert!(roff.starts_with(".ie") || roff.contains(".TH"), "{page}: {roff:.200}");
    }
    let sst_page = std::fs::read_to_string(out.join("man/wsrep_sst_sluice.1")).unwrap();
    for key in ["compressor", "delta", "sst\\-idle\\-timeout", "low\\-space", "prepare\\-binary", "cpat", "rlimit", "encrypt=1"] {
        assert!(sst_page.contains(key), "{key} missing from wsrep_sst_sluice(1)");
    }
    for (file, marker) in [("sluice.bash", "complete -F"), ("_sluice", "#compdef sluice"), ("sluice.fish", "complete -c sluice")] {
        let c = std::fs::read_to_string(out.join("completions").join(file)).unwrap();
        assert!(c.contains(marker) && c.contains("check"), "{file}");
    }
}
