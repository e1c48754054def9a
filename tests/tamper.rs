//! Bytes altered in flight (through a small TCP proxy that flips one bit)
//! and mismatched keys: every case ends in a named error on both sides and
//! never in success.

mod common;

use std::path::Path;

use sluice_engine::codec::Compression;
use sluice_engine::codec::seal::SealKey;
use sluice_engine::{ReceiveConfig, Receiver, SendConfig};

/// Forwards every connection to `target`; on the first one, flips the low
/// bit of the byte at offset `flip` of the sender → receiver direction.
fn proxy(target: std::net::SocketAddr, flip: usize) -> std::net::SocketAddr {
    common::proxy(target, move |chunk, seen| {
        if (seen..seen + chunk.len()).contains(&flip) {
            chunk[flip - seen] ^= 1;
        }
        None
    })
}

fn key(b: u8) -> SealKey {
    SealKey::parse(&[b; 32]).unwrap()
}

/// Runs one transfer, optionally through the bit-flipping proxy; returns
/// (sender error, receiver error) as strings, or "ok".
fn run(
    src: &Path,
    dest: &Path,
    flip: Option<usize>,
    compress: Compression,
    send_key: Option<SealKey>,
    recv_key: Option<SealKey>,
) -> (String, String) {
    let r = Receiver::bind("127.0.0.1:0", ReceiveConfig { seal_key: recv_key, ..ReceiveConfig::default() }).unwrap();
    let target = r.local_addr().unwrap();
    let token = r.token().clone();
    let cancel = r.cancel_handle();
    let d = dest.to_path_buf();
    let h = std::thread::spawn(move || r.run(&d));
    let addr = flip.map_or(target, |f| proxy(target, f));
    let cfg = SendConfig { streams: 1, compress, seal_key: send_key, block_size: common::BLOCK, ..SendConfig::default() };
    let s = sluice_engine::send(&addr.to_string(), &token, &[src.to_path_buf()], &cfg);
    if s.is_err() {
        cancel.store(true, std::sync::atomic::Ordering::Release);
    }
    let r = h.join().unwrap();
    let show = |x: sluice_engine::Result<sluice_engine::Summary>| x.map_or_else(|e| e.to_string(), |_| "ok".to_string());
    (show(s), show(r))
}

#[test]
fn a_flipped_bit_is_caught_in_plain_compressed_and_sealed_sessions() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    // Half text, half noise: every mode's first 64 KiB block stays > 30 KiB on the wire.
    let mut x = 99u32;
    let log: Vec<u8> = (0..3_000_000u32)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            if (i / 4096) % 2 == 0 { b"INFO row=12345 status=ok\n"[(i % 25) as usize] } else { x as u8 }
        })
        .collect();
    std::fs::write(src.join("t.ibd"), &log).unwrap();
    // 20 KiB into stream 0: past the handshake and manifest, inside the
    // payload of the first DATA frame.
    let flip = 20 << 10;
    let cases = [
        ("plain", Compression::None, None, "checksum mismatch"),
        ("lz4", Compression::Lz4, None, "t.ibd"),
        ("zstd", Compression::Zstd(1), None, "t.ibd"),
        ("sealed", Compression::None, Some(key(1)), "failed authentication"),
        ("lz4+sealed", Compression::Lz4, Some(key(1)), "failed authentication"),
    ];
    for (name, compress, k, expect) in cases {
        let dest = tmp.path().join(name);
        let (s, r) = run(&src, &dest, Some(flip), compress, k.clone(), k);
        assert!(r.contains(expect), "{name}: receiver said {r:?}");
        assert_ne!(s, "ok", "{name}: the sender reported success");
        assert!(dest.join(".sluice-incomplete").exists(), "{name}: destination not marked incomplete");
        // The same transfer without tampering succeeds: the proxy is the culprit.
        let (s, r) = run(
            &src,
            &tmp.path().join(format!("{name}-clean")),
            None,
            compress,
            Some(key(1)).filter(|_| name.contains("sealed")),
            Some(key(1)).filter(|_| name.contains("sealed")),
        );
        assert_eq!((s.as_str(), r.as_str()), ("ok", "ok"), "{name}");
        assert_eq!(std::fs::read(tmp.path().join(format!("{name}-clean/t.ibd"))).unwrap(), log);
    }
}

#[test]
fn mismatched_keys_are_named_not_silently_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let src = common::fixture(tmp.path());
    let (s, r) = run(&src, &tmp.path().join("a"), None, Compression::None, Some(key(1)), Some(key(2)));
    assert!(r.contains("different key files"), "{r}");
    assert_ne!(s, "ok");
    let (s, r) = run(&src, &tmp.path().join("b"), None, Compression::None, None, Some(key(2)));
    assert!(s.contains("requires sealed transfers"), "{s}");
    assert_ne!(r, "ok");
    let (s, _) = run(&src, &tmp.path().join("c"), None, Compression::None, Some(key(1)), None);
    assert!(s.contains("no sealing key"), "{s}");
    let (s, r) = run(&src, &tmp.path().join("d"), None, Compression::Zstd(3), Some(key(3)), Some(key(3)));
    assert_eq!((s.as_str(), r.as_str()), ("ok", "ok"));
    common::assert_copy(&src, &tmp.path().join("d"));
}
