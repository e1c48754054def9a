//! The joiner's old data, set aside instead of deleted until the new data
//! is in place and synced (issue 11: a failed SST costs time, never data).
//!
//! Each entry the cleanup would delete is renamed into `.sst-old/` of its
//! own directory (the datadir, a special directory, the binary log
//! directory): the same filesystem, so it costs no space and no time. If
//! placing the new data fails, whatever was placed is removed and the old
//! entries are renamed back, leaving the directories as they were; once the
//! new data is in place, the old is deleted. A joiner killed half-way
//! leaves `.sst-old/` behind; the next SST finds it and puts it back before
//! anything else ([`recover`]).
//!
//! Renames never follow symlinks (they move the link itself), and nothing
//! here writes into a file.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The name of the directory that holds the old entries of its parent.
pub const ASIDE_DIR: &str = ".sst-old";

/// Old entries moved aside: (original path, where it is now).
#[derive(Debug, Default)]
pub struct Aside {
    moved: Vec<(PathBuf, PathBuf)>,
    holders: Vec<PathBuf>,
}

fn holder_of(p: &Path) -> io::Result<PathBuf> {
    let parent = p.parent().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{} has no parent", p.display())))?;
    Ok(parent.join(ASIDE_DIR))
}

impl Aside {
    /// Moves every path of `victims` (top-level entries of their
    /// directories) into `.sst-old/` beside it. On an error, what was moved
    /// is moved back before the error is returned.
    pub fn set(victims: &[PathBuf]) -> io::Result<Self> {
        let mut a = Self::default();
        for v in victims {
            // A special directory inside the datadir is listed both as an
            // entry of the datadir and through its own entries: moving the
            // directory moves them.
            if v.file_name().is_some_and(|n| n == ASIDE_DIR) || a.moved.iter().any(|(from, _)| v.starts_with(from)) {
                continue;
            }
            if let Err(e) = a.move_one(v) {
                let _ = a.put_back(&[]);
                return Err(io::Error::new(e.kind(), format!("setting {} aside: {e}", v.display())));
            }
        }
        Ok(a)
    }

    fn move_one(&mut self, v: &Path) -> io::Result<()> {
        let holder = holder_of(v)?;
        if !self.holders.contains(&holder) {
            match fs::create_dir(&holder) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && fs::symlink_metadata(&holder)?.is_dir() => {}
                Err(e) => return Err(e),
            }
            self.holders.push(holder.clone());
        }
        let to = holder.join(v.file_name().expect("a victim has a name"));
        fs::rename(v, &to)?;
        self.moved.push((v.to_path_buf(), to));
        Ok(())
    }

    /// How many entries are set aside.
    pub fn len(&self) -> usize {
        self.moved.len()
    }

    pub fn is_empty(&self) -> bool {
        self.moved.is_empty()
    }

    /// Puts the old entries back. `placed` lists what the new data put in
    /// their directories (it is removed first, without following symlinks).
    pub fn put_back(&mut self, placed: &[PathBuf]) -> io::Result<()> {
        for p in placed {
            if p.file_name().is_some_and(|n| n == ASIDE_DIR) {
                continue;
            }
            remove(p)?;
        }
        for (from, now) in self.moved.drain(..).rev() {
            if fs::symlink_metadata(&from).is_ok() {
                remove(&from)?;
            }
            fs::rename(&now, &from).map_err(|e| io::Error::new(e.kind(), format!("putting {} back: {e}", from.display())))?;
        }
        for h in self.holders.drain(..) {
            let _ = fs::remove_dir(&h);
        }
        Ok(())
    }

    /// Deletes the old entries: the new data is in place and durable.
    pub fn discard(mut self) -> io::Result<()> {
        self.moved.clear();
        for h in self.holders.drain(..) {
            remove(&h)?;
        }
        Ok(())
    }
}

/// Removes `p`, a file, symlink or directory tree (never following links).
fn remove(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
    .map_err(|e| io::Error::new(e.kind(), format!("removing {}: {e}", p.display())))
}

