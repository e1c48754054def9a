//! Per-core cost of each block transform, on 64 KiB, 256 KiB and 1 MiB
//! chunks of mixed data (16 KiB pages alternating row-like text and random
//! bytes, like tablespaces): lz4 and zstd-1/3 compress and decompress,
//! AES-256-GCM seal and open, and the xxh3-64 block checksum. Throughput in
//! input bytes; reports, never fails.

mod common;

use common::mixed;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sluice_engine::codec::seal::{Binding, Direction, SealKey, Sealer};
use sluice_engine::codec::{Compression, Decoder, Encoder};

fn codecs(c: &mut Criterion) {
    for size in [64usize << 10, 256 << 10, 1 << 20] {
        let data = mixed(size);
        let mut g = c.benchmark_group(format!("chunk_{}k", size >> 10));
        g.throughput(Throughput::Bytes(size as u64));
        for mode in [Compression::Lz4, Compression::Zstd(1), Compression::Zstd(3)] {
            let mut enc = Encoder::new(mode, size as u32).unwrap();
            g.bench_function(BenchmarkId::new("compress", mode), |b| b.iter(|| enc.encode(&data).map(|(f, p)| (f, p.len()))));
            let (flag, packed) = enc.encode(&data).map(|(f, p)| (f, p.to_vec())).expect("mixed data compresses");
            let mut out = vec![0u8; size];
            let mut dec = Decoder::default();
            g.bench_function(BenchmarkId::new("decompress", mode), |b| b.iter(|| dec.decode(flag, &packed, &mut out).unwrap()));
        }
        let binding = Binding { sender_salt: &[1; 16], receiver_nonce: &[2; 16], token: &[3; 16], capabilities: 4, streams: 2 };
        let key = SealKey::parse(&[7u8; 32]).unwrap().session(&binding);
        let mut sealer = Sealer::new(key.clone(), Direction::ToReceiver, 0);
        let mut buf = data.clone();
        g.bench_function("aes256gcm_seal", |b| b.iter(|| sealer.seal(b"header", &mut buf)));
        // Open: seal a fresh copy per iteration outside the measurement is
        // costly, so measure seal+open and subtract seal when reading.
        let mut s2 = Sealer::new(key.clone(), Direction::ToReceiver, 1);
        let mut o2 = Sealer::new(key, Direction::ToReceiver, 1);
        let mut work = data.clone();
        work.extend_from_slice(&[0u8; 16]);
        g.bench_function("aes256gcm_seal_then_open", |b| {
            b.iter(|| {
                let n = work.len() - 16;
                let tag = s2.seal(b"header", &mut work[..n]);
                work[n..].copy_from_slice(&tag);
                o2.open(b"header", &mut work).unwrap()
            });
        });
        g.bench_function("xxh3_checksum", |b| b.iter(|| sluice_engine::digest::checksum(&data)));
        g.finish();
    }
}

criterion_group!(benches, codecs);
criterion_main!(benches);
