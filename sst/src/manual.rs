//! Manual SST, for an operator whose automatic SST keeps failing: on the
//! donor host `sluice send --backup` streams `mariadb-backup --backup
//! --stream=mbstream` to a `sluice recv`; on the joiner host `sluice recv
//! --prepare --datadir D` (or `sluice restore` on an already received
//! backup) prepares it, writes `grastate.dat` from the backup's Galera
//! position, moves it into the emptied datadir and gives the files to the
//! datadir's owner. A datadir that is not empty, or that a running mysqld
//! holds, is refused unless forced.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sluice_engine::send::SendConfig;
use sluice_engine::{Summary, Token};

use crate::error::{Result, SstError};
use crate::mysqld::{self, Gtid};
use crate::process::{self, Children, Helper, find_program};

/// Where the donor's backup comes from.
#[derive(Debug, Clone, Default)]
pub struct BackupSource {
    pub defaults_file: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub user: Option<String>,
    pub datadir: Option<PathBuf>,
    /// `--galera-info` (a Galera node: the joiner gets grastate.dat).
    pub galera_info: bool,
    /// Where `mariabackup.backup.log` goes.
    pub log: PathBuf,
}

/// Streams a fresh backup to the `sluice recv` at `target`. The password,
/// if any, is read by mariadb-backup from `MYSQL_PWD`.
pub fn send_backup(target: &str, token: &Token, cfg: &SendConfig, src: &BackupSource) -> Result<Summary> {
    let program = find_program("mariadb-backup")?;
    let tmp_dir = sluice_engine::cleanup::private_dir(&std::env::temp_dir(), "sluice-backup-")
        .map_err(|e| SstError::io("creating a temporary directory", e))?;
    let tmp = tmp_dir.path().to_path_buf();
    let mut args = Vec::new();
    if let Some(f) = &src.defaults_file {
        args.push(format!("--defaults-file={}", f.display()));
    }
    args.extend(["--backup".to_string(), "--no-version-check".into(), "--stream=mbstream".into()]);
    if src.galera_info {
        args.push("--galera-info".into());
    }
    args.push(format!("--target-dir={}", tmp.display()));
    args.push(format!("--tmpdir={}", tmp.display()));
    if let Some(s) = &src.socket {
        args.push(format!("--socket={}", s.display()));
    }
    if let Some(u) = &src.user {
        args.push(format!("--user={u}"));
    }
    if let Some(d) = &src.datadir {
        args.push(format!("--datadir={}", d.display()));
    }
    let password = std::env::var("MYSQL_PWD").ok();
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let helper = Helper { program: &program, args, cwd: &cwd, password: password.as_deref(), what: "mariadb-backup --backup" };
    crate::backup::send_backup_stream(target, token, cfg, &helper, &src.log, &Children::default(), &[])
}

/// Entries of `datadir` that do not count as content: a staging dir,
/// `lost+found`.
fn ignorable(name: &str) -> bool {
    name == "lost+found" || name == ".sst"
}

/// A running mysqld or mariadbd whose working directory (mysqld changes
/// into its datadir) is `datadir`.
fn server_in(datadir: &Path) -> Option<u32> {
    let want = fs::canonicalize(datadir).ok()?;
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let comm = fs::read_to_string(e.path().join("comm")).ok()?;
        let server = matches!(comm.trim(), "mariadbd" | "mysqld");
        (server && fs::read_link(e.path().join("cwd")).ok()? == want && process::alive(pid)).then_some(pid)
    })
}

/// Refuses a datadir that a running mysqld holds (a `*.pid` file naming a
/// live process, or a server working in it) or that has content, unless
/// `force`.
pub fn check_datadir(datadir: &Path, force: bool) -> Result<()> {
    if let (Some(pid), false) = (server_in(datadir), force) {
        return Err(SstError::Incompatible(format!(
            "{} is held by a running mysqld (pid {pid} works in it); stop it first",
            datadir.display()
        )));
    }
    let Ok(rd) = fs::read_dir(datadir) else { return Ok(()) };
    let names: Vec<String> = rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    for pidfile in names.iter().filter(|n| Path::new(n).extension().is_some_and(|e| e == "pid")) {
        let pid = fs::read_to_string(datadir.join(pidfile)).ok().and_then(|t| t.trim().parse::<u32>().ok());
        if let Some(pid) = pid.filter(|p| process::alive(*p)) {
            if !force {
                return Err(SstError::Incompatible(format!(
                    "{} is held by a running mysqld (pid {pid} in {pidfile}); stop it first (or pass --force if that process is not mysqld)",
                    datadir.display()
                )));
            }
        }
    }
    let content: Vec<&String> = names.iter().filter(|n| !ignorable(n)).collect();
    if !content.is_empty() && !force {
        return Err(SstError::Incompatible(format!(
            "{} is not empty ({} entries, e.g. {}); restoring would replace its data: empty it or pass --force",
            datadir.display(),
            content.len(),
            content[0]
        )));
    }
    Ok(())
}

