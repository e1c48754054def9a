//! Candidate block fingerprints for delta SST (issue 13): a joiner hashes
//! every block of its old datadir, and a collision must be as unlikely as
//! a cryptographic one, so the candidates are BLAKE3, SHA-256 and
//! SHA-512/256 (aws-lc-rs, with the CPU's SHA extensions where it has
//! them); xxh3-128 is listed for scale only (not collision-resistant
//! against crafted pages). Each hashes 64 MiB of mixed data (16 KiB pages
//! alternating row-like text and random bytes) in blocks of 16 KiB (one
//! InnoDB page) to 1 MiB, one core. Throughput in hashed bytes; reports,
//! never fails.

mod common;

use aws_lc_rs::digest::{SHA256, SHA512_256, digest};
use common::mixed;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn fingerprints(c: &mut Criterion) {
    let data = mixed(64 << 20);
    for block in [16usize << 10, 64 << 10, 256 << 10, 1 << 20] {
        let mut g = c.benchmark_group(format!("fingerprint_{}k", block >> 10));
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.sample_size(10);
        g.bench_function(BenchmarkId::from_parameter("blake3"), |b| {
            b.iter(|| data.chunks(block).fold(0u8, |a, c| a ^ blake3::hash(c).as_bytes()[0]));
        });
        g.bench_function(BenchmarkId::from_parameter("sha256"), |b| {
            b.iter(|| data.chunks(block).fold(0u8, |a, c| a ^ digest(&SHA256, c).as_ref()[0]));
        });
        g.bench_function(BenchmarkId::from_parameter("sha512_256"), |b| {
            b.iter(|| data.chunks(block).fold(0u8, |a, c| a ^ digest(&SHA512_256, c).as_ref()[0]));
        });
        g.bench_function(BenchmarkId::from_parameter("xxh3_128 (not cryptographic)"), |b| {
            b.iter(|| data.chunks(block).fold(0u8, |a, c| a ^ (xxhash_rust::xxh3::xxh3_128(c) as u8)));
        });
        g.finish();
    }
}

criterion_group!(benches, fingerprints);
criterion_main!(benches);