/// Puts back what an interrupted SST left in `.sst-old/` of each of `dirs`:
/// `placed(dir)` lists the entries of `dir` that are not old data (what the
/// interrupted SST had placed), which are removed first. Returns how many
/// entries came back.
pub fn recover(dirs: &[PathBuf], placed: impl Fn(&Path) -> io::Result<Vec<PathBuf>>) -> io::Result<usize> {
    let mut back = 0;
    for d in dirs {
        let holder = d.join(ASIDE_DIR);
        if !fs::symlink_metadata(&holder).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        let mut a = Aside { moved: Vec::new(), holders: vec![holder.clone()] };
        for e in fs::read_dir(&holder)? {
            let name = e?.file_name();
            a.moved.push((d.join(&name), holder.join(&name)));
        }
        back += a.moved.len();
        a.put_back(&placed(d)?)?;
    }
    Ok(back)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(root: &Path) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                let m = fs::symlink_metadata(&p).unwrap();
                if m.file_type().is_symlink() {
                    out.push((rel, fs::read_link(&p).unwrap().into_os_string().into_encoded_bytes()));
                } else if m.is_dir() {
                    out.push((rel, b"<dir>".to_vec()));
                    stack.push(p);
                } else {
                    out.push((rel, fs::read(&p).unwrap()));
                }
            }
        }
        out.sort();
        out
    }

    fn old_datadir(d: &Path) {
        fs::create_dir_all(d.join("db")).unwrap();
        fs::write(d.join("ibdata1"), b"old system").unwrap();
        fs::write(d.join("db/t.ibd"), b"old table").unwrap();
        fs::write(d.join("grastate.dat"), b"kept").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.join("link")).unwrap();
    }

    #[test]
    fn a_failed_placement_puts_the_old_tree_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("data");
        old_datadir(&d);
        let before = tree(&d);
        let victims = vec![d.join("ibdata1"), d.join("db"), d.join("link")];
        let mut a = Aside::set(&victims).unwrap();
        assert_eq!(a.len(), 3);
        assert!(!d.join("ibdata1").exists() && d.join(ASIDE_DIR).join("db/t.ibd").exists());
        // The new data arrives half-way, then placing it fails.
        fs::write(d.join("ibdata1"), b"new system").unwrap();
        fs::create_dir(d.join("newdb")).unwrap();
        a.put_back(&[d.join("ibdata1"), d.join("newdb")]).unwrap();
        assert_eq!(tree(&d), before, "the old datadir must come back byte-identical");
        assert_eq!(fs::read_link(d.join("link")).unwrap(), Path::new("/etc/passwd"));
    }

    #[test]
    fn a_directory_and_its_own_entries_are_set_aside_once() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("data");
        old_datadir(&d);
        fs::create_dir(d.join("undo")).unwrap();
        fs::write(d.join("undo/undo001"), b"undo").unwrap();
        let before = tree(&d);
        let mut victims = vec![d.join("ibdata1"), d.join("undo"), d.join("undo/undo001")];
        victims.sort();
        let mut a = Aside::set(&victims).unwrap();
        assert_eq!(a.len(), 2);
        a.put_back(&[]).unwrap();
        assert_eq!(tree(&d), before);
    }

    #[test]
    fn success_discards_the_old_and_an_interrupted_sst_is_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("data");
        old_datadir(&d);
        let a = Aside::set(&[d.join("ibdata1"), d.join("db")]).unwrap();
        fs::write(d.join("ibdata1"), b"new").unwrap();
        a.discard().unwrap();
        assert!(!d.join(ASIDE_DIR).exists());
        assert_eq!(fs::read(d.join("ibdata1")).unwrap(), b"new");

        // Killed half-way: .sst-old holds the old entries, new ones sit in
        // the datadir; the next start puts the old back.
        let d2 = dir.path().join("data2");
        old_datadir(&d2);
        let before = tree(&d2);
        let a = Aside::set(&[d2.join("ibdata1"), d2.join("db")]).unwrap();
        std::mem::forget(a);
        fs::write(d2.join("ibdata1"), b"half new").unwrap();
        let n = recover(std::slice::from_ref(&d2), |dir| Ok(vec![dir.join("ibdata1")])).unwrap();
        assert_eq!(n, 2);
        assert_eq!(tree(&d2), before);
    }
}
