//! What a process must undo when it is stopped by a signal (SECURITY.md
//! F13): the helper processes it started (mariadb-backup, filters) and the
//! temporary directories it made. A process-wide registry: whoever starts a
//! child or makes a directory registers it and unregisters it when done;
//! [`run`] (called from the binary's signal handler thread) kills and reaps
//! every registered child and removes every registered directory.
//!
//! Directories are removed with `remove_dir_all`, which does not follow
//! symlinks inside the tree; they are this process's own mode-0700
//! directories with random names ([`private_dir`]).

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::backend::sys;

/// What a process says before it goes: a sender tells its receiver that it
/// was stopped (ABORT), so the receiver fails at once instead of waiting
/// for a reconnection that cannot come.
/// Its argument says why the process stops ("stopped by SIGTERM").
pub type Farewell = Arc<dyn Fn(&str) + Send + Sync>;

/// Children and directories to clean up, and farewells to say first.
#[derive(Default)]
pub struct Registry(Mutex<Lists>);

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let l = self.lists();
        f.debug_struct("Registry").field("children", &l.children).field("dirs", &l.dirs).field("farewells", &l.farewells.len()).finish()
    }
}

#[derive(Default)]
struct Lists {
    children: Vec<u32>,
    dirs: Vec<PathBuf>,
    farewells: Vec<(u64, Farewell)>,
    next: u64,
}

static GLOBAL: Registry = Registry(Mutex::new(Lists { children: Vec::new(), dirs: Vec::new(), farewells: Vec::new(), next: 0 }));

impl Registry {
    fn lists(&self) -> MutexGuard<'_, Lists> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn add_child(&self, pid: u32) {
        self.lists().children.push(pid);
    }

    pub fn remove_child(&self, pid: u32) {
        self.lists().children.retain(|p| *p != pid);
    }

    pub fn add_dir(&self, dir: &Path) {
        self.lists().dirs.push(dir.to_path_buf());
    }

    pub fn remove_dir(&self, dir: &Path) {
        self.lists().dirs.retain(|d| d != dir);
    }

    /// Registers a farewell; returns its id for [`remove_farewell`](Self::remove_farewell).
    pub fn add_farewell(&self, f: Farewell) -> u64 {
        let mut l = self.lists();
        l.next += 1;
        let id = l.next;
        l.farewells.push((id, f));
        id
    }

    pub fn remove_farewell(&self, id: u64) {
        self.lists().farewells.retain(|(i, _)| *i != id);
    }

    /// Says every registered farewell (`why` the process stops), then
    /// kills (SIGKILL) and reaps every registered child and removes every
    /// registered directory; returns how many children and directories.
    pub fn run(&self, why: &str) -> (usize, usize) {
        let (children, dirs, farewells) = {
            let mut l = self.lists();
            (std::mem::take(&mut l.children), std::mem::take(&mut l.dirs), std::mem::take(&mut l.farewells))
        };
        for (_, f) in farewells {
            f(why);
        }
        for &pid in &children {
            // The child and, if it leads one, its process group.
            let _ = sys::kill_group(pid, libc::SIGKILL);
            let _ = sys::kill(pid, libc::SIGKILL);
            let _ = sys::reap(pid);
        }
        for d in &dirs {
            let _ = std::fs::remove_dir_all(d);
        }
        (children.len(), dirs.len())
    }
}

/// The process-wide registry.
pub fn global() -> &'static Registry {
    &GLOBAL
}

/// Registers a child process to kill on a fatal signal.
pub fn add_child(pid: u32) {
    GLOBAL.add_child(pid);
}

/// The child `pid` was reaped by its owner.
pub fn remove_child(pid: u32) {
    GLOBAL.remove_child(pid);
}

/// Registers a temporary directory to remove on a fatal signal.
pub fn add_dir(dir: &Path) {
    GLOBAL.add_dir(dir);
}

/// The directory was removed (or handed over) by its owner.
pub fn remove_dir(dir: &Path) {
    GLOBAL.remove_dir(dir);
}

