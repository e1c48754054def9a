//! A malicious or garbled peer never writes outside the destination and
//! never makes the receiver report success.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;

use sluice_engine::manifest::{Entry, EntryKind};
use sluice_engine::wire::{DataHeader, Frame, Hello, MAGIC, PROTOCOL_VERSION};
use sluice_engine::{ReceiveConfig, Receiver};

fn entry(id: u32, kind: EntryKind, path: &str, size: u64, target: &str) -> Entry {
    Entry { link_target: target.as_bytes().to_vec(), ..Entry::new(id, kind, path.as_bytes(), size) }
}

/// Plays a hand-written sender: HELLO, then `frames` raw, then data for
/// file 0 if `data` is given. Returns the receiver's result.
fn hostile_session(dest: &Path, manifest: Vec<Entry>, data: Option<&[u8]>) -> sluice_engine::Result<sluice_engine::Summary> {
    let sum = data.map(|d| sluice_engine::digest::checksum(d) ^ 1);
    hostile_with(dest, manifest, 0, data.map(|d| (0, d.len() as u32, d, sum.unwrap())))
}

/// Like [`hostile_session`], with requested capabilities and a raw DATA
/// frame: (flags, decoded length, wire payload, checksum).
fn hostile_with(
    dest: &Path,
    manifest: Vec<Entry>,
    capabilities: u64,
    data: Option<(u8, u32, &[u8], u64)>,
) -> sluice_engine::Result<sluice_engine::Summary> {
    let r = Receiver::bind("127.0.0.1:0", ReceiveConfig::default()).unwrap();
    let addr = r.local_addr().unwrap();
    let token = *r.token().as_bytes();
    let dest = dest.to_path_buf();
    let h = std::thread::spawn(move || r.run(&dest));
    let mut s = TcpStream::connect(addr).unwrap();
    let mut buf = MAGIC.to_vec();
    Frame::Hello(Hello {
        min_version: PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        stream_index: 0,
        stream_count: 1,
        capabilities,
        token,
        session_salt: [3; 16],
    })
    .encode(&mut buf);
    let n = manifest.len() as u64;
    let bytes = manifest.iter().map(Entry::data_bytes).sum();
    Frame::Manifest(manifest).encode(&mut buf);
    Frame::ManifestEnd { entries: n, data_bytes: bytes }.encode(&mut buf);
    if let Some((flags, raw_len, d, checksum)) = data {
        buf.extend_from_slice(&DataHeader { file_id: 0, seq: 0, offset: 0, raw_len, checksum }.encode_prefix(d.len() as u32, flags));
        buf.extend_from_slice(d);
    }
    let _ = s.write_all(&buf);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let result = h.join().unwrap();
    drop(s);
    result
}

#[test]
fn traversal_paths_are_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("dest");
    for bad in ["../escaped", "/tmp/absolute", "a/../../escaped"] {
        let err = hostile_session(&dest, vec![entry(0, EntryKind::File, bad, 4, "")], Some(b"evil")).unwrap_err().to_string();
        assert!(err.contains("not allowed"), "{bad}: {err}");
    }
    assert!(!tmp.path().join("escaped").exists());
    // The manifest is refused before the destination is created.
    assert!(!dest.exists(), "the destination was created for a refused manifest");
}

#[test]
fn a_peer_symlink_cannot_be_used_as_a_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let dest = tmp.path().join("dest");
    let manifest = vec![entry(0, EntryKind::File, "link/owned", 4, ""), entry(1, EntryKind::Symlink, "link", 0, outside.to_str().unwrap())];
    let err = hostile_session(&dest, manifest, Some(b"evil")).unwrap_err().to_string();
    assert!(err.contains("parent directory"), "{err}");
    assert!(std::fs::read_dir(&outside).unwrap().next().is_none(), "a file was written outside the destination");
}

#[test]
fn a_preexisting_symlink_in_the_destination_is_never_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let src = common::fixture(tmp.path());
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let dest = tmp.path().join("dest");
    std::fs::create_dir_all(&dest).unwrap();
    std::os::unix::fs::symlink(&outside, dest.join("nested")).unwrap();
    let (s, r) = common::transfer(&src, &dest, sluice_engine::IoMode::Auto, sluice_engine::IoMode::Auto, 2);
    let err = r.unwrap_err().to_string();
    assert!(err.contains("nested") && err.contains("symlink"), "{err}");
    assert!(s.is_err());
    assert!(std::fs::read_dir(&outside).unwrap().next().is_none(), "a file was written through the symlink");
}

#[test]
fn a_corrupted_block_is_named_and_never_reported_as_success() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("dest");
    let err = hostile_session(&dest, vec![entry(0, EntryKind::File, "table.ibd", 8, "")], Some(b"abcdefgh")).unwrap_err().to_string();
    assert!(err.contains("table.ibd") && err.contains("checksum mismatch"), "{err}");
    assert!(dest.join(".sluice-incomplete").exists());
}

#[test]
fn a_block_outside_the_announced_extents_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("dest");
    // The manifest announces 4 bytes; the peer sends 8 at offset 0.
    let err = hostile_session(&dest, vec![entry(0, EntryKind::File, "t.ibd", 4, "")], Some(b"abcdefgh")).unwrap_err().to_string();
    assert!(err.contains("t.ibd") && err.contains("outside"), "{err}");
}

#[test]
fn compressed_blocks_need_negotiation_and_must_decode() {
    use sluice_engine::wire::{caps, data_flags};
    let tmp = tempfile::tempdir().unwrap();
    let plain = b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let packed = lz4_flex::block::compress(plain);
    let sum = sluice_engine::digest::checksum(plain);
    let manifest = || vec![entry(0, EntryKind::File, "z.ibd", plain.len() as u64, "")];

    // Not negotiated: refused even though it would decode.
    let err = hostile_with(&tmp.path().join("a"), manifest(), 0, Some((data_flags::LZ4, plain.len() as u32, &packed, sum))).unwrap_err();
    assert!(err.to_string().contains("without negotiating"), "{err}");

    // Negotiated but garbage: a named verification error for the file.
    let garbage = vec![0xF0u8; 40];
    let err =
        hostile_with(&tmp.path().join("b"), manifest(), caps::COMPRESS_LZ4, Some((data_flags::LZ4, plain.len() as u32, &garbage, sum)))
            .unwrap_err()
            .to_string();
    assert!(err.contains("z.ibd") && err.contains("lz4"), "{err}");

    // A block that decodes to more than the announced length.
    let err = hostile_with(&tmp.path().join("c"), manifest(), caps::COMPRESS_LZ4, Some((data_flags::LZ4, 10, &packed, sum)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("z.ibd"), "{err}");
    assert!(tmp.path().join("b/.sluice-incomplete").exists());
}
