//! Stand-ins for a delta transfer's renamed files (issue 13): a file of
//! the new tree that the old copy does not hold at its path is compared
//! with, and assembled from, an old file the new tree no longer names —
//! in the same directory, with the same extension, of a similar size (a
//! table renamed with `RENAME TABLE a TO b` is `a.ibd` in the joiner's old
//! datadir and `b.ibd` in the donor's). Each old file stands in for at
//! most one new one.
//!
//! Only a manifest session knows every new path up front, so only there
//! (copy-mode SST, the CLI with a base directory) are stand-ins found.
//! Correctness never rests on the pairing: the receiver checks every
//! reference's bytes against the sender's checksum, so a poor stand-in
//! costs blocks sent, never a wrong byte kept.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};

use crate::backend::sys::{self, RESOLVE_CONFINED};
use crate::manifest::{Entry, EntryKind};

/// Most old files looked at as candidates, all directories together: the
/// search stays cheap in a directory of many thousand tables.
pub const MAX_CANDIDATES: usize = 4096;

/// A new file id's stand-in: the old file's path beneath the old copy.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Standins(HashMap<u32, Vec<u8>>);

impl Standins {
    /// Where file `id`'s old copy is: its stand-in, or its own `path`.
    pub fn old_path<'a>(&'a self, id: u32, path: &'a [u8]) -> &'a [u8] {
        self.0.get(&id).map_or(path, Vec::as_slice)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A path's directory part (empty at the top) and extension (after the
/// last dot of its last component; empty without one).
fn split(path: &[u8]) -> (&[u8], &[u8]) {
    let (dir, name) = match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&path[..0], path),
    };
    let ext = name.iter().rposition(|&b| b == b'.').map_or(&name[..0], |i| &name[i + 1..]);
    (dir, ext)
}

/// Pairs each `missing` new file (id, path, size) with one of the
/// `orphans` (old path, size) of its directory and extension within a
/// factor of two in size: the closest pairs first (a renamed table keeps
/// its size to the byte until it is written to), each orphan used once.
pub fn pair(missing: &[(u32, Vec<u8>, u64)], orphans: &[(Vec<u8>, u64)]) -> Standins {
    let mut by_kind: HashMap<(&[u8], &[u8]), Vec<usize>> = HashMap::new();
    for (i, (path, _)) in orphans.iter().enumerate() {
        by_kind.entry(split(path)).or_default().push(i);
    }
    let similar = |a: u64, b: u64| a.saturating_mul(2) >= b && b.saturating_mul(2) >= a;
    // Every candidate pair: (size difference, new id, orphan).
    let mut pairs: Vec<(u64, u32, usize)> = Vec::new();
    for (id, path, size) in missing {
        for &o in by_kind.get(&split(path)).map_or(&[][..], Vec::as_slice) {
            if similar(*size, orphans[o].1) {
                pairs.push((size.abs_diff(orphans[o].1), *id, o));
                if pairs.len() >= MAX_CANDIDATES * 4 {
                    break;
                }
            }
        }
    }
    pairs.sort_unstable();
    let (mut taken, mut used) = (HashMap::new(), HashSet::new());
    for (_, id, o) in pairs {
        if !taken.contains_key(&id) && used.insert(o) {
            taken.insert(id, orphans[o].0.clone());
        }
    }
    Standins(taken)
}

/// Finds stand-ins beneath `root` (the old copy, read without following
/// any symlink) for the regular files of `entries` that it does not hold
/// at their own path. Best effort: what cannot be read is no candidate.
pub fn find(root: impl AsFd, entries: &[Entry]) -> Standins {
    let root = root.as_fd();
    let named: HashSet<&[u8]> = entries.iter().map(|e| e.path.as_slice()).collect();
    let exists = |rel: &[u8]| crate::fingerprint::open(root, rel).is_ok();
    let missing: Vec<(u32, Vec<u8>, u64)> = entries
        .iter()
        .filter(|e| e.kind == EntryKind::File && e.data_bytes() > 0 && !exists(&e.path))
        .map(|e| (e.id, e.path.clone(), e.size))
        .collect();
    if missing.is_empty() {
        return Standins::default();
    }
    let wanted: HashSet<(&[u8], &[u8])> = missing.iter().map(|(_, p, _)| split(p)).collect();
    let dirs: HashSet<&[u8]> = wanted.iter().map(|(d, _)| *d).collect();
    let mut orphans = Vec::new();
    let mut looked = 0;
    for dir in dirs {
        let Some(names) = list(root, dir) else { continue };
        for name in names {
            let rel = if dir.is_empty() { name } else { [dir, b"/", &name].concat() };
            if named.contains(rel.as_slice()) || !wanted.contains(&split(&rel)) {
                continue;
            }
            looked += 1;
            if looked > MAX_CANDIDATES {
                break;
            }
            if let Ok(f) = crate::fingerprint::open(root, &rel) {
                let size = f.metadata().map_or(0, |m| m.len());
                if size > 0 {
                    orphans.push((rel, size));
                }
            }
        }
    }
    pair(&missing, &orphans)
}

