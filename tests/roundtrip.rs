//! Round trips over real loopback sockets: every sending backend against
//! every receiving backend, with 1 and 4 streams.

mod common;

use std::time::{Duration, Instant};

use common::{BLOCK, assert_copy, fixture, io_of, methods, transfer, transfer_with};
use sluice_engine::codec::Compression;
use sluice_engine::codec::seal::SealKey;
use sluice_engine::{IoMode, ReceiveConfig, SendConfig};

#[test]
fn every_transform_copies_exactly_and_compression_shrinks_the_wire() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture(tmp.path());
    let key = || Some(SealKey::parse(&[5u8; 32]).unwrap());
    let transforms = [
        (Compression::Lz4, None),
        (Compression::Zstd(1), None),
        (Compression::Zstd(3), None),
        (Compression::Auto, None),
        (Compression::None, key()),
        (Compression::Lz4, key()),
        (Compression::Zstd(1), key()),
    ];
    for (compress, seal_key) in transforms {
        for streams in [1u16, 4] {
            // A zero-copy backend is asked for on purpose: transforms must fall back to copying.
            for io in [IoMode::Auto, IoMode::Splice] {
                let sealed = if seal_key.is_some() { "sealed" } else { "plain" };
                let dest = tmp.path().join(format!("dest-{compress}-{sealed}-{streams}-{io:?}"));
                let cfg = SendConfig { streams, io, compress, seal_key: seal_key.clone(), block_size: BLOCK, ..SendConfig::default() };
                let rcfg = ReceiveConfig { io, seal_key: seal_key.clone(), ..ReceiveConfig::default() };
                let (s, r) = transfer_with(&src, &dest, rcfg, &cfg);
                let r = r.unwrap_or_else(|e| panic!("{compress} x{streams}: receiver failed: {e}"));
                let s = s.unwrap_or_else(|e| panic!("{compress} x{streams}: sender failed: {e}"));
                assert_copy(&src, &dest);
                assert_eq!((s.bytes, s.wire_bytes), (r.bytes, r.wire_bytes), "both ends count the same");
                if !matches!(compress, Compression::Auto | Compression::None) {
                    assert!(r.wire_bytes < r.bytes, "{compress}: {} wire bytes for {} data bytes", r.wire_bytes, r.bytes);
                }
            }
        }
    }
}

#[test]
fn the_rate_limit_is_never_exceeded() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture(tmp.path());
    let rate = 2u64 << 20;
    let dest = tmp.path().join("dest");
    let cfg = SendConfig { streams: 4, rate_limit: Some(rate), block_size: BLOCK, ..SendConfig::default() };
    let t = Instant::now();
    let (s, r) = transfer_with(&src, &dest, ReceiveConfig::default(), &cfg);
    let elapsed = t.elapsed();
    let bytes = r.unwrap().wire_bytes;
    s.unwrap();
    assert_copy(&src, &dest);
    // GCRA lets one burst (1 MiB) and one grant through at once; everything else waits.
    let floor = Duration::from_secs_f64((bytes - (1 << 20) - u64::from(BLOCK)) as f64 / rate as f64);
    assert!(elapsed >= floor, "{bytes} bytes at {rate} B/s took {elapsed:?}, less than {floor:?}");
}

#[test]
fn every_backend_pair_and_stream_count_copies_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture(tmp.path());
    let mut runs = 0;
    for send in methods() {
        for recv in methods() {
            for streams in [1u16, 4] {
                let dest = tmp.path().join(format!("dest-{send}-{recv}-{streams}"));
                let (s, r) = transfer(&src, &dest, io_of(send), io_of(recv), streams);
                let r = r.unwrap_or_else(|e| panic!("{send}->{recv} x{streams}: receiver failed: {e}"));
                let s = s.unwrap_or_else(|e| panic!("{send}->{recv} x{streams}: sender failed: {e}"));
                assert_eq!(s.bytes, r.bytes);
                assert_eq!(r.files, 8);
                assert_copy(&src, &dest);
                runs += 1;
            }
        }
    }
    let methods = common::methods().len();
    assert_eq!(runs, methods * methods * 2, "every backend pair ran with 1 and 4 streams");
}

#[test]
fn auto_mode_and_single_file_arguments_work() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture(tmp.path());
    let dest = tmp.path().join("dest");
    let (s, r) = transfer(&src.join("big.bin"), &dest, sluice_engine::IoMode::Auto, sluice_engine::IoMode::Auto, 2);
    s.unwrap();
    assert_eq!(r.unwrap().files, 1);
    assert_eq!(std::fs::read(dest.join("big.bin")).unwrap(), std::fs::read(src.join("big.bin")).unwrap());
}

#[test]
fn existing_destination_files_are_refused_not_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture(tmp.path());
    let dest = tmp.path().join("dest");
    std::fs::create_dir_all(&dest).unwrap();
    std::fs::write(dest.join("big.bin"), b"precious").unwrap();
    let (s, r) = transfer(&src, &dest, sluice_engine::IoMode::Copy, sluice_engine::IoMode::Copy, 2);
    let r = r.unwrap_err().to_string();
    assert!(r.contains("big.bin") && r.contains("--overwrite"), "{r}");
    let s = s.unwrap_err().to_string();
    assert!(s.contains("big.bin"), "the sender must report the receiver's reason: {s}");
    assert_eq!(std::fs::read(dest.join("big.bin")).unwrap(), b"precious");
    assert!(dest.join(".sluice-incomplete").exists());
}

#[test]
fn a_full_destination_fails_with_a_named_error() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture(tmp.path());
    let mnt = tmp.path().join("tiny");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = std::process::Command::new("mount").args(["-t", "tmpfs", "-o", "size=1m", "sluice-test"]).arg(&mnt).status();
    if !mounted.is_ok_and(|s| s.success()) {
        common::skip("cannot mount a 1 MiB tmpfs here (needs root)");
        return;
    }
    let dest = mnt.join("dest");
    let (s, r) = transfer(&src, &dest, sluice_engine::IoMode::Copy, sluice_engine::IoMode::Copy, 2);
    let marker = dest.join(".sluice-incomplete").exists();
    let umounted = std::process::Command::new("umount").arg(&mnt).status().unwrap();
    let r = r.unwrap_err().to_string();
    assert!(r.contains("No space left") && r.contains("filesystem is full"), "{r}");
    assert!(s.unwrap_err().to_string().contains("No space left"));
    assert!(marker, "a failed destination must say it is incomplete");
    assert!(umounted.success());
}
