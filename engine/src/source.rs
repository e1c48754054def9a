//! The sender's side of the tree: walks the paths to send and builds the
//! manifest, including the data extents of sparse files.
//!
//! A directory argument contributes its contents (like `cp -a dir/. dest`);
//! a file or symlink argument contributes itself under its own name. Device
//! nodes, FIFOs and sockets are skipped with a warning.

use std::fs::{self, File, Metadata};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::backend::sys;
use crate::manifest::{Entry, EntryKind, Extent, coalesce_extents, validate_rel_path};
use crate::wire::{MAX_ENTRIES, MAX_EXTENTS, MAX_PATH};
use crate::{Error, Result};

/// The manifest plus where each entry lives on the local disk.
#[derive(Debug, Default)]
pub struct SourceTree {
    pub entries: Vec<Entry>,
    /// Local path of each entry, indexed by entry id.
    pub paths: Vec<PathBuf>,
    /// (device, inode) of each entry as scanned: a file is sent only if
    /// the path still leads to that very file (SECURITY.md F9).
    pub inodes: Vec<(u64, u64)>,
}

/// Opens the regular file at `path` for reading, never through a symlink
/// in its last component, and only if it is still the file `(dev, ino)`
/// that was scanned: whoever owns the tree may swap entries between the
/// scan and the send, and a root sender must not then read a file they
/// could not (SECURITY.md F9).
pub fn open_checked(path: &Path, (dev, ino): (u64, u64)) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path).map_err(|e| {
        match e.raw_os_error() {
            Some(libc::ELOOP) => Error::Config(format!("{} became a symlink after it was scanned; refusing to follow it", path.display())),
            _ => Error::io(format!("opening {}", path.display()), e),
        }
    })?;
    let m = f.metadata().map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    if !m.is_file() || (m.dev(), m.ino()) != (dev, ino) {
        return Err(Error::Config(format!(
            "{} was replaced by another file after it was scanned; refusing to send it (re-run the transfer)",
            path.display()
        )));
    }
    Ok(f)
}

impl SourceTree {
    /// Opens entry `id` (a regular file) as scanned; see [`open_checked`].
    pub fn open(&self, id: u32) -> Result<File> {
        open_checked(&self.paths[id as usize], self.inodes[id as usize])
    }

    /// Data bytes (holes excluded) of the whole tree.
    pub fn data_bytes(&self) -> u64 {
        self.entries.iter().map(Entry::data_bytes).sum()
    }
}

/// Walks `roots` and builds the manifest.
pub fn scan(roots: &[PathBuf]) -> Result<SourceTree> {
    if roots.is_empty() {
        return Err(Error::Config("nothing to send: give at least one file or directory".into()));
    }
    let mut tree = SourceTree::default();
    let mut seen = std::collections::HashSet::new();
    for root in roots {
        let meta = fs::symlink_metadata(root).map_err(|e| Error::io(format!("reading {}", root.display()), e))?;
        if meta.is_dir() {
            walk_dir(&mut tree, &mut seen, root, &[])?;
        } else {
            let name = root.file_name().ok_or_else(|| Error::Config(format!("{} has no file name to send it under", root.display())))?;
            add(&mut tree, &mut seen, root, name.as_bytes().to_vec(), &meta)?;
        }
    }
    Ok(tree)
}

/// One local directory or file and the name it is sent under (an empty
/// name merges a directory's contents into the top level, as [`scan`]
/// does with a directory argument).
#[derive(Debug, Clone)]
pub struct Mapping {
    pub local: PathBuf,
    pub name: Vec<u8>,
}

/// Builds a manifest from `maps`, leaving out every entry (and subtree)
/// whose relative path `skip` accepts.
pub fn scan_mapped(maps: &[Mapping], skip: &dyn Fn(&[u8]) -> bool) -> Result<SourceTree> {
    let mut tree = SourceTree::default();
    let mut seen = std::collections::HashSet::new();
    for m in maps {
        let meta = fs::symlink_metadata(&m.local).map_err(|e| Error::io(format!("reading {}", m.local.display()), e))?;
        if !m.name.is_empty() {
            if skip(&m.name) || !add(&mut tree, &mut seen, &m.local, m.name.clone(), &meta)? {
                continue;
            }
        } else if !meta.is_dir() {
            return Err(Error::Config(format!("{} is not a directory to merge", m.local.display())));
        }
        if meta.is_dir() {
            walk_filtered(&mut tree, &mut seen, &m.local, &m.name, skip)?;
        }
    }
    Ok(tree)
}

/// Iterative depth-first walk, so deep trees cannot overflow the stack.
/// Parents are always listed before their children.
fn walk_dir(tree: &mut SourceTree, seen: &mut std::collections::HashSet<Vec<u8>>, root: &Path, rel: &[u8]) -> Result<()> {
    walk_filtered(tree, seen, root, rel, &|_| false)
}

