//! Block fingerprints of a joiner's old datadir, for delta SST (issue 13):
//! BLAKE3-256 of every 16 KiB page — InnoDB's page size, the finest unit it
//! writes — chosen by measurement (perf/RESULTS.md: 7.6 GiB/s per core on
//! 16 KiB blocks against 1.8 for SHA-256 with SHA-NI), and a collision as
//! unlikely as the hash is strong.
//!
//! A file is read 1 MiB at a time, so memory stays bounded whatever its
//! size; it is opened beneath the datadir's descriptor without following
//! any symlink (root reads a tree the mysql user can write). What to do
//! with the fingerprints — serve them, compare them — is the caller's.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;

use crate::backend::sys::{self, RESOLVE_CONFINED};

/// Bytes per fingerprinted block: one InnoDB page.
pub const PAGE: usize = 16 << 10;

/// Bytes read at a time.
const READ: usize = 1 << 20;

/// The fingerprint of one block.
pub type Fingerprint = [u8; 32];

/// Opens the regular file `rel` beneath the directory `root` for reading:
/// never through a symlink, never outside `root`.
pub fn open(root: impl AsFd, rel: &[u8]) -> io::Result<File> {
    let path = CString::new(rel).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))?;
    let file = File::from(sys::openat2(root, &path, libc::O_RDONLY | libc::O_CLOEXEC, 0, RESOLVE_CONFINED)?);
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
    }
    Ok(file)
}

/// The fingerprint of one block.
pub fn of(block: &[u8]) -> Fingerprint {
    *blake3::hash(block).as_bytes()
}

/// Fingerprints every [`PAGE`] of `file` from its start, in order (the last
/// may be shorter), handing each to `each` with its offset; returns the
/// bytes read. A file that grows or shrinks meanwhile is fingerprinted as
/// far as it is read: the donor compares, so a stale fingerprint costs a
/// block sent, never a wrong one kept.
pub fn pages(file: &File, mut each: impl FnMut(u64, Fingerprint)) -> io::Result<u64> {
    pages_until(file, 0, u64::MAX, |at, f| {
        each(at, f);
        true
    })
}

/// [`pages`] from byte `from` (a page boundary) up to `limit` (rounded
/// up to a read), until `each` returns `false`.
pub fn pages_until(file: &File, from: u64, limit: u64, mut each: impl FnMut(u64, Fingerprint) -> bool) -> io::Result<u64> {
    let mut buf = vec![0u8; READ];
    let mut at = from;
    loop {
        if at >= limit {
            return Ok(at);
        }
        let mut n = 0;
        while n < READ {
            match file.read_at(&mut buf[n..], at + n as u64) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        for (i, page) in buf[..n].chunks(PAGE).enumerate() {
            if !each(at + (i * PAGE) as u64, of(page)) {
                return Ok(at + n as u64);
            }
        }
        at += n as u64;
        if n < READ {
            return Ok(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_is_fingerprinted_in_order_across_reads_and_a_short_tail() {
        let dir = tempfile::tempdir().unwrap();
        let len = 2 * READ + 5 * PAGE + 100;
        let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        std::fs::write(dir.path().join("ibdata1"), &data).unwrap();
        let root = File::open(dir.path()).unwrap();
        let mut got = Vec::new();
        let read = pages(&open(&root, b"ibdata1").unwrap(), |at, f| got.push((at, f))).unwrap();
        assert_eq!(read, len as u64);
        let want: Vec<(u64, Fingerprint)> = data.chunks(PAGE).enumerate().map(|(i, p)| ((i * PAGE) as u64, of(p))).collect();
        assert_eq!(got, want);
        assert_eq!(got.len(), 2 * READ / PAGE + 6, "the 100-byte tail is a page of its own");
        assert_ne!(got[0].1, got[1].1);
    }

    #[test]
    fn symlinks_and_escapes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::NamedTempFile::new().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link.ibd")).unwrap();
        std::fs::create_dir(dir.path().join("db")).unwrap();
        let root = File::open(dir.path()).unwrap();
        assert!(open(&root, b"link.ibd").is_err(), "a symlink was followed");
        assert!(open(&root, b"../x").is_err(), "a path left the root");
        let e = open(&root, b"db").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "a directory is not fingerprinted: {e}");
    }
}
