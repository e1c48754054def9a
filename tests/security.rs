//! Regression tests for the security review of e693a31 (SECURITY.md), each
//! against the real binary or the real engine over real sockets: F4
//! (planted symlinks at the marker and the root), F5 (descriptors per
//! streamed session), F9 (a file swapped after the scan), F10 (a silent
//! receiver after END), F13 (signals), F14 (where the token is printed).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sluice_engine::send::{Feeder, send_streamed};
use sluice_engine::wire::{FRAME_HEADER_LEN, Frame, FrameHeader, Hello, Kind, MAGIC, caps};
use sluice_engine::{ReceiveConfig, Receiver, SendConfig};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
}

/// `sluice recv --json` into `dest`; returns the child, address and token.
fn recv(dest: &Path, log: &Path) -> (std::process::Child, String, String) {
    let r = common::start_recv(dest, log, &[]);
    (r.child, r.addr, r.token)
}

#[test]
fn f4_a_planted_marker_symlink_is_replaced_never_followed_and_a_symlinked_root_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let src = common::fixture(&tmp.path().join("src"));
    let victim = tmp.path().join("victim.txt");
    std::fs::write(&victim, b"precious").unwrap();
    let dest = tmp.path().join("dest");
    std::fs::create_dir(&dest).unwrap();
    std::os::unix::fs::symlink(&victim, dest.join(".sluice-incomplete")).unwrap();
    let (mut r, addr, token) = recv(&dest, &tmp.path().join("recv.log"));
    let out = bin().args(["send", "--to", &addr]).env("SLUICE_TOKEN", &token).arg(&src).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(r.wait().unwrap().success());
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious", "the marker was written through the planted symlink");
    assert!(std::fs::symlink_metadata(dest.join(".sluice-incomplete")).is_err(), "marker (or the planted link) left behind");
    common::assert_copy(&src, &dest);

    // A destination root that is a symlink is refused before anything is
    // written through it.
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
    let (mut r, addr, token) = recv(&link, &tmp.path().join("recv2.log"));
    let out = bin().args(["send", "--to", &addr]).env("SLUICE_TOKEN", &token).arg(&src).output().unwrap();
    assert!(!out.status.success());
    assert!(!r.wait().unwrap().success());
    let log = std::fs::read_to_string(tmp.path().join("recv2.log")).unwrap();
    assert!(log.contains("is a symlink"), "{log}");
    assert!(std::fs::read_dir(&elsewhere).unwrap().next().is_none(), "something was written through the symlinked root");
}

#[test]
fn f9_a_file_swapped_for_a_symlink_after_the_scan_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("note.txt"), b"harmless note").unwrap();
    let secret = tmp.path().join("shadow");
    std::fs::write(&secret, b"root secret").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let tree = sluice_engine::source::scan(std::slice::from_ref(&src)).unwrap();
    // The tree's owner swaps the file after the scan.
    std::fs::remove_file(src.join("note.txt")).unwrap();
    std::os::unix::fs::symlink(&secret, src.join("note.txt")).unwrap();
    let r = Receiver::bind("127.0.0.1:0", ReceiveConfig::default()).unwrap();
    let (addr, token) = (r.local_addr().unwrap().to_string(), r.token().clone());
    let dest = tmp.path().join("dest");
    let d = dest.clone();
    let h = std::thread::spawn(move || r.run(&d));
    let e = sluice_engine::send::send_tree(&addr, &token, &tree, &SendConfig::default()).unwrap_err().to_string();
    assert!(e.contains("note.txt") && e.contains("symlink"), "{e}");
    assert!(h.join().unwrap().is_err());
    let leaked = walk(&dest).into_iter().any(|p| std::fs::read(&p).is_ok_and(|b| b == b"root secret"));
    assert!(!leaked, "the swapped-in file's content reached the receiver");

    // A hard link to another file swapped in (where fs.protected_hardlinks
    // is off, the tree's owner can link root's files) is refused too: it is
    // another inode than the one scanned.
    std::fs::remove_file(src.join("note.txt")).unwrap();
    std::fs::write(src.join("note.txt"), b"harmless note").unwrap();
    let tree = sluice_engine::source::scan(std::slice::from_ref(&src)).unwrap();
    std::fs::remove_file(src.join("note.txt")).unwrap();
    std::fs::hard_link(&secret, src.join("note.txt")).unwrap();
    let r = Receiver::bind("127.0.0.1:0", ReceiveConfig::default()).unwrap();
    let (addr, token) = (r.local_addr().unwrap().to_string(), r.token().clone());
    let dest = tmp.path().join("dest2");
    let d = dest.clone();
    let h = std::thread::spawn(move || r.run(&d));
    let e = sluice_engine::send::send_tree(&addr, &token, &tree, &SendConfig::default()).unwrap_err().to_string();
    assert!(e.contains("note.txt") && e.contains("replaced"), "{e}");
    assert!(h.join().unwrap().is_err());
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else { return out };
    for e in rd.flatten() {
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn f5_a_streamed_session_of_many_files_keeps_few_descriptors() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("dest");
    let files = 3000;
    let r = Receiver::bind("127.0.0.1:0", ReceiveConfig::default()).unwrap();
    let (addr, token) = (r.local_addr().unwrap().to_string(), r.token().clone());
    let d = dest.clone();
    let h = std::thread::spawn(move || r.run(&d));
    let fds = || std::fs::read_dir("/proc/self/fd").unwrap().count();
    let before = fds();
    let mut peak = before;
    let cfg = SendConfig { streams: 3, block_size: 64 << 10, ..SendConfig::default() };
    let produce = |f: &mut Feeder| {
        for i in 0..files {
            // Interleave: start many files before ending any.
            f.data(format!("db{}/t{i}.ibd", i % 7).as_bytes(), 0, &common::pattern(3000 + i, i as u32))?;
            if i >= 200 {
                let j = i - 200;
                f.end(format!("db{}/t{j}.ibd", j % 7).as_bytes())?;
            }
            if i % 100 == 0 {
                peak = peak.max(fds());
            }
        }
        for j in files - 200..files {
            f.end(format!("db{}/t{j}.ibd", j % 7).as_bytes())?;
        }
        Ok(())
    };
    let sent = send_streamed(&addr, &token, &cfg, produce).unwrap();
    let received = h.join().unwrap().unwrap();
    assert_eq!((sent.files, received.files), (files as u64, files as u64));
    for i in [0, 1, 1999, files - 1] {
        assert_eq!(std::fs::read(dest.join(format!("db{}/t{i}.ibd", i % 7))).unwrap(), common::pattern(3000 + i, i as u32));
    }
    // 200 files open at once on the producer side; the receiver keeps at
    // most 64 open (two descriptors each) whatever the count.
    let grown = peak - before;
    assert!(grown < 64 * 2 + 40, "descriptors grew by {grown} during a session of {files} files");
    assert!(fds() <= before + 2, "descriptors leaked after the session: {} -> {}", before, fds());
}