fn walk_filtered(
    tree: &mut SourceTree,
    seen: &mut std::collections::HashSet<Vec<u8>>,
    root: &Path,
    rel: &[u8],
    skip: &dyn Fn(&[u8]) -> bool,
) -> Result<()> {
    let mut stack = vec![(root.to_path_buf(), rel.to_vec())];
    while let Some((dir, rel)) = stack.pop() {
        let rd = fs::read_dir(&dir).map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
        let mut children: Vec<_> = rd
            .map(|r| r.map(|d| d.file_name()))
            .collect::<Result<_, _>>()
            .map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
        children.sort();
        let mut subdirs = Vec::new();
        for name in children {
            let path = dir.join(&name);
            let meta = fs::symlink_metadata(&path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
            let mut child_rel = rel.clone();
            if !child_rel.is_empty() {
                child_rel.push(b'/');
            }
            child_rel.extend_from_slice(name.as_bytes());
            if skip(&child_rel) {
                continue;
            }
            if add(tree, seen, &path, child_rel.clone(), &meta)? && meta.is_dir() {
                subdirs.push((path, child_rel));
            }
        }
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(())
}

/// Adds one entry; returns false if its type is skipped.
fn add(tree: &mut SourceTree, seen: &mut std::collections::HashSet<Vec<u8>>, path: &Path, rel: Vec<u8>, meta: &Metadata) -> Result<bool> {
    let ft = meta.file_type();
    let kind = if ft.is_dir() {
        EntryKind::Dir
    } else if ft.is_file() {
        EntryKind::File
    } else if ft.is_symlink() {
        EntryKind::Symlink
    } else {
        tracing::warn!(path = %path.display(), "skipping a special file (device, FIFO or socket)");
        return Ok(false);
    };
    validate_rel_path(&rel).map_err(|why| Error::Config(format!("cannot send {}: {why}", path.display())))?;
    if !seen.insert(rel.clone()) {
        return Err(Error::Config(format!(
            "two arguments both produce the path {:?}; send them separately",
            String::from_utf8_lossy(&rel)
        )));
    }
    if tree.entries.len() as u64 >= MAX_ENTRIES {
        return Err(Error::Config(format!("more than {MAX_ENTRIES} entries; split the transfer")));
    }
    let (size, extents, link_target) = match kind {
        EntryKind::File => (meta.len(), data_extents(path, meta)?, Vec::new()),
        EntryKind::Symlink => {
            let t = fs::read_link(path).map_err(|e| Error::io(format!("reading link {}", path.display()), e))?;
            let t = t.as_os_str().as_bytes().to_vec();
            if t.len() > MAX_PATH {
                return Err(Error::Config(format!("symlink {} has a target longer than {MAX_PATH} bytes", path.display())));
            }
            (0, Vec::new(), t)
        }
        EntryKind::Dir => (0, Vec::new(), Vec::new()),
    };
    tree.entries.push(Entry {
        id: tree.entries.len() as u32,
        kind,
        path: rel,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime_sec: meta.mtime(),
        mtime_nsec: meta.mtime_nsec() as u32,
        size,
        extents,
        link_target,
    });
    tree.paths.push(path.to_path_buf());
    tree.inodes.push((meta.dev(), meta.ino()));
    Ok(true)
}

/// The data extents of a regular file. Files whose allocation covers their
/// size are taken as one extent without probing; others are mapped with
/// SEEK_DATA/SEEK_HOLE, so holes are never read or sent.
fn data_extents(path: &Path, meta: &Metadata) -> Result<Vec<Extent>> {
    let size = meta.len();
    if size == 0 {
        return Ok(Vec::new());
    }
    let whole = vec![Extent { offset: 0, len: size }];
    if meta.blocks() * 512 >= size {
        return Ok(whole);
    }
    let f = open_checked(path, (meta.dev(), meta.ino()))?;
    let mut out = Vec::new();
    let mut off = 0u64;
    while off < size {
        let data = match sys::seek_data(&f, off) {
            Ok(Some(d)) if d < size => d,
            Ok(_) => break,
            // Filesystems without SEEK_DATA: send everything.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(whole),
            Err(e) => return Err(Error::io(format!("mapping holes of {}", path.display()), e)),
        };
        let hole =
            sys::seek_hole(&f, data).map_err(|e| Error::io(format!("mapping holes of {}", path.display()), e))?.unwrap_or(size).min(size);
        if hole <= data {
            break;
        }
        out.push(Extent { offset: data, len: hole - data });
        off = hole;
    }
    Ok(coalesce_extents(out, MAX_EXTENTS))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    #[test]
    fn scan_lists_parents_first_and_maps_holes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::write(root.join("a/b/small"), b"hello").unwrap();
        std::os::unix::fs::symlink("b/small", root.join("a/link")).unwrap();
        let mut f = File::create(root.join("sparse")).unwrap();
        f.seek(SeekFrom::Start(8 << 20)).unwrap();
        f.write_all(&[1u8; 4096]).unwrap();
        f.set_len(16 << 20).unwrap();
        drop(f);

        let tree = scan(std::slice::from_ref(&root)).unwrap();
        let paths: Vec<String> = tree.entries.iter().map(Entry::display_path).collect();
        assert_eq!(paths, ["a", "sparse", "a/b", "a/link", "a/b/small"]);
        let sparse = &tree.entries[1];
        assert_eq!(sparse.size, 16 << 20);
        assert_eq!(sparse.data_bytes(), 4096, "only the data extent is sent: {:?}", sparse.extents);
        assert_eq!(tree.entries[3].link_target, b"b/small");

        let single = scan(&[root.join("a/b/small")]).unwrap();
        assert_eq!(single.entries[0].path, b"small");
        assert!(scan(&[root.join("a/b"), root.join("a/b")]).is_err());
    }
}
