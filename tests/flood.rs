//! Pre-authentication denial of service (SECURITY.md F1, F11, F16) against
//! the real binary: 500 hostile connections from several 127.0.0.0/8
//! source addresses — idle, trickling one byte a second, a partial HELLO, a
//! declared 4 MiB MANIFEST before any HELLO, a stalled TLS ClientHello,
//! wrong tokens — are held open for the whole session. The real session
//! still completes, its wall time grows by less than 2 s and the receiver's
//! peak RSS by less than 32 MiB, and the refusals are logged at a bounded
//! rate.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sluice_engine::wire::{Frame, FrameHeader, Hello, Kind, MAGIC, PROTOCOL_VERSION};

const HOSTILE: usize = 500;
const SOURCES: [[u8; 4]; 5] = [[127, 0, 0, 1], [127, 0, 0, 2], [127, 0, 0, 3], [127, 0, 0, 4], [127, 0, 0, 5]];

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
}

/// Peak resident set (VmHWM) of a running process, in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
}

fn connect_from(src: [u8; 4], to: SocketAddr) -> Option<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
    s.bind(&SocketAddr::from((src, 0)).into()).ok()?;
    // Patient: under load the listen backlog fills between accept rounds
    // and the kernel retries the SYN after a second.
    s.connect_timeout(&to.into(), Duration::from_secs(10)).ok()?;
    Some(s.into())
}

/// The first bytes each kind of attacker sends (then it stalls or trickles).
fn opening(kind: usize) -> Vec<u8> {
    match kind % 6 {
        // Idle, and the trickler (which starts from nothing).
        0 | 1 => Vec::new(),
        // A partial HELLO: magic, a HELLO header, 10 of its 48 bytes.
        2 => [&MAGIC[..], &FrameHeader { kind: Kind::Hello, flags: 0, len: 48 }.encode(), &[0u8; 10]].concat(),
        // A MANIFEST of 4 MiB declared before any HELLO (F11).
        3 => [&MAGIC[..], &FrameHeader { kind: Kind::Manifest, flags: 0, len: 4 << 20 }.encode(), &[0u8; 100]].concat(),
        // A stalled TLS ClientHello record header.
        4 => vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01],
        // A complete HELLO with a wrong token.
        _ => {
            let mut b = MAGIC.to_vec();
            Frame::Hello(Hello {
                min_version: PROTOCOL_VERSION,
                max_version: PROTOCOL_VERSION,
                stream_index: 0,
                stream_count: 1,
                capabilities: 0,
                token: [0xEE; 16],
                session_salt: [1; 16],
            })
            .encode(&mut b);
            b
        }
    }
}

/// Opens `HOSTILE` connections and holds them (trickling a byte a second on
/// a sixth of them) until `stop`.
fn attack(to: SocketAddr, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for i in 0..HOSTILE {
            if let Some(mut s) = connect_from(SOURCES[i % SOURCES.len()], to) {
                let _ = s.write_all(&opening(i));
                held.push((i, s));
            }
        }
        let opened = held.len();
        while !stop.load(Ordering::Acquire) {
            for (i, s) in &mut held {
                if *i % 6 == 1 {
                    let _ = s.write_all(&MAGIC[..1]);
                }
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        opened
    })
}

