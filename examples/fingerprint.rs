//! Fingerprints every regular file under a directory (an old datadir) the
//! way a delta-SST joiner will (issue 13): BLAKE3 per 16 KiB page, files
//! opened beneath the root without following symlinks, on THREADS threads
//! (default 1). Reports bytes, pages, seconds and GiB/s. Drop the page cache
//! first (`echo 3 > /proc/sys/vm/drop_caches`) for a cold figure.
//!
//! Usage: `cargo run --release --example fingerprint -- DIR`

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use sluice_engine::fingerprint;

fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
    let Ok(dir) = std::fs::read_dir(root.join(rel)) else { return };
    for e in dir.flatten() {
        let Ok(t) = e.file_type() else { continue };
        let r = rel.join(e.file_name());
        if t.is_dir() {
            walk(root, &r, out);
        } else if t.is_file() {
            out.push(r);
        }
    }
}

fn main() {
    let root = PathBuf::from(std::env::args().nth(1).expect("usage: fingerprint DIR"));
    let threads: usize = std::env::var("THREADS").ok().and_then(|t| t.parse().ok()).unwrap_or(1);
    let mut files = Vec::new();
    walk(&root, Path::new(""), &mut files);
    let dir = File::open(&root).expect("the root directory");
    let queue = Mutex::new(files.into_iter());
    let (bytes, pages) = (AtomicU64::new(0), AtomicU64::new(0));
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let Some(rel) = queue.lock().unwrap().next() else { return };
                    let Ok(f) = fingerprint::open(&dir, rel.as_os_str().as_encoded_bytes()) else { continue };
                    let mut n = 0;
                    if let Ok(b) = fingerprint::pages(&f, |_, _| n += 1) {
                        bytes.fetch_add(b, Ordering::Relaxed);
                        pages.fetch_add(n, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let secs = t.elapsed().as_secs_f64();
    let b = bytes.load(Ordering::Relaxed);
    println!(
        "{} MiB in {} pages, {threads} thread(s): {secs:.2} s, {:.2} GiB/s",
        b >> 20,
        pages.load(Ordering::Relaxed),
        b as f64 / f64::from(1u32 << 30) / secs
    );
}
