//! Loopback transfer of a 1 GiB file through the whole engine, per I/O
//! backend pair (sending method / receiving method), 2 streams.
//!
//! Source and destination live on tmpfs (`/dev/shm`, or `SLUICE_BENCH_DIR`)
//! so the numbers compare data paths, not disk writeback. The receiver's
//! syncfs still runs on every iteration. Reports throughput; never fails on
//! a timing.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice_engine::{IoMode, ReceiveConfig, Receiver, SendConfig};

const SIZE: u64 = 1 << 30;

fn bench_dir() -> PathBuf {
    let base = std::env::var_os("SLUICE_BENCH_DIR").map_or_else(|| PathBuf::from("/dev/shm"), PathBuf::from);
    let d = base.join(format!("sluice-bench-{}", std::process::id()));
    std::fs::create_dir_all(d.join("src")).expect("bench dir");
    d
}

fn make_source(dir: &Path) {
    let mut f = std::fs::File::create(dir.join("src/one-gib.bin")).unwrap();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let block: Vec<u8> = (0..1 << 20)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if i % 2 == 0 { x as u8 } else { b'a' + (i % 26) as u8 }
        })
        .collect();
    for _ in 0..SIZE >> 20 {
        f.write_all(&block).unwrap();
    }
}

fn transfer(src: &Path, dest: &Path, send: IoMode, recv: IoMode) {
    let r = Receiver::bind("127.0.0.1:0", ReceiveConfig { io: recv, ..ReceiveConfig::default() }).unwrap();
    let addr = r.local_addr().unwrap().to_string();
    let token = r.token().clone();
    let d = dest.to_path_buf();
    let h = std::thread::spawn(move || r.run(&d));
    let cfg = SendConfig { streams: 2, io: send, ..SendConfig::default() };
    sluice_engine::send(&addr, &token, &[src.to_path_buf()], &cfg).unwrap();
    h.join().unwrap().unwrap();
}

fn transfers(c: &mut Criterion) {
    let dir = bench_dir();
    make_source(&dir);
    let mut pairs = vec![
        (IoMode::Copy, IoMode::Copy),
        (IoMode::Splice, IoMode::Splice),
        (IoMode::Splice, IoMode::Copy),
        (IoMode::Copy, IoMode::Splice),
    ];
    if sluice_engine::backend::uring_available().is_ok() {
        pairs.extend([(IoMode::Uring, IoMode::Uring), (IoMode::Uring, IoMode::Copy), (IoMode::Copy, IoMode::Uring)]);
    } else {
        eprintln!("io_uring unavailable: uring pairs skipped");
    }
    let mut g = c.benchmark_group("loopback_1gib");
    g.throughput(Throughput::Bytes(SIZE)).sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(8));
    for (send, recv) in pairs {
        let name = format!("{send:?}->{recv:?}").to_lowercase();
        let mut n = 0;
        g.bench_function(&name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    n += 1;
                    let dest = dir.join(format!("dest-{n}"));
                    let t = Instant::now();
                    transfer(&dir.join("src"), &dest, send, recv);
                    total += t.elapsed();
                    std::fs::remove_dir_all(&dest).unwrap();
                }
                total
            });
        });
    }
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, transfers);
criterion_main!(benches);
