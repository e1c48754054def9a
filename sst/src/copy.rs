//! Copy mode (`[sst] mode=copy`): the rsync method's job done by the
//! engine's zero-copy multi-stream transfer (shared/SST-PROTOCOL.md §2.5,
//! MARIADB-OBSERVED.md §7).
//!
//! Donor: print `flush tables`, wait for mysqld's `tables_flushed` (or
//! `sst_error`), read the state from it, send the datadir's files (minus
//! what the joiner must keep), the special directories and the binary logs
//! while the lock holds, print `continue` once the joiner has verified and
//! synced them (mysqld then releases the lock) and `done <state>`.
//!
//! Joiner: receive into the staging directory, clean the datadir, then
//! move every entry into place (rename within a filesystem, copy across),
//! so a failed transfer never leaves a half-written datadir that looks
//! valid.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sluice_engine::Token;
use sluice_engine::send::{SendConfig, send_tree};
use sluice_engine::source::{Mapping, scan_mapped};

use crate::error::{Result, SstError};
use crate::layout::{Layout, Special};
use crate::mysqld::{self, Gtid, Protocol};
use crate::plan::{Plan, STATE_FILE};
use crate::process;

/// Name prefix of a special directory in the staging tree.
const DIR_PREFIX: &str = "sluice-dir-";
const BINLOG_DIR: &str = "sluice-dir-binlog";

/// Top-level datadir entries the joiner keeps (or that belong to the
/// donor only): Galera state and cache, markers, pid and socket files, SST
/// and error logs, TLS files, the staging directory.
pub fn skipped_at_top(name: &str) -> bool {
    const NAMES: &[&str] = &[
        "grastate.dat",
        "gvwstate.dat",
        "galera.cache",
        // InnoDB's temporary tablespace (its default name): recreated at
        // every start, never worth sending.
        "ibtmp1",
        "sst_in_progress",
        "wsrep_sst.pid",
        "tables_flushed",
        "sst_error",
        ".sst",
        ".sst-old",
    ];
    const ENDINGS: &[&str] = &[".pid", ".sock", ".err", ".log", ".pem", ".sock.lock"];
    // The SST's own status file (rewritten every second) and its
    // temporary names.
    let status = crate::status::DEFAULT_FILE;
    let own = name == status || name.strip_prefix('.').is_some_and(|n| n.starts_with(status));
    // ddl_recovery.log is InnoDB/DDL state, not a text log: it travels.
    name != "ddl_recovery.log"
        && (own || NAMES.contains(&name) || ENDINGS.iter().any(|e| name.ends_with(e)) || name.starts_with("galera.page."))
}