/// Registers a farewell to say when a fatal signal stops the process;
/// returns its id for [`remove_farewell`].
pub fn add_farewell(f: Farewell) -> u64 {
    GLOBAL.add_farewell(f)
}

/// The farewell is no longer needed (its session ended).
pub fn remove_farewell(id: u64) {
    GLOBAL.remove_farewell(id);
}

/// Set once a fatal signal's cleanup has begun.
static STOPPING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Cleans up everything registered in this process (see [`Registry::run`]),
/// marking the process as stopping first.
pub fn run(why: &str) -> (usize, usize) {
    STOPPING.store(true, std::sync::atomic::Ordering::SeqCst);
    GLOBAL.run(why)
}

/// Whether a fatal signal's cleanup has begun: work that fails now (its
/// helper killed, its directory gone) failed because of it, and the
/// signal's exit status is the one to report.
pub fn stopping() -> bool {
    STOPPING.load(std::sync::atomic::Ordering::SeqCst)
}

/// A fresh private directory under `base`: a random name after `prefix`,
/// mode 0700, created by this call (an existing path is never reused,
/// whoever made it: SECURITY.md F8), registered for removal on a signal
/// and removed when the value drops.
#[derive(Debug)]
pub struct PrivateDir(PathBuf);

impl PrivateDir {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        remove_dir(&self.0);
    }
}

/// Creates a [`PrivateDir`] named `<prefix><16 hex>` under `base`.
pub fn private_dir(base: &Path, prefix: &str) -> std::io::Result<PrivateDir> {
    for _ in 0..16 {
        let r: [u8; 8] = crate::net::random_bytes()?;
        let name = r.iter().fold(String::from(prefix), |mut s, b| {
            use std::fmt::Write as _;
            let _ = write!(s, "{b:02x}");
            s
        });
        let p = base.join(name);
        match std::fs::DirBuilder::new().mode(0o700).create(&p) {
            Ok(()) => {
                add_dir(&p);
                return Ok(PrivateDir(p));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(std::io::Error::new(e.kind(), format!("creating a private directory in {}: {e}", base.display()))),
        }
    }
    Err(std::io::Error::other(format!("cannot find a free private directory name in {}", base.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn private_dirs_are_fresh_0700_and_never_reused() {
        let base = tempfile::tempdir().unwrap();
        let a = private_dir(base.path(), "sluice-t-").unwrap();
        let b = private_dir(base.path(), "sluice-t-").unwrap();
        assert_ne!(a.path(), b.path());
        let m = std::fs::metadata(a.path()).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o700);
        let p = a.path().to_path_buf();
        std::fs::write(p.join("x"), b"x").unwrap();
        drop(a);
        assert!(!p.exists(), "removed on drop");
    }

    #[test]
    fn run_kills_and_reaps_children_and_removes_dirs() {
        let base = tempfile::tempdir().unwrap();
        let r = Registry::default();
        let path = base.path().join("tmp");
        std::fs::create_dir(&path).unwrap();
        r.add_dir(&path);
        #[allow(clippy::zombie_processes)] // run() reaps it; that is what is tested
        let child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        r.add_child(child.id());
        let said = Arc::new(Mutex::new(String::new()));
        let s2 = Arc::clone(&said);
        let id = r.add_farewell(Arc::new(move |why: &str| *s2.lock().unwrap() = why.to_string()));
        let gone = r.add_farewell(Arc::new(|_: &str| panic!("a removed farewell was said")));
        r.remove_farewell(gone);
        assert!(id != gone);
        assert_eq!(r.run("stopped by SIGTERM"), (1, 1));
        assert_eq!(*said.lock().unwrap(), "stopped by SIGTERM", "the farewell was said with the reason");
        assert!(!path.exists());
        // Reaped: no zombie left under our pid.
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id()));
        assert!(stat.is_err(), "child still exists: {stat:?}");
    }
}
