//! Generated sample data: a MariaDB-like data directory for the demo, and
//! the perf corpus (one big mixed file plus many small files).
//!
//! Content is "mixed" the way real tablespaces are: 16 KiB pages that
//! alternate between repetitive row-like text and random bytes, so
//! compression has something to do and something it cannot do.

use std::fs::{self, File};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

const PAGE: usize = 16 << 10;

/// Deterministic page generator (xorshift64*).
pub struct Pages {
    state: u64,
    page: u64,
}

impl Pages {
    pub fn new(seed: u64) -> Self {
        Self { state: seed | 1, page: 0 }
    }

    fn next_u64(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Fills `buf` (a multiple of 8 bytes) with the next page's worth of
    /// data: even pages text-like, odd pages random.
    pub fn fill(&mut self, buf: &mut [u8]) {
        if self.page % 2 == 0 {
            let mut i = 0;
            while i < buf.len() {
                let row =
                    format!("row {:>10} | status=active | region=eu-west | note=lorem ipsum dolor sit amet\n", self.next_u64() % 1_000_000);
                let n = row.len().min(buf.len() - i);
                buf[i..i + n].copy_from_slice(&row.as_bytes()[..n]);
                i += n;
            }
        } else {
            for chunk in buf.chunks_mut(8) {
                let v = self.next_u64().to_le_bytes();
                chunk.copy_from_slice(&v[..chunk.len()]);
            }
        }
        self.page += 1;
    }
}

/// Writes `bytes` of mixed pages to `path`.
pub fn write_mixed(path: &Path, bytes: u64, seed: u64) -> io::Result<()> {
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let mut pages = Pages::new(seed);
    let mut buf = vec![0u8; PAGE];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(PAGE as u64) as usize;
        pages.fill(&mut buf[..n]);
        w.write_all(&buf[..n])?;
        left -= n as u64;
    }
    w.into_inner().map_err(io::IntoInnerError::into_error)?.sync_all()
}

/// A small MariaDB-like datadir of about `mib` MiB: a system tablespace, a
/// sparse redo log, a few databases with tablespaces of assorted sizes, an
/// empty file, an empty directory and a symlink.
pub fn datadir(root: &Path, mib: u64) -> io::Result<()> {
    fs::create_dir_all(root)?;
    let total = mib << 20;
    write_mixed(&root.join("ibdata1"), total / 5, 1)?;
    // A redo log with data at both ends and a hole in between.
    let mut log = File::create(root.join("ib_logfile0"))?;
    let mut pages = Pages::new(2);
    let mut buf = vec![0u8; 1 << 20];
    pages.fill(&mut buf);
    log.write_all(&buf)?;
    log.seek(SeekFrom::Start((total / 5).max(8 << 20)))?;
    log.write_all(&buf)?;
    drop(log);
    fs::write(root.join("aria_log_control"), b"")?;
    fs::write(
        root.join("grastate.dat"),
        b"# GALERA saved state\nversion: 2.1\nuuid: 00000000-0000-0000-0000-000000000000\nseqno: -1\nsafe_to_bootstrap: 0\n",
    )?;
    fs::create_dir_all(root.join("mysql"))?;
    for i in 0..40 {
        write_mixed(&root.join(format!("mysql/table_{i}.frm")), 4096 + i * 997, 100 + i)?;
    }
    let mut seed = 1000;
    let mut left = total - total / 5;
    for db in ["shop", "analytics", "données utilisateurs"] {
        let dir = root.join(db);
        fs::create_dir_all(&dir)?;
        for t in 0..6u64 {
            let size = (left / 4).max(64 << 10).min(left);
            if size == 0 {
                break;
            }
            write_mixed(&dir.join(format!("t{t}.ibd")), size, seed)?;
            seed += 1;
            left -= size;
        }
    }
    fs::create_dir_all(root.join("empty_db"))?;
    std::os::unix::fs::symlink("shop/t0.ibd", root.join("shop_t0_link"))?;
    Ok(())
}

/// The perf corpus: `big_mib` MiB in one mixed file, and `small` files of
/// 4–64 KiB spread over 100 directories.
pub fn corpus(root: &Path, big_mib: u64, small: u64) -> io::Result<()> {
    fs::create_dir_all(root.join("big"))?;
    if big_mib > 0 {
        write_mixed(&root.join("big/mixed.bin"), big_mib << 20, 7)?;
    }
    let mut pages = Pages::new(99);
    let mut buf = vec![0u8; 64 << 10];
    for i in 0..small {
        let dir = root.join(format!("small/d{:03}", i % 100));
        if i < 100 {
            fs::create_dir_all(&dir)?;
        }
        let size = 4096 + (pages.next_u64() % (60 << 10)) as usize;
        pages.fill(&mut buf[..size]);
        fs::write(dir.join(format!("f{i:06}.dat")), &buf[..size])?;
    }
    Ok(())
}