/// What mysqld writes after `flush tables`: `<uuid>:<seqno> <domain>`.
fn wait_flushed(datadir: &Path, parent: Option<u32>) -> Result<(Gtid, Option<u64>)> {
    let flushed = datadir.join("tables_flushed");
    let error = datadir.join("sst_error");
    loop {
        if error.exists() {
            return Err(SstError::Incompatible(
                "mysqld could not flush and lock the tables (it created sst_error); see its error log".into(),
            ));
        }
        if let Ok(text) = fs::read_to_string(&flushed) {
            if text.contains(':') {
                let _ = fs::remove_file(&flushed);
                return mysqld::parse_galera_info(&text).map_err(|e| SstError::BadBackup(format!("tables_flushed: {e}")));
            }
        }
        if parent.is_some_and(|p| !process::alive(p)) {
            return Err(SstError::ParentGone(parent.unwrap_or_default()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The donor's side of a copy-mode SST.
pub fn donor(s: &Plan, proto: &mut Protocol<impl Write>, target: &str, token: &Token, cfg: &SendConfig, layout: &Layout) -> Result<()> {
    let datadir = &s.args.datadir;
    for stale in ["tables_flushed", "sst_error"] {
        let _ = fs::remove_file(datadir.join(stale));
    }
    let asked = Instant::now();
    proto.flush_tables()?;
    let (gtid, domain) = wait_flushed(datadir, s.args.parent)?;
    tracing::info!("tables flushed and locked after {:.2} s; state {gtid}", asked.elapsed().as_secs_f64());
    let locked = Instant::now();

    // The state travels as a file of its own.
    let state_dir = sluice_engine::cleanup::private_dir(&std::env::temp_dir(), "sluice-sst-state-")
        .map_err(|e| SstError::io("creating a temporary directory", e))?;
    let state_file = state_dir.path().join(STATE_FILE);
    fs::write(&state_file, mysqld::coordinates_line(&gtid, domain) + "\n").map_err(|e| SstError::io("writing the state file", e))?;
    let mut maps = vec![Mapping { local: datadir.clone(), name: Vec::new() }, Mapping { local: state_file, name: STATE_FILE.into() }];
    for (kind, dir) in &layout.special {
        if !dir.starts_with(datadir) {
            maps.push(Mapping { local: dir.clone(), name: format!("{DIR_PREFIX}{}", kind.name()).into_bytes() });
        }
    }
    let mut binlog_files = Vec::new();
    if let Some(b) = layout.binlog.as_ref().filter(|b| !b.dir().starts_with(datadir)) {
        if let Ok(rd) = fs::read_dir(b.dir()) {
            binlog_files = rd.flatten().filter(|e| b.is_log_file(&e.file_name().to_string_lossy())).map(|e| e.file_name()).collect();
        }
        if !binlog_files.is_empty() {
            maps.push(Mapping { local: b.dir().to_path_buf(), name: BINLOG_DIR.into() });
        }
    }
    let binlog_names: Vec<String> = binlog_files.iter().map(|n| n.to_string_lossy().into_owned()).collect();
    let skip = |rel: &[u8]| {
        let rel = String::from_utf8_lossy(rel);
        match rel.split_once('/') {
            None => skipped_at_top(&rel),
            // In the binlog directory only the numbered logs travel.
            Some((BINLOG_DIR, file)) => !binlog_names.iter().any(|n| n == file),
            Some(_) => false,
        }
    };
    let summary = scan_mapped(&maps, &skip).and_then(|tree| send_tree(target, token, &tree, cfg));
    drop(state_dir);
    let summary = summary?;
    tracing::info!("{}; the tables were locked for {:.1} s", crate::report::summary_line("sent", &summary), locked.elapsed().as_secs_f64());
    proto.continue_()?;
    proto.done(&gtid)
}

/// Renames `from` to `to`, copying when they are on different filesystems;
/// an existing `to` is replaced.
fn place(from: &Path, to: &Path) -> Result<()> {
    if let Ok(m) = fs::symlink_metadata(to) {
        tracing::warn!("replacing {} (the cleanup kept it, the donor sent it)", to.display());
        if m.is_dir() { fs::remove_dir_all(to) } else { fs::remove_file(to) }
            .map_err(|e| SstError::io(format!("removing {}", to.display()), e))?;
    }
    match fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => copy_tree(from, to),
        Err(e) => Err(SstError::io(format!("moving {} to {}", from.display(), to.display()), e)),
    }
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let io = |what: &str, p: &Path| {
        let what = format!("{what} {}", p.display());
        move |e| SstError::io(what, e)
    };
    let m = fs::symlink_metadata(from).map_err(io("reading", from))?;
    if m.is_dir() {
        fs::create_dir(to).map_err(io("creating", to))?;
        for e in fs::read_dir(from).map_err(io("listing", from))?.flatten() {
            copy_tree(&e.path(), &to.join(e.file_name()))?;
        }
        fs::set_permissions(to, m.permissions()).map_err(io("setting the mode of", to))?;
        fs::remove_dir(from).map_err(io("removing", from))
    } else if m.file_type().is_symlink() {
        let t = fs::read_link(from).map_err(io("reading", from))?;
        std::os::unix::fs::symlink(t, to).map_err(io("creating", to))?;
        fs::remove_file(from).map_err(io("removing", from))
    } else {
        crate::fresh::copy(from, to).map_err(io("copying to", to))?;
        fs::remove_file(from).map_err(io("removing", from))
    }
}

/// The joiner's last step: moves the verified staging tree into the
/// datadir and its special directories; returns how many entries moved.
pub fn move_into_place(staging: &Path, datadir: &Path, layout: &Layout) -> Result<usize> {
    let mut moved = 0;
    let mut entries: Vec<PathBuf> =
        fs::read_dir(staging).map_err(|e| SstError::io(format!("listing {}", staging.display()), e))?.flatten().map(|e| e.path()).collect();
    entries.sort();
    for e in entries {
        let name = e.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let Some(kind) = name.strip_prefix(DIR_PREFIX) else {
            place(&e, &datadir.join(&name))?;
            moved += 1;
            continue;
        };
        let target: PathBuf = if kind == "binlog" {
            layout.binlog.as_ref().map_or_else(|| datadir.to_path_buf(), |b| b.dir().to_path_buf())
        } else {
            let special = Special::ALL.into_iter().find(|k| k.name() == kind);
            special.and_then(|k| layout.dir(k)).map_or_else(|| datadir.to_path_buf(), Path::to_path_buf)
        };
        fs::create_dir_all(&target).map_err(|err| SstError::io(format!("creating {}", target.display()), err))?;
        let mut children: Vec<PathBuf> =
            fs::read_dir(&e).map_err(|err| SstError::io(format!("listing {}", e.display()), err))?.flatten().map(|c| c.path()).collect();
        children.sort();
        let mut names = Vec::new();
        for c in children {
            let child = c.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            place(&c, &target.join(&child))?;
            names.push(child);
            moved += 1;
        }
        if kind == "binlog" {
            if let Some(b) = &layout.binlog {
                let index = names.iter().fold(String::new(), |mut acc, n| {
                    acc.push_str(&target.join(n).to_string_lossy());
                    acc.push('\n');
                    acc
                });
                crate::fresh::write(&b.index, index.as_bytes(), 0o644)
                    .map_err(|err| SstError::io(format!("writing {}", b.index.display()), err))?;
            }
        }
        fs::remove_dir(&e).map_err(|err| SstError::io(format!("removing {}", e.display()), err))?;
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Binlog;

    #[test]
    fn the_joiners_own_files_never_travel() {
        for keep in [
            "grastate.dat",
            "galera.cache",
            "gvwstate.dat",
            "mysqld.pid",
            "mysqld.sock",
            "node1.err",
            "mariabackup.backup.log",
            "server-key.pem",
            ".sst",
            "galera.page.000001",
        ] {
            assert!(skipped_at_top(keep), "{keep}");
        }
        for go in [
            "ddl_recovery.log",
            "ibdata1",
            "ib_logfile0",
            "undo001",
            "mysql",
            "aria_log.00000001",
            "aria_log_control",
            "mysql-bin.000001",
            "mysql-bin.index",
            "sb",
        ] {
            assert!(!skipped_at_top(go), "{go}");
        }
    }

    #[test]
    fn staged_entries_move_to_the_datadir_and_the_joiners_special_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let (staging, data, undo, logs) =
            (dir.path().join("data/.sst"), dir.path().join("data"), dir.path().join("undo"), dir.path().join("binlog"));
        fs::create_dir_all(staging.join("sb")).unwrap();
        fs::create_dir_all(staging.join("sluice-dir-undo")).unwrap();
        fs::create_dir_all(staging.join("sluice-dir-binlog")).unwrap();
        fs::write(staging.join("ibdata1"), b"sys").unwrap();
        fs::write(staging.join("sb/t.ibd"), b"table").unwrap();
        fs::write(staging.join("sluice-dir-undo/undo001"), b"undo").unwrap();
        fs::write(staging.join("sluice-dir-binlog/mysql-bin.000002"), b"b2").unwrap();
        fs::write(staging.join("sluice-dir-binlog/mysql-bin.000001"), b"b1").unwrap();
        fs::write(data.join("ibdata1"), b"old, kept by a custom cpat").unwrap();
        let layout = Layout {
            special: vec![(Special::Undo, undo.clone())],
            binlog: Some(Binlog { base: logs.join("mysql-bin"), index: logs.join("mysql-bin.index") }),
        };
        assert_eq!(move_into_place(&staging, &data, &layout).unwrap(), 5);
        assert_eq!(fs::read(data.join("ibdata1")).unwrap(), b"sys");
        assert_eq!(fs::read(data.join("sb/t.ibd")).unwrap(), b"table");
        assert_eq!(fs::read(undo.join("undo001")).unwrap(), b"undo");
        assert_eq!(fs::read(logs.join("mysql-bin.000001")).unwrap(), b"b1");
        let index = fs::read_to_string(logs.join("mysql-bin.index")).unwrap();
        assert_eq!(index, format!("{0}/mysql-bin.000001\n{0}/mysql-bin.000002\n", logs.display()));
        assert_eq!(fs::read_dir(&staging).unwrap().count(), 0);
    }
}
