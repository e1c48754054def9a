//! Independent comparison of two trees: kinds, contents, sizes, holes,
//! permission bits, mtimes and symlink targets.
//!
//! It does not trust the engine's own checks: `sluice demo`, the tests and
//! the perf scripts use it to prove that a copy is identical.

use std::fs::{self, File};
use std::io::{BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Returns a description of the first difference, or `Ok(n)` with the
/// number of entries compared. Setuid/setgid bits are ignored (the receiver
/// drops them on purpose); directory mtimes and modes are compared too.
pub fn compare(a: &Path, b: &Path) -> Result<u64, String> {
    let mut n = 0;
    let mut stack = vec![std::path::PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let names = |root: &Path| -> Result<Vec<_>, String> {
            let mut v: Vec<_> = fs::read_dir(root.join(&rel))
                .map_err(|e| format!("listing {}: {e}", root.join(&rel).display()))?
                .filter_map(|d| d.ok().map(|d| d.file_name()))
                .filter(|name| name != crate::manifest::INCOMPLETE_MARKER || !rel.as_os_str().is_empty())
                .collect();
            v.sort();
            Ok(v)
        };
        let (na, nb) = (names(a)?, names(b)?);
        if na != nb {
            return Err(format!("{}: entries differ: {na:?} vs {nb:?}", rel.display()));
        }
        for name in na {
            let r = rel.join(&name);
            let (pa, pb) = (a.join(&r), b.join(&r));
            let (ma, mb) = (fs::symlink_metadata(&pa).map_err(|e| e.to_string())?, fs::symlink_metadata(&pb).map_err(|e| e.to_string())?);
            let show = r.display();
            if ma.file_type() != mb.file_type() {
                return Err(format!("{show}: kinds differ"));
            }
            if ma.file_type().is_symlink() {
                if fs::read_link(&pa).ok() != fs::read_link(&pb).ok() {
                    return Err(format!("{show}: symlink targets differ"));
                }
            } else {
                if ma.mode() & 0o1777 != mb.mode() & 0o1777 {
                    return Err(format!("{show}: modes differ ({:o} vs {:o})", ma.mode() & 0o7777, mb.mode() & 0o7777));
                }
                if (ma.mtime(), ma.mtime_nsec()) != (mb.mtime(), mb.mtime_nsec()) {
                    return Err(format!("{show}: mtimes differ"));
                }
            }
            if ma.is_file() {
                if ma.len() != mb.len() {
                    return Err(format!("{show}: sizes differ ({} vs {})", ma.len(), mb.len()));
                }
                if mb.blocks() > ma.blocks() + 64 {
                    return Err(format!("{show}: holes were filled ({} vs {} blocks)", ma.blocks(), mb.blocks()));
                }
                same_content(&pa, &pb).map_err(|e| format!("{show}: {e}"))?;
            }
            if ma.is_dir() {
                stack.push(r.clone());
            }
            n += 1;
        }
    }
    Ok(n)
}

fn same_content(a: &Path, b: &Path) -> Result<(), String> {
    let open = |p: &Path| File::open(p).map(|f| BufReader::with_capacity(1 << 20, f)).map_err(|e| e.to_string());
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut off = 0u64;
    loop {
        let n = read_full(&mut fa, &mut ba)?;
        let m = read_full(&mut fb, &mut bb)?;
        if n != m || ba[..n] != bb[..m] {
            let i = ba[..n.min(m)].iter().zip(&bb[..n.min(m)]).position(|(x, y)| x != y).unwrap_or(n.min(m));
            return Err(format!("contents differ at byte {}", off + i as u64));
        }
        if n == 0 {
            return Ok(());
        }
        off += n as u64;
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> Result<usize, String> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(n)
}