/// The grastate.dat a restored Galera node starts from.
pub fn grastate(version: &str, gtid: &Gtid) -> String {
    format!("# GALERA saved state\nversion: {version}\nuuid:    {}\nseqno:   {}\nsafe_to_bootstrap: 0\n", gtid.uuid, gtid.seqno)
}

/// How to restore a received backup.
#[derive(Debug, Clone)]
pub struct Restore {
    /// The received (unprepared) backup.
    pub backup: PathBuf,
    pub datadir: PathBuf,
    pub force: bool,
    /// Passed to `--move-back` (layout options such as the undo directory).
    pub defaults_file: Option<PathBuf>,
    pub use_memory: Option<String>,
}

/// Prepares `r.backup`, empties the datadir, moves the backup in, writes
/// grastate.dat and restores ownership. Returns the Galera position, if
/// the backup carried one.
pub fn restore(r: &Restore) -> Result<Option<(Gtid, Option<u64>)>> {
    check_datadir(&r.datadir, r.force)?;
    let program = find_program("mariadb-backup")?;
    let children = Children::default();
    fs::create_dir_all(&r.datadir).map_err(|e| SstError::io(format!("creating {}", r.datadir.display()), e))?;
    let owner = fs::metadata(&r.datadir).map_err(|e| SstError::io(format!("reading {}", r.datadir.display()), e))?;
    let version = fs::read_to_string(r.datadir.join("grastate.dat"))
        .ok()
        .and_then(|t| t.lines().find_map(|l| l.strip_prefix("version:").map(|v| v.trim().to_string())))
        .unwrap_or_else(|| "2.1".into());
    let logs = r.backup.parent().unwrap_or(&r.datadir).to_path_buf();
    let mut args = vec!["--prepare".to_string(), "--no-version-check".into(), format!("--target-dir={}", r.backup.display())];
    if let Some(m) = &r.use_memory {
        args.push(format!("--use-memory={m}"));
    }
    Helper { program: &program, args, cwd: &r.backup, password: None, what: "mariadb-backup --prepare" }
        .run_logged(&logs.join("mariabackup.prepare.log"), &children)?;
    let info = ["mariadb_backup_galera_info", "xtrabackup_galera_info"].iter().find_map(|n| fs::read_to_string(r.backup.join(n)).ok());
    let position = match info.as_deref().map(mysqld::parse_galera_info) {
        Some(Ok(p)) => Some(p),
        Some(Err(e)) => return Err(SstError::BadBackup(format!("the backup's Galera position is unreadable: {e}"))),
        None => None,
    };
    // Empty the datadir (all but the backup itself, if it lives inside).
    for e in fs::read_dir(&r.datadir).map_err(|e| SstError::io(format!("listing {}", r.datadir.display()), e))?.flatten() {
        let p = e.path();
        if p == r.backup || e.file_name() == "lost+found" || p.starts_with(&r.backup) {
            continue;
        }
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        if is_dir { fs::remove_dir_all(&p) } else { fs::remove_file(&p) }
            .map_err(|err| SstError::io(format!("removing {}", p.display()), err))?;
    }
    let mut args = Vec::new();
    if let Some(f) = &r.defaults_file {
        args.push(format!("--defaults-file={}", f.display()));
    }
    args.extend([
        "--move-back".to_string(),
        "--no-version-check".into(),
        "--force-non-empty-directories".into(),
        format!("--target-dir={}", r.backup.display()),
        format!("--datadir={}", r.datadir.display()),
    ]);
    Helper { program: &program, args, cwd: &r.datadir, password: None, what: "mariadb-backup --move-back" }
        .run_logged(&logs.join("mariabackup.move.log"), &children)?;
    if let Some((gtid, _)) = &position {
        crate::fresh::replace(&r.datadir.join("grastate.dat"), grastate(&version, gtid).as_bytes())
            .map_err(|e| SstError::io(format!("writing {}", r.datadir.join("grastate.dat").display()), e))?;
    }
    if r.backup.starts_with(&r.datadir) {
        let _ = fs::remove_dir_all(&r.backup);
    }
    chown_tree(&r.datadir, owner.uid(), owner.gid())?;
    Ok(position)
}

