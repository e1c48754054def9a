//! Helper processes of an SST (mariadb-backup) and the watch on the parent
//! mysqld: program lookup, runs with output to a log file and the password
//! only in `MYSQL_PWD`, the tail of a log for error messages, and exit 32
//! with every child killed when mysqld dies.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sluice_engine::backend::sys;

use crate::error::{Result, SstError};

/// Finds `name` on `PATH` (mysqld puts `<basedir>/bin` first).
pub fn find_program(name: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0))
        .ok_or_else(|| SstError::Missing(name.to_string()))
}

/// Child processes to kill if mysqld dies.
#[derive(Debug, Clone, Default)]
pub struct Children(Arc<Mutex<Vec<u32>>>);

impl Children {
    /// Registers `pid` here and for cleanup on a fatal signal.
    pub fn add(&self, pid: u32) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).push(pid);
        sluice_engine::cleanup::add_child(pid);
    }

    pub fn remove(&self, pid: u32) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).retain(|p| *p != pid);
        sluice_engine::cleanup::remove_child(pid);
    }

    /// The helpers running now.
    pub fn pids(&self) -> Vec<u32> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub(crate) fn kill_all(&self) {
        for pid in self.0.lock().unwrap_or_else(PoisonError::into_inner).drain(..) {
            let _ = sys::kill(pid, libc::SIGKILL);
        }
    }
}

/// A command line for a helper, with the password kept apart. `Debug`
/// never shows the password.
pub struct Helper<'a> {
    pub program: &'a Path,
    pub args: Vec<String>,
    pub cwd: &'a Path,
    /// Goes to `MYSQL_PWD`, never to argv.
    pub password: Option<&'a str>,
    /// What the error message calls it, e.g. "mariadb-backup --prepare".
    pub what: &'a str,
}

impl std::fmt::Debug for Helper<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Helper")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("cwd", &self.cwd)
            .field("password", &self.password.map(|_| "<redacted>"))
            .field("what", &self.what)
            .finish()
    }
}

impl Helper<'_> {
    /// A `Command` with the password in the environment only (an inherited
    /// `MYSQL_PWD` is removed when there is none).
    pub fn command(&self) -> Command {
        let mut c = Command::new(self.program);
        c.args(&self.args).current_dir(self.cwd).stdin(Stdio::null());
        match self.password {
            Some(p) => c.env("MYSQL_PWD", p),
            None => c.env_remove("MYSQL_PWD"),
        };
        c
    }

    /// Spawns with stdout piped and stderr appended to `log`.
    pub fn spawn_streaming(&self, log: &Path, children: &Children) -> Result<Child> {
        let err = crate::fresh::create(log, 0o644).map_err(|e| SstError::io(format!("creating {}", log.display()), e))?;
        tracing::info!("running {} (log: {})", self.what, log.display());
        let child = self
            .command()
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .map_err(|e| SstError::io(format!("starting {}", self.program.display()), e))?;
        children.add(child.id());
        Ok(child)
    }

    /// Runs to completion with stdout and stderr in `log`.
    pub fn run_logged(&self, log: &Path, children: &Children) -> Result<()> {
        let out = crate::fresh::create(log, 0o644).map_err(|e| SstError::io(format!("creating {}", log.display()), e))?;
        let err = out.try_clone().map_err(|e| SstError::io("duplicating a log descriptor", e))?;
        tracing::info!("running {} (log: {})", self.what, log.display());
        let mut child =
            self.command().stdout(out).stderr(err).spawn().map_err(|e| SstError::io(format!("starting {}", self.program.display()), e))?;
        children.add(child.id());
        let status = child.wait().map_err(|e| SstError::io(format!("waiting for {}", self.what), e));
        children.remove(child.id());
        crate::syslog::forward_log(self.syslog_stage(), log);
        self.check(status?, log)
    }

    /// The stock syslog ident suffix of this helper.
    fn syslog_stage(&self) -> &'static str {
        if self.what.contains("prepare") {
            "apply"
        } else if self.what.contains("move") {
            "move"
        } else {
            "backup"
        }
    }

    /// Turns a failed exit status into an error carrying the log's tail.
    pub fn check(&self, status: ExitStatus, log: &Path) -> Result<()> {
        if status.success() {
            return Ok(());
        }
        Err(SstError::Tool { what: self.what.to_string(), status: status.to_string(), log: log.display().to_string(), tail: tail(log, 5) })
    }
}

/// The last `n` non-empty lines of a log file.
pub fn tail(log: &Path, n: usize) -> String {
    let text = std::fs::read(log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Whether process `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).is_some_and(|s| s != "Z" && s != "X"),
        Err(_) => false,
    }
}

/// Watches mysqld: if it dies, kills the children, logs, and exits 32 as
/// the stock scripts do.
pub fn watch_parent(pid: u32, children: Children) {
    let spawned = std::thread::Builder::new().name("sluice-parent".into()).spawn(move || {
        loop {
            std::thread::sleep(Duration::from_millis(100));
            if !alive(pid) {
                children.kill_all();
                // Everything else this process started (filters) and its
                // temporary directories.
                sluice_engine::cleanup::run(&format!("stopped: its mysqld (pid {pid}) is gone"));
                tracing::error!("{}", SstError::ParentGone(pid));
                std::process::exit(32);
            }
        }
    });
    if let Err(e) = spawned {
        tracing::warn!("cannot watch the parent mysqld: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_and_tails() {
        assert!(alive(std::process::id()));
        let mut c = Command::new("true").spawn().unwrap();
        let pid = c.id();
        // Poll until it has exited (a zombie): never a guessed delay.
        let t = std::time::Instant::now();
        while std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z ")) {
            assert!(t.elapsed() < Duration::from_secs(10), "`true` never exited");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!alive(pid), "an exited, unreaped child is a zombie, not alive");
        c.wait().unwrap();
        assert!(!alive(pid));
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("x.log");
        std::fs::write(&log, "a\nb\n\nc\nd\ne\nf\n").unwrap();
        assert_eq!(tail(&log, 3), "d\ne\nf");
        assert_eq!(tail(&dir.path().join("missing"), 3), "");
    }

    #[test]
    fn debug_never_shows_the_password() {
        let h = Helper { program: Path::new("/bin/true"), args: vec![], cwd: Path::new("/"), password: Some("s3cr3t"), what: "x" };
        let shown = format!("{h:?}");
        assert!(!shown.contains("s3cr3t") && shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn helpers_get_the_password_only_in_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let sh = find_program("sh").unwrap();
        let h = Helper {
            program: &sh,
            args: vec!["-c".into(), "echo \"pwd=$MYSQL_PWD args=$*\"; exit 3".into(), "x".into()],
            cwd: dir.path(),
            password: Some("hunter2"),
            what: "the test helper",
        };
        let log = dir.path().join("h.log");
        let e = h.run_logged(&log, &Children::default()).unwrap_err();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "pwd=hunter2 args=\n");
        assert_eq!(e.exit_code(), 22);
        assert!(e.to_string().contains("the test helper failed (exit status: 3)"), "{e}");
        assert!(matches!(find_program("no-such-program-sluice"), Err(SstError::Missing(_))));
    }
}