/// The names in directory `dir` beneath `root` (`None`: not a directory
/// there, or unreadable), opened without following any symlink.
fn list(root: impl AsFd, dir: &[u8]) -> Option<Vec<Vec<u8>>> {
    use std::os::unix::ffi::OsStrExt;
    let rel = CString::new(if dir.is_empty() { b".".to_vec() } else { dir.to_vec() }).ok()?;
    let fd = File::from(sys::openat2(root, &rel, libc::O_DIRECTORY | libc::O_RDONLY | libc::O_CLOEXEC, 0, RESOLVE_CONFINED).ok()?);
    let names = std::fs::read_dir(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
    Some(names.filter_map(|n| Some(n.ok()?.file_name().as_bytes().to_vec())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: u32, p: &str, size: u64) -> (u32, Vec<u8>, u64) {
        (id, p.as_bytes().to_vec(), size)
    }
    fn o(p: &str, size: u64) -> (Vec<u8>, u64) {
        (p.as_bytes().to_vec(), size)
    }

    #[test]
    fn a_renamed_table_pairs_with_the_orphan_of_its_directory_extension_and_size() {
        let s = pair(
            &[m(1, "db/b.ibd", 1000), m(2, "db/b.frm", 10), m(3, "other/c.ibd", 1000), m(4, "db/huge.ibd", 100_000)],
            &[o("db/a.ibd", 900), o("db/z.ibd", 5000), o("db/a.frm", 12), o("db2/c.ibd", 1000)],
        );
        assert_eq!(s.old_path(1, b"db/b.ibd"), b"db/a.ibd", "the closest size");
        assert_eq!(s.old_path(2, b"db/b.frm"), b"db/a.frm", "same extension");
        assert_eq!(s.old_path(3, b"other/c.ibd"), b"other/c.ibd", "not across directories");
        assert_eq!(s.old_path(4, b"db/huge.ibd"), b"db/huge.ibd", "not 20x smaller");
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn each_orphan_stands_in_once_the_closest_pairs_first() {
        let s = pair(&[m(1, "t1.ibd", 100), m(2, "t2.ibd", 190)], &[o("old.ibd", 180)]);
        assert_eq!(s.old_path(2, b"t2.ibd"), b"old.ibd");
        assert_eq!(s.old_path(1, b"t1.ibd"), b"t1.ibd");
        // A larger new file does not take the orphan that is another's size exactly.
        let s = pair(&[m(1, "t5.ibd", 1000), m(2, "t8.ibd", 1030)], &[o("t5-old.ibd", 1000)]);
        assert_eq!((s.old_path(1, b"t5.ibd"), s.len()), (&b"t5-old.ibd"[..], 1));
        assert_eq!(split(b"top"), (&b""[..], &b""[..]));
        assert_eq!(split(b"a.b/c"), (&b"a.b"[..], &b""[..]));
    }

    #[test]
    fn find_reads_the_old_copy_beneath_its_root_only() {
        use std::os::unix::fs::symlink;
        let old = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(old.path().join("db")).unwrap();
        std::fs::write(old.path().join("db/a.ibd"), vec![7u8; 4096]).unwrap();
        std::fs::write(old.path().join("db/kept.ibd"), vec![1u8; 4096]).unwrap();
        std::fs::write(outside.path().join("secret.ibd"), vec![9u8; 4096]).unwrap();
        symlink(outside.path().join("secret.ibd"), old.path().join("db/link.ibd")).unwrap();
        symlink(outside.path(), old.path().join("elsewhere")).unwrap();
        let entry = |id: u32, p: &str| Entry::new(id, EntryKind::File, p.as_bytes(), 4096);
        let entries = vec![entry(0, "db/b.ibd"), entry(1, "db/kept.ibd"), entry(2, "elsewhere/x.ibd"), entry(3, "db/c.ibd")];
        let root = File::open(old.path()).unwrap();
        let s = find(&root, &entries);
        assert_eq!(s.old_path(0, b"db/b.ibd"), b"db/a.ibd");
        assert_eq!(s.old_path(3, b"db/c.ibd"), b"db/c.ibd", "a symlink is no candidate, and a.ibd is taken");
        assert_eq!(s.old_path(2, b"elsewhere/x.ibd"), b"elsewhere/x.ibd", "never through a symlinked directory");
        assert_eq!(s.len(), 1);
    }
}