/// Gives every entry under `dir` to `uid:gid`, by descriptor (never
/// through a symlink or a swapped directory: SECURITY.md F3).
fn chown_tree(dir: &Path, uid: u32, gid: u32) -> Result<()> {
    let skipped =
        sluice_engine::sink::chown_tree(dir, uid, gid).map_err(|e| SstError::io(format!("giving {} to {uid}:{gid}", dir.display()), e))?;
    for p in skipped {
        tracing::warn!("left the owner of {} alone: it has other hard links (to a file outside the datadir?)", p.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grastate_has_the_galera_layout() {
        let g: Gtid = "5ddc2d84-e57f-11f1-bdb1-3269f43d81db:16".parse().unwrap();
        assert_eq!(
            grastate("2.1", &g),
            "# GALERA saved state\nversion: 2.1\nuuid:    5ddc2d84-e57f-11f1-bdb1-3269f43d81db\nseqno:   16\nsafe_to_bootstrap: 0\n"
        );
    }

    #[test]
    fn ownership_follows_the_datadir_without_following_symlinks() {
        if !sluice_engine::backend::sys::is_root() {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "CI runs as root; chown must be tested");
            eprintln!("SKIPPED: chown needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::NamedTempFile::new().unwrap();
        fs::create_dir(dir.path().join("db")).unwrap();
        fs::write(dir.path().join("db/t.ibd"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        // A directory swapped for a symlink to a root-owned directory, and
        // a hard link to a root-owned file (what the datadir's owner can
        // plant, SECURITY.md F3).
        let rootdir = tempfile::tempdir().unwrap();
        fs::write(rootdir.path().join("shadow"), b"x").unwrap();
        std::os::unix::fs::symlink(rootdir.path(), dir.path().join("swapped")).unwrap();
        let secret = tempfile::NamedTempFile::new().unwrap();
        fs::hard_link(secret.path(), dir.path().join("db/hard")).unwrap();
        chown_tree(dir.path(), 65534, 65534).unwrap();
        assert_eq!(fs::metadata(dir.path().join("db/t.ibd")).unwrap().uid(), 65534);
        assert_eq!(fs::symlink_metadata(dir.path().join("link")).unwrap().uid(), 65534);
        assert_eq!(fs::metadata(outside.path()).unwrap().uid(), 0, "a symlink's target is never chowned");
        assert_eq!(fs::metadata(rootdir.path().join("shadow")).unwrap().uid(), 0, "the walk followed a symlinked directory");
        assert_eq!(fs::metadata(rootdir.path()).unwrap().uid(), 0);
        assert_eq!(fs::metadata(secret.path()).unwrap().uid(), 0, "a hard link to a file outside was chowned");
    }

    #[test]
    fn busy_or_full_datadirs_are_refused_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        check_datadir(dir.path(), false).unwrap();
        fs::create_dir(dir.path().join("lost+found")).unwrap();
        fs::create_dir(dir.path().join(".sst")).unwrap();
        check_datadir(dir.path(), false).unwrap();
        fs::write(dir.path().join("ibdata1"), b"x").unwrap();
        let e = check_datadir(dir.path(), false).unwrap_err().to_string();
        assert!(e.contains("is not empty") && e.contains("ibdata1") && e.contains("--force"), "{e}");
        check_datadir(dir.path(), true).unwrap();
        fs::write(dir.path().join("host.pid"), format!("{}\n", std::process::id())).unwrap();
        let e = check_datadir(dir.path(), false).unwrap_err().to_string();
        assert!(e.contains("held by a running mysqld") && e.contains("host.pid"), "{e}");
    }
}
