//! Shared fixtures for the integration tests: a tree with every kind of
//! entry the engine must carry, and helpers to run real transfers.

#![allow(dead_code)]

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sluice_engine::{IoMode, Method, ReceiveConfig, Receiver, SendConfig, Summary};

/// Size of the file that spans several blocks.
pub const BIG: usize = 3 * 1024 * 1024 + 7;
/// Block size the matrix uses, so `BIG` is split over many blocks.
pub const BLOCK: u32 = 64 << 10;

/// Skips a test whose prerequisite is missing, except under `CI=true`,
/// where it fails: CI proves it ran everything.
pub fn skip(why: &str) {
    assert!(std::env::var("CI").as_deref() != Ok("true"), "prerequisite missing in CI: {why}");
    eprintln!("SKIPPED: {why}");
}

/// Writes a secret file (a private key) with mode 0600, as sluice requires.
pub fn write_private(path: &Path, contents: impl AsRef<[u8]>) {
    fs::write(path, contents).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
}

/// Deterministic pseudo-random bytes (xorshift), incompressible.
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Builds the fixture tree under `root` and returns it.
pub fn fixture(root: &Path) -> PathBuf {
    let src = root.join("src");
    fs::create_dir_all(src.join("nested/deeper")).unwrap();
    fs::create_dir_all(src.join("empty dir")).unwrap();
    fs::create_dir_all(src.join("données")).unwrap();
    fs::write(src.join("big.bin"), pattern(BIG, 1)).unwrap();
    fs::write(src.join("nested/deeper/small.txt"), b"hello sluice\n").unwrap();
    // Compressible: so compressed transfers exercise the decoders.
    let log = (0..40_000).fold(String::new(), |mut s, i| {
        let _ = writeln!(s, "{i:08} INFO row updated id={} status=ok", i % 977);
        s
    });
    fs::write(src.join("server.log"), log).unwrap();
    fs::write(src.join("données/café au lait.ibd"), pattern(70_000, 2)).unwrap();
    fs::write(src.join("empty"), b"").unwrap();
    fs::write(src.join("secret"), b"mode 0600").unwrap();
    fs::set_permissions(src.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(src.join("tool.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(src.join("tool.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(src.join("nested/deeper"), fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::symlink("nested/deeper/small.txt", src.join("link to small")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/outside", src.join("dangling")).unwrap();
    // Sparse: 32 MiB with data at 0, 8 MiB and the last 4 KiB.
    let mut f = File::create(src.join("sparse.ibd")).unwrap();
    f.write_all(&pattern(4096, 3)).unwrap();
    f.seek(SeekFrom::Start(8 << 20)).unwrap();
    f.write_all(&pattern(100_000, 4)).unwrap();
    f.seek(SeekFrom::Start((32 << 20) - 4096)).unwrap();
    f.write_all(&pattern(4096, 5)).unwrap();
    drop(f);
    // A distinctive mtime on a file and a directory.
    let t = SystemTime::UNIX_EPOCH + Duration::new(1_500_000_000, 123_456_789);
    File::options().write(true).open(src.join("secret")).unwrap().set_modified(t).unwrap();
    File::open(src.join("empty dir")).unwrap().set_modified(t).unwrap();
    src
}

/// Asserts that `dest` is an exact copy of the fixture at `src`.
pub fn assert_copy(src: &Path, dest: &Path) {
    let n = sluice_engine::diff::compare(src, dest).unwrap_or_else(|d| panic!("copy differs: {d}"));
    assert_eq!(n, 14, "entries compared");
    let sparse = fs::metadata(dest.join("sparse.ibd")).unwrap();
    assert_eq!(sparse.len(), 32 << 20);
    assert!(sparse.blocks() * 512 < 1 << 20, "holes were filled: {} blocks", sparse.blocks());
    assert_eq!(fs::read_link(dest.join("link to small")).unwrap(), Path::new("nested/deeper/small.txt"));
    assert_eq!(fs::metadata(dest.join("secret")).unwrap().mode() & 0o7777, 0o600);
    assert_eq!(fs::metadata(dest.join("tool.sh")).unwrap().mode() & 0o7777, 0o755);
    assert_eq!(fs::metadata(dest.join("secret")).unwrap().mtime_nsec(), 123_456_789);
    assert!(fs::read_dir(dest.join("empty dir")).unwrap().next().is_none());
    assert!(!dest.join(".sluice-incomplete").exists(), "marker left after success");
}

pub fn io_of(m: Method) -> IoMode {
    match m {
        Method::Uring => IoMode::Uring,
        Method::Splice => IoMode::Splice,
        Method::Copy => IoMode::Copy,
    }
}

/// Methods this machine can run; io_uring is reported when skipped.
pub fn methods() -> Vec<Method> {
    let mut m = vec![Method::Copy, Method::Splice];
    match sluice_engine::backend::uring_available() {
        Ok(()) => m.push(Method::Uring),
        Err(why) => {
            assert!(
                !cfg!(feature = "uring") || std::env::var("CI").as_deref() != Ok("true"),
                "io_uring is compiled in but unavailable in CI: {why}"
            );
            eprintln!("SKIPPED: io_uring backend unavailable here: {why}");
        }
    }
    m
}

/// Results of both ends of one transfer.
pub type Outcome = (sluice_engine::Result<Summary>, sluice_engine::Result<Summary>);

/// One in-process transfer over a real loopback socket.
pub fn transfer(src: &Path, dest: &Path, send: IoMode, recv: IoMode, streams: u16) -> Outcome {
    let cfg = SendConfig { streams, io: send, block_size: BLOCK, ..SendConfig::default() };
    transfer_with(src, dest, ReceiveConfig { io: recv, ..ReceiveConfig::default() }, &cfg)
}

/// A receiver on a loopback port, receiving one session into `dest` on
/// its own thread: its address, its token and the thread.
pub fn spawn_receiver(
    recv: ReceiveConfig,
    dest: &Path,
) -> (std::net::SocketAddr, sluice_engine::Token, std::thread::JoinHandle<sluice_engine::Result<Summary>>) {
    let r = Receiver::bind("127.0.0.1:0", recv).unwrap();
    let addr = r.local_addr().unwrap();
    let token = r.token().clone();
    let dest = dest.to_path_buf();
    (addr, token, std::thread::spawn(move || r.run(&dest)))
}

/// One in-process transfer with full configurations.
pub fn transfer_with(src: &Path, dest: &Path, recv: ReceiveConfig, send: &SendConfig) -> Outcome {
    let (addr, token, h) = spawn_receiver(recv, dest);
    let sent = sluice_engine::send(&addr.to_string(), &token, &[src.to_path_buf()], send);
    (sent, h.join().unwrap())
}

/// A running `sluice recv --json` and what it printed.
pub struct Recv {
    pub child: std::process::Child,
    pub addr: String,
    pub token: String,
    pub log: PathBuf,
}

/// Starts `sluice recv --listen 127.0.0.1:0 --json --dir DEST EXTRA…` with
/// stderr in `log` and reads its address and token.
pub fn start_recv(dest: &Path, log: &Path, extra: &[&str]) -> Recv {
    use std::io::BufRead as _;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["recv", "--listen", "127.0.0.1:0", "--json", "--dir"])
        .arg(dest)
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(File::create(log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad JSON line {line:?}: {e}"));
    Recv { child, addr: v["addr"].as_str().unwrap().into(), token: v["token"].as_str().unwrap().into(), log: log.into() }
}

/// The SST joiner as mysqld runs it (`script` is the binary under its SST
/// name) on 127.0.0.1:`port` for `datadir`; returns it, its stdout after the
/// `ready` line, and the address that line advertised.
pub fn start_sst_joiner(
    script: &Path,
    port: u16,
    datadir: &Path,
    mysqld_args: &str,
) -> (std::process::Child, std::io::BufReader<std::process::ChildStdout>, String) {
    use std::io::BufRead as _;
    use std::process::Stdio;
    let mut joiner = std::process::Command::new(script)
        .args(["--role", "joiner", "--address", &format!("127.0.0.1:{port}"), "--datadir"])
        .arg(format!("{}/", datadir.display()))
        .args(["--parent", &std::process::id().to_string(), "--progress", "0", "--mysqld-args", mysqld_args])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(joiner.stdout.take().unwrap());
    let mut ready = String::new();
    out.read_line(&mut ready).unwrap();
    let addr = ready.strip_prefix("ready ").unwrap_or_else(|| panic!("first line {ready:?}")).trim().to_string();
    (joiner, out, addr)
}

/// A TCP proxy to `target`: every connection is forwarded both ways. The
/// sender → receiver bytes of the first connection (stream 0, which
/// connects first) pass through `first` as they arrive — the chunk,
/// mutable, and how many bytes came before it — which may alter them, or
/// cut the connection: `Some(k)` forwards the chunk's first `k` bytes, then
/// closes both sides.
pub fn proxy(target: std::net::SocketAddr, first: impl FnMut(&mut [u8], usize) -> Option<usize> + Send + 'static) -> std::net::SocketAddr {
    use std::io::Read;
    use std::net::{Shutdown, TcpListener, TcpStream};
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let mut first = Some(first);
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(client) = c else { return };
            let Ok(server) = TcpStream::connect(target) else { return };
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s2, &mut c2);
                let _ = c2.shutdown(Shutdown::Write);
            });
            let mut watch = first.take();
            std::thread::spawn(move || {
                let (mut client, mut server) = (client, server);
                let mut buf = vec![0u8; 16 << 10];
                let mut seen = 0usize;
                loop {
                    let k = match client.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => k,
                    };
                    let cut = watch.as_mut().and_then(|f| f(&mut buf[..k], seen));
                    let pass = cut.unwrap_or(k).min(k);
                    seen += pass;
                    if server.write_all(&buf[..pass]).is_err() {
                        break;
                    }
                    if cut.is_some() {
                        let _ = client.shutdown(Shutdown::Both);
                        let _ = server.shutdown(Shutdown::Both);
                        return;
                    }
                }
                let _ = server.shutdown(Shutdown::Write);
            });
        }
    });
    addr
}
