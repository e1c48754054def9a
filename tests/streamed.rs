//! Streamed sessions (files announced while data flows) over real loopback
//! sockets: interleaved files, out-of-order offsets, empty files, nested
//! paths, every stream count and transform; a failing producer leaves the
//! destination marked incomplete.

mod common;

use std::fs;
use std::path::Path;

use sluice_engine::codec::Compression;
use sluice_engine::codec::seal::SealKey;
use sluice_engine::manifest::INCOMPLETE_MARKER;
use sluice_engine::send::{Feeder, send_streamed};
use sluice_engine::{Error, ReceiveConfig, Receiver, SendConfig, Summary};

fn bytes(len: usize, seed: u8) -> Vec<u8> {
    common::pattern(len, u32::from(seed))
}

/// The files the producer below writes, with their final contents.
fn expected() -> Vec<(&'static str, Vec<u8>)> {
    let big = bytes(5 * 1024 * 1024 + 3, 1);
    let mut gappy = vec![0u8; 300_000];
    gappy[200_000..].copy_from_slice(&bytes(100_000, 2));
    vec![
        ("ibdata1", big),
        ("db1/t1.ibd", bytes(70_000, 3)),
        ("db1/deep/er/t2.frm", b"frm".to_vec()),
        ("empty", Vec::new()),
        ("gappy.ibd", gappy),
        ("mariadb_backup_galera_info", b"uuid:7 0".to_vec()),
    ]
}

/// Writes the expected files in an interleaved, partly reversed order.
fn produce(f: &mut Feeder) -> sluice_engine::Result<()> {
    let files = expected();
    let big = &files[0].1;
    let t1 = &files[1].1;
    // ibdata1 in 1 MiB pieces, last piece first; t1 interleaved with it.
    let pieces: Vec<usize> = (0..big.len()).step_by(1 << 20).collect();
    for (i, &at) in pieces.iter().rev().enumerate() {
        let end = (at + (1 << 20)).min(big.len());
        f.data(b"ibdata1", at as u64, &big[at..end])?;
        if i == 1 {
            f.data(b"db1/t1.ibd", 0, &t1[..30_000])?;
        }
    }
    f.data(b"db1/t1.ibd", 30_000, &t1[30_000..])?;
    f.file_bytes(b"db1/deep/er/t2.frm", &files[2].1)?;
    f.end(b"empty")?;
    f.data(b"gappy.ibd", 200_000, &files[4].1[200_000..])?;
    f.end(b"ibdata1")?;
    f.end(b"db1/t1.ibd")?;
    f.end(b"gappy.ibd")?;
    f.file_bytes(b"mariadb_backup_galera_info", &files[5].1)
}

type Outcome = (sluice_engine::Result<Summary>, sluice_engine::Result<Summary>);

fn session<F>(dest: &Path, send: &SendConfig, recv: ReceiveConfig, producer: F) -> Outcome
where
    F: FnOnce(&mut Feeder) -> sluice_engine::Result<()> + Send,
{
    let r = Receiver::bind("127.0.0.1:0", recv).unwrap();
    let addr = r.local_addr().unwrap().to_string();
    let token = r.token().clone();
    let d = dest.to_path_buf();
    let h = std::thread::spawn(move || r.run(&d));
    let sent = send_streamed(&addr, &token, send, producer);
    (sent, h.join().unwrap())
}

fn assert_tree(dest: &Path) {
    for (path, content) in expected() {
        let got = fs::read(dest.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(got == content, "{path}: {} bytes, want {}", got.len(), content.len());
    }
    assert!(!dest.join(INCOMPLETE_MARKER).exists(), "marker left behind");
}

#[test]
fn streamed_files_arrive_intact_on_any_stream_count_and_transform() {
    let key = SealKey::parse(&[7; 32]).unwrap();
    let variants =
        [(1, Compression::None, None), (4, Compression::None, None), (3, Compression::Lz4, None), (2, Compression::Zstd(1), Some(key))];
    for (streams, compress, seal) in variants {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("dest");
        let send = SendConfig { streams, compress, seal_key: seal.clone(), block_size: 256 << 10, ..SendConfig::default() };
        let recv = ReceiveConfig { seal_key: seal, ..ReceiveConfig::default() };
        let (s, r) = session(&dest, &send, recv, produce);
        let (s, r) = (s.unwrap(), r.unwrap());
        assert_eq!(s.files, 6, "{streams} streams, {compress}");
        assert_eq!((r.files, r.bytes), (s.files, s.bytes));
        assert_eq!(s.bytes, expected().iter().map(|(_, c)| c.len() as u64).sum::<u64>() - 200_000);
        assert_tree(&dest);
    }
}

#[test]
fn an_external_filter_pair_carries_the_blocks_and_a_missing_inverse_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("dest");
    let send = SendConfig { streams: 2, filter: Some("gzip -1 -c".into()), block_size: 1 << 20, ..SendConfig::default() };
    let recv = ReceiveConfig { unfilter: Some("gzip -dc".into()), ..ReceiveConfig::default() };
    let (s, r) = session(&dest, &send, recv, produce);
    assert_eq!(r.unwrap().bytes, s.unwrap().bytes);
    assert_tree(&dest);
    let (s, _) = session(
        &dir.path().join("dest2"),
        &send,
        ReceiveConfig { first_connect_timeout: Some(std::time::Duration::from_secs(5)), ..ReceiveConfig::default() },
        produce,
    );
    let e = s.unwrap_err().to_string();
    assert!(e.contains("no command to undo it"), "{e}");
}

#[test]
fn a_failing_producer_fails_both_ends_and_leaves_the_marker() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("dest");
    let send = SendConfig { streams: 2, ..SendConfig::default() };
    let (s, r) = session(&dest, &send, ReceiveConfig::default(), |f| {
        f.data(b"ibdata1", 0, &bytes(3 << 20, 9))?;
        Err(Error::Config("mariadb-backup exited with status 1".into()))
    });
    let e = s.unwrap_err().to_string();
    assert!(e.contains("mariadb-backup exited with status 1"), "{e}");
    let r = r.unwrap_err().to_string();
    assert!(r.contains("the sender gave up: mariadb-backup exited with status 1"), "the receiver names the sender's reason: {r}");
    assert!(dest.join(INCOMPLETE_MARKER).exists());
}

#[test]
fn a_receiver_without_a_sender_gives_up_after_the_first_connect_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ReceiveConfig { first_connect_timeout: Some(std::time::Duration::from_millis(300)), ..ReceiveConfig::default() };
    let r = Receiver::bind("127.0.0.1:0", cfg).unwrap();
    let e = r.run(&dir.path().join("dest")).unwrap_err().to_string();
    assert!(e.contains("no sender connected within 300ms"), "{e}");
}

#[test]
fn unended_files_and_bad_paths_are_named() {
    for (what, producer) in [
        ("still open", Box::new(|f: &mut Feeder| f.data(b"open.ibd", 0, b"x")) as Box<dyn FnOnce(&mut Feeder) -> _ + Send>),
        ("../escape", Box::new(|f: &mut Feeder| f.file_bytes(b"../escape", b"x"))),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("dest");
        let (s, r) = session(&dest, &SendConfig { streams: 1, ..SendConfig::default() }, ReceiveConfig::default(), producer);
        let e = s.unwrap_err().to_string();
        assert!(e.contains(what), "{what}: {e}");
        assert!(r.is_err());
        assert!(!dir.path().join("escape").exists());
        assert!(dest.join(INCOMPLETE_MARKER).exists());
    }
}