#[test]
fn f10_a_receiver_silent_after_end_cannot_hang_the_sender() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("a"), b"abc").unwrap();
    // A fake receiver: welcomes the sender, reads everything, never
    // answers END.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let fake = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut opening = [0u8; 8 + FRAME_HEADER_LEN + 48];
        s.read_exact(&mut opening).unwrap();
        assert_eq!(&opening[..8], &MAGIC);
        let h = FrameHeader::decode(opening[8..16].try_into().unwrap()).unwrap();
        assert_eq!(h.kind, Kind::Hello);
        let Frame::Hello(hello) = Frame::decode(h, &opening[16..]).unwrap() else { panic!("not a HELLO") };
        let mut w = Vec::new();
        Frame::Welcome {
            version: hello.max_version,
            capabilities: hello.capabilities & !(caps::RESUME | caps::HAVE),
            nonce: [9; 16],
            secret: [8; 16],
        }
        .encode(&mut w);
        s.write_all(&w).unwrap();
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    });
    let started = Instant::now();
    let out = bin()
        .args(["send", "--streams", "1", "--idle-timeout", "3", "--to", &addr])
        .env("SLUICE_TOKEN", "00112233445566778899aabbccddeeff")
        .arg(&src)
        .output()
        .unwrap();
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("no verdict"), "{err}");
    assert!(took < Duration::from_secs(20), "the sender waited {took:?} for a silent receiver");
    fake.join().unwrap();
}

#[test]
fn f13_sigterm_kills_and_reaps_the_backup_helper_and_removes_its_temp_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let fakebin = tmp.path().join("bin");
    std::fs::create_dir(&fakebin).unwrap();
    let record = tmp.path().join("helper.txt");
    // A mariadb-backup that records its pid and --tmpdir, then hangs.
    let script = format!(
        "#!/bin/sh\nfor a in \"$@\"; do case \"$a\" in --tmpdir=*) t=\"${{a#--tmpdir=}}\";; esac; done\necho \"$$ $t\" > {}\nexec sleep 60\n",
        record.display()
    );
    std::fs::write(fakebin.join("mariadb-backup"), script).unwrap();
    std::fs::set_permissions(fakebin.join("mariadb-backup"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dest = tmp.path().join("dest");
    let (mut r, addr, token) = recv(&dest, &tmp.path().join("recv.log"));
    let path = format!("{}:{}", fakebin.display(), std::env::var("PATH").unwrap_or_default());
    let mut send = bin()
        .args(["send", "--backup", "--to", &addr, "--backup-log"])
        .arg(tmp.path().join("mariabackup.backup.log"))
        .env("SLUICE_TOKEN", &token)
        .env("PATH", path)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let (pid, tmpdir) = loop {
        if let Some((p, t)) = std::fs::read_to_string(&record).ok().and_then(|s| {
            let (p, t) = s.trim().split_once(' ')?;
            Some((p.parse::<u32>().ok()?, t.to_string()))
        }) {
            break (p, t);
        }
        assert!(Instant::now() < deadline, "the fake mariadb-backup never started");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(Path::new(&tmpdir).is_dir());
    let mode = std::fs::metadata(&tmpdir).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o700, "the backup's temp dir must be private (F8)");
    sluice_engine::backend::sys::kill(send.id(), libc::SIGTERM).unwrap();
    let status = send.wait().unwrap();
    let mut err = String::new();
    send.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(status.code(), Some(128 + 15), "{err}");
    assert!(err.contains("stopped by signal"), "{err}");
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "mariadb-backup (pid {pid}) survived its parent's SIGTERM");
    assert!(!Path::new(&tmpdir).exists(), "the temp dir {tmpdir} was left behind");
    // The sender said why before it went: its receiver fails at once
    // instead of waiting out its resume window.
    let deadline = Instant::now() + Duration::from_secs(15);
    while r.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = r.kill();
    let status = r.wait().unwrap();
    let log = std::fs::read_to_string(tmp.path().join("recv.log")).unwrap();
    assert!(!status.success() && log.contains("the sender gave up: it was stopped by SIGTERM"), "{status:?}: {log}");
}