/// One real session through `sluice recv`/`sluice send` (with `tls` as
/// extra receiver and sender flags); returns (wall time of the session,
/// peak receiver RSS in KiB, receiver log), with `flood` attackers held
/// open from before the sender starts until the end.
fn session(tmp: &Path, name: &str, src: &Path, tls: &[String], flood: bool) -> (Duration, u64, String) {
    let dest = tmp.join(format!("dest-{name}"));
    let log = tmp.join(format!("recv-{name}.log"));
    let mut recv = bin()
        .args(["recv", "--listen", "127.0.0.1:0", "--json", "--dir"])
        .arg(&dest)
        .args(tls)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(recv.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let addr: SocketAddr = v["addr"].as_str().unwrap().parse().unwrap();
    let token = v["token"].as_str().unwrap().to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let attacker = flood.then(|| attack(addr, Arc::clone(&stop)));
    if flood {
        // Let the flood fill every admission slot before the sender comes.
        std::thread::sleep(Duration::from_secs(2));
    }
    let pid = recv.id();
    let started = Instant::now();
    let mut send = bin()
        .args(["send", "--streams", "4", "--to", &addr.to_string()])
        .args(tls)
        .env("SLUICE_TOKEN", &token)
        .arg(src)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut peak = 0;
    let status = loop {
        if let Some(k) = peak_rss_kib(pid) {
            peak = peak.max(k);
        }
        if let Some(s) = send.try_wait().unwrap() {
            break s;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "the sender hung under the flood");
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = started.elapsed();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut send.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{name}: the real session failed under the flood: {err}");
    let rstatus = recv.wait().unwrap();
    stop.store(true, Ordering::Release);
    if let Some(a) = attacker {
        let opened = a.join().unwrap();
        assert!(opened >= HOSTILE * 9 / 10, "only {opened} hostile connections could be opened");
    }
    assert!(rstatus.success(), "{name}: receiver failed");
    common::assert_copy(src, &dest);
    (elapsed, peak, std::fs::read_to_string(&log).unwrap())
}

fn check(tmp: &Path, name: &str, tls: &[String]) {
    let src = common::fixture(&tmp.join(format!("src-{name}")));
    let (base_t, base_rss, _) = session(tmp, &format!("{name}-baseline"), &src, tls, false);
    let (t, rss, log) = session(tmp, &format!("{name}-flood"), &src, tls, true);
    eprintln!("{name}: baseline {base_t:?} / {base_rss} KiB, under the flood {t:?} / {rss} KiB");
    assert!(t < base_t + Duration::from_secs(2), "{name}: the flood slowed the session from {base_t:?} to {t:?}");
    assert!(rss < base_rss + 32 * 1024, "{name}: the flood grew the receiver's peak RSS from {base_rss} to {rss} KiB");
    let lines = log.matches("refused a connection").count();
    assert!(lines >= 1, "{name}: refusals are logged: {log}");
    assert!(lines <= 40, "{name}: {lines} refusal lines for {HOSTILE} connections: not rate-limited");
}

#[test]
fn a_flood_of_strangers_cannot_stop_or_slow_a_plain_session() {
    let tmp = tempfile::tempdir().unwrap();
    check(tmp.path(), "plain", &[]);
}

#[test]
fn a_flood_of_strangers_cannot_stop_or_slow_a_tls_session() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap().self_signed(&key).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    common::write_private(&dir.join("key.pem"), key.serialize_pem());
    let d = dir.display();
    let tls: Vec<String> =
        ["--tls-mode", "required", "--tls-cert", &format!("{d}/cert.pem"), "--tls-key", &format!("{d}/key.pem")].map(String::from).to_vec();
    check(dir, "tls", &tls);
}

/// The SST joiner (the real binary under its SST name) in IST (bypass)
/// mode, with or without the flood; returns (donor wall time, joiner peak
/// RSS in KiB, joiner stderr).
fn sst_session(dir: &Path, flood: bool) -> (Duration, u64, String) {
    const UUID: &str = "5ddc2d84-e57f-11f1-bdb1-3269f43d81db";
    let tag = if flood { "flood" } else { "baseline" };
    let (jdata, ddata) = (dir.join(format!("joiner-{tag}")), dir.join(format!("donor-{tag}")));
    std::fs::create_dir_all(&jdata).unwrap();
    std::fs::create_dir_all(&ddata).unwrap();
    let script = dir.join("wsrep_sst_sluice");
    if !script.exists() {
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_sluice"), &script).unwrap();
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (mut joiner, mut out, addr) = common::start_sst_joiner(&script, port, &jdata, "--x");
    let stop = Arc::new(AtomicBool::new(false));
    let attacker = flood.then(|| attack(SocketAddr::from(([127, 0, 0, 1], port)), Arc::clone(&stop)));
    if flood {
        std::thread::sleep(Duration::from_secs(2));
    }
    let started = Instant::now();
    let mut donor = Command::new(&script)
        .args(["--role", "donor", "--address", &addr, "--local-port", "3306", "--socket", "/nonexistent.sock", "--progress", "0"])
        .arg("--datadir")
        .arg(&ddata)
        .args(["--gtid", &format!("{UUID}:16"), "--gtid-domain-id", "0", "--bypass", "--mysqld-args", "--x"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut peak = 0;
    let status = loop {
        if let Some(k) = peak_rss_kib(joiner.id()) {
            peak = peak.max(k);
        }
        if let Some(s) = donor.try_wait().unwrap() {
            break s;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "the donor hung under the flood");
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = started.elapsed();
    let mut derr = String::new();
    std::io::Read::read_to_string(&mut donor.stderr.take().unwrap(), &mut derr).unwrap();
    assert!(status.success(), "{tag}: the donor failed: {derr}");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let jstatus = joiner.wait().unwrap();
    stop.store(true, Ordering::Release);
    if let Some(a) = attacker {
        a.join().unwrap();
    }
    let mut jerr = String::new();
    std::io::Read::read_to_string(&mut joiner.stderr.take().unwrap(), &mut jerr).unwrap();
    assert!(jstatus.success(), "{tag}: the joiner failed: {jerr}");
    assert_eq!(rest, format!("{UUID}:16 0\n"), "{tag}: the joiner's final line");
    (took, peak, jerr)
}

#[test]
fn a_flood_of_strangers_cannot_stop_an_sst_joiner() {
    let tmp = tempfile::tempdir().unwrap();
    let (base_t, base_rss, _) = sst_session(tmp.path(), false);
    let (t, rss, log) = sst_session(tmp.path(), true);
    eprintln!("sst joiner: baseline {base_t:?} / {base_rss} KiB, under the flood {t:?} / {rss} KiB");
    assert!(t < base_t + Duration::from_secs(2), "the flood slowed the SST from {base_t:?} to {t:?}");
    assert!(rss < base_rss + 32 * 1024, "the flood grew the joiner's peak RSS from {base_rss} to {rss} KiB");
    let lines = log.matches("refused a connection").count();
    assert!((1..=40).contains(&lines), "{lines} refusal lines in mysqld's error log for {HOSTILE} connections:\n{log}");
    assert!(log.lines().all(|l| l.starts_with("WSREP_SST: [")), "a peer forged a log line:\n{log}");
}