#[test]
fn f14_recv_prints_the_token_only_where_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("recv.log");
    let (mut r, _addr, token) = recv(&tmp.path().join("dest"), &log);
    let _ = r.kill();
    let _ = r.wait();
    assert!(!std::fs::read_to_string(&log).unwrap().contains(&token), "--json put the token on stderr too");
    // --token-file: a new private file, nothing on stderr.
    let file = tmp.path().join("token");
    let mut child = bin()
        .args(["recv", "--listen", "127.0.0.1:0", "--token-file"])
        .arg(&file)
        .args(["--dir"])
        .arg(tmp.path().join("dest2"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap()).read_line(&mut line).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let written = std::fs::read_to_string(&file).unwrap();
    assert_eq!(written.trim().len(), 32);
    assert!(!line.contains(written.trim()), "{line}");
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
}

#[test]
fn f12_a_manifest_beyond_the_receivers_limit_is_refused_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    for i in 0..40 {
        std::fs::write(src.join(format!("f{i}")), b"x").unwrap();
    }
    let cfg = ReceiveConfig { max_entries: 25, ..ReceiveConfig::default() };
    let (sent, received) = common::transfer_with(&src, &tmp.path().join("dest"), cfg, &SendConfig::default());
    let e = received.unwrap_err().to_string();
    assert!(e.contains("more than 25 entries"), "{e}");
    assert!(sent.is_err());
    assert!(!tmp.path().join("dest").exists(), "a refused manifest created the destination");
}

#[test]
fn f17_the_listener_closes_once_every_stream_has_joined() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("big"), common::pattern(6 << 20, 5)).unwrap();
    // Without resuming, the token is spent once every stream joined: the
    // listener closes. With resuming (the default), it stays open for
    // REJOINs of this session only: a new session is refused.
    for resume in [false, true] {
        let window = if resume { Duration::from_secs(60) } else { Duration::ZERO };
        let r = Receiver::bind("127.0.0.1:0", ReceiveConfig { resume_window: window, ..ReceiveConfig::default() }).unwrap();
        let (addr, token) = (r.local_addr().unwrap(), r.token().clone());
        let dest = tmp.path().join(format!("dest-{resume}"));
        let d = dest.clone();
        let h = std::thread::spawn(move || r.run(&d));
        // Slow enough (about 3 s) that the session is surely still running.
        let cfg = SendConfig { streams: 2, rate_limit: Some(2 << 20), block_size: 256 << 10, ..SendConfig::default() };
        let (a, t2, s2) = (addr.to_string(), token.clone(), src.clone());
        let s = std::thread::spawn(move || sluice_engine::send(&a, &t2, &[s2], &cfg));
        let t = Instant::now();
        while !dest.join("big").exists() {
            assert!(t.elapsed() < Duration::from_secs(20), "the session never started");
            std::thread::sleep(Duration::from_millis(5));
        }
        let late = std::net::TcpStream::connect(addr);
        if resume {
            // The right token, a new session: REJECTed.
            let mut late = late.unwrap();
            let mut hello = MAGIC.to_vec();
            Frame::Hello(Hello {
                min_version: sluice_engine::wire::MIN_PROTOCOL_VERSION,
                max_version: sluice_engine::wire::PROTOCOL_VERSION,
                stream_index: 0,
                stream_count: 1,
                capabilities: 0,
                token: *token.as_bytes(),
                session_salt: [7; 16],
            })
            .encode(&mut hello);
            late.write_all(&hello).unwrap();
            late.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
            let mut answer = Vec::new();
            let _ = late.read_to_end(&mut answer);
            assert!(String::from_utf8_lossy(&answer).contains("a session is already running"), "{answer:?}");
        } else {
            assert!(
                matches!(&late, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
                "a late connection reached the receiver mid-session: {late:?}"
            );
        }
        s.join().unwrap().unwrap();
        h.join().unwrap().unwrap();
    }
}
