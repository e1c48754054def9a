//! mariadb-backup: its command lines, built as the stock script builds them
//! (shared/SST-PROTOCOL.md §1.4, §3.2, §3.4), and the streaming of its
//! `--backup --stream=mbstream` output into a streamed session (used by the
//! SST donor and by `sluice send --backup`).
//!
//! The defaults-file options come first, right after the binary; the
//! password never appears here (it travels in `MYSQL_PWD`).

use std::io::BufReader;
use std::path::{Path, PathBuf};

use sluice_engine::send::{Feeder, SendConfig, send_streamed};
use sluice_engine::{Error as EngineError, Summary, Token};

use crate::args::SstArgs;
use crate::error::{Result, SstError};
use crate::mbstream::{Chunk, Reader};
use crate::options::SstOptions;
use crate::process::{Children, Helper};

/// What `--mysqld-args` carried, split as the stock common script splits it:
/// server options sluice hands to mariadb-backup explicitly, options that
/// must not reach it, and the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MysqldArgs {
    pub aria_log_dir_path: Option<String>,
    pub innodb_data_home_dir: Option<String>,
    pub innodb_log_group_home_dir: Option<String>,
    pub innodb_undo_directory: Option<String>,
    pub innodb_buffer_pool_filename: Option<String>,
    pub innodb_buffer_pool_size: Option<String>,
    pub innodb_force_recovery: Option<String>,
    pub log_bin: Option<String>,
    pub log_bin_index: Option<String>,
    pub log_basename: Option<String>,
    pub datadir: Option<String>,
    /// Everything else, in order.
    pub kept: Vec<String>,
}

/// Splits mysqld's argv (what followed `--mysqld-args`).
pub fn split_mysqld_args(argv: &[String]) -> MysqldArgs {
    let mut m = MysqldArgs::default();
    let mut i = 0;
    while i < argv.len() {
        let tok = &argv[i];
        i += 1;
        if tok == "--" {
            m.kept.extend(argv[i..].iter().cloned());
            break;
        }
        if let Some(short) = tok.strip_prefix('-').filter(|s| !s.starts_with('-') && !s.is_empty()) {
            // -h <dir> is the datadir; -u and -P are dropped with their values.
            let (flag, inline) = short.split_at(1);
            let value = if !inline.is_empty() {
                Some(inline.to_string())
            } else if matches!(flag, "h" | "u" | "P") && i < argv.len() {
                i += 1;
                Some(argv[i - 1].clone())
            } else {
                None
            };
            match flag {
                "h" => m.datadir = value,
                "u" | "P" => {}
                _ => m.kept.push(tok.clone()),
            }
            continue;
        }
        let Some(body) = tok.strip_prefix("--") else {
            m.kept.push(tok.clone());
            continue;
        };
        let body = body.strip_prefix("loose-").unwrap_or(body);
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n.replace('_', "-"), Some(v.to_string())),
            None => (body.replace('_', "-"), None),
        };
        let slot = match name.as_str() {
            "aria-log-dir-path" => &mut m.aria_log_dir_path,
            "innodb-data-home-dir" => &mut m.innodb_data_home_dir,
            "innodb-log-group-home-dir" => &mut m.innodb_log_group_home_dir,
            "innodb-undo-directory" => &mut m.innodb_undo_directory,
            "innodb-buffer-pool-filename" => &mut m.innodb_buffer_pool_filename,
            "innodb-buffer-pool-size" => &mut m.innodb_buffer_pool_size,
            "innodb-force-recovery" => &mut m.innodb_force_recovery,
            "log-bin" => {
                m.log_bin = Some(value.unwrap_or_default());
                continue;
            }
            "log-bin-index" => &mut m.log_bin_index,
            "log-basename" => &mut m.log_basename,
            "datadir" => &mut m.datadir,
            "defaults-file" | "defaults-extra-file" | "defaults-group-suffix" | "user" | "port" | "socket" => continue,
            _ => {
                m.kept.push(tok.clone());
                continue;
            }
        };
        // A valued option may also take its value from the next argument.
        *slot = match value {
            Some(v) => Some(v),
            None if i < argv.len() && !argv[i].starts_with('-') => {
                i += 1;
                Some(argv[i - 1].clone())
            }
            None => None,
        };
    }
    if m.innodb_force_recovery.as_deref().is_some_and(|v| v.trim() == "0") {
        m.innodb_force_recovery = None;
    }
    m
}

/// Everything the command lines depend on.
#[derive(Debug)]
pub struct Context<'a> {
    pub args: &'a SstArgs,
    pub opts: &'a SstOptions,
    pub mysqld: MysqldArgs,
    /// The SST user (`--user=`); its password goes to `MYSQL_PWD`.
    pub user: Option<&'a str>,
}

fn words(v: Option<&String>) -> impl Iterator<Item = String> + '_ {
    v.into_iter().flat_map(|s| s.split_whitespace().map(str::to_string))
}

impl Context<'_> {
    /// `--defaults-file=…` and friends, for right after the binary name.
    pub fn defaults(&self) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(f) = &self.args.defaults_file {
            v.push(format!("--defaults-file={}", f.display()));
        }
        if let Some(f) = &self.args.defaults_extra_file {
            v.push(format!("--defaults-extra-file={}", f.display()));
        }
        if let Some(s) = &self.args.defaults_group_suffix {
            v.push(format!("--defaults-group-suffix={s}"));
        }
        v
    }

    /// The stock INNOEXTRA: directories and memory from the command line or
    /// `--mysqld-args` (never from the config, which mariadb-backup reads
    /// itself), the user, and the connection.
    pub fn innoextra(&self, connect: bool) -> Vec<String> {
        let a = self.args;
        let m = &self.mysqld;
        let pick = |explicit: Option<&PathBuf>, from_args: Option<&String>| {
            explicit.map(|p| p.display().to_string()).or_else(|| from_args.cloned())
        };
        let mut v = Vec::new();
        let dirs = [
            ("aria-log-dir-path", pick(a.aria_log_dir_path.as_ref(), m.aria_log_dir_path.as_ref())),
            ("innodb-data-home-dir", pick(a.innodb_data_home_dir.as_ref(), m.innodb_data_home_dir.as_ref())),
            ("innodb-log-group-home-dir", pick(a.innodb_log_group_home_dir.as_ref(), m.innodb_log_group_home_dir.as_ref())),
            ("innodb-undo-directory", pick(a.innodb_undo_directory.as_ref(), m.innodb_undo_directory.as_ref())),
            ("innodb-buffer-pool-filename", a.innodb_buffer_pool_filename.clone().or_else(|| m.innodb_buffer_pool_filename.clone())),
        ];
        for (k, val) in dirs {
            if let Some(val) = val {
                v.push(format!("--{k}={val}"));
            }
        }
        if let Some(b) = &m.log_bin {
            v.push(if b.is_empty() { "--log-bin".to_string() } else { format!("--log-bin={b}") });
        }
        if connect {
            if let Some(u) = self.user {
                v.push(format!("--user={u}"));
            }
            if self.opts.use_extra && self.opts.thread_handling.as_deref() == Some("pool-of-threads") {
                if let Some(p) = self.opts.extra_port {
                    v.push("--host=127.0.0.1".into());
                    v.push(format!("--port={p}"));
                }
            } else if let Some(s) = &a.socket {
                v.push(format!("--socket={}", s.display()));
            }
        }
        let memory = self
            .opts
            .use_memory
            .clone()
            .or_else(|| a.innodb_buffer_pool_size.clone())
            .or_else(|| m.innodb_buffer_pool_size.clone())
            .or_else(|| self.opts.innodb_buffer_pool_size.clone());
        if let Some(mem) = memory {
            v.push(format!("--use-memory={mem}"));
        }
        v
    }

    fn mysqld_tail(&self) -> Vec<String> {
        let m = &self.mysqld;
        let mut extra: Vec<String> = Vec::new();
        if let Some(b) = &m.log_basename {
            extra.push(format!("--log-basename={b}"));
        }
        if let Some(b) = &m.log_bin_index {
            extra.push(format!("--log-bin-index={b}"));
        }
        extra.extend(m.kept.iter().cloned());
        if extra.is_empty() {
            return extra;
        }
        let mut v = vec!["--mysqld-args".to_string()];
        v.extend(extra);
        v
    }

    /// `mariadb-backup --backup … --stream=mbstream` (the donor).
    pub fn backup(&self, tmpdir: &Path, target: &Path) -> Vec<String> {
        let mut v = self.defaults();
        v.extend(["--backup".into(), "--no-version-check".into()]);
        v.push(format!("--parallel={}", self.backup_threads()));
        v.push("--databases-exclude=lost+found".into());
        v.extend(words(self.opts.inno_backup_opts.as_ref()));
        v.push(format!("--tmpdir={}", tmpdir.display()));
        v.extend(self.innoextra(true));
        v.extend(["--galera-info".into(), "--stream=mbstream".into()]);
        v.push(format!("--target-dir={}", target.display()));
        v.push(format!("--datadir={}", self.args.datadir.display()));
        v.extend(self.mysqld_tail());
        v
    }

    /// `--parallel` of `--backup`: see [`backup_threads`].
    pub fn backup_threads(&self) -> u32 {
        backup_threads(self.opts.backup_threads, cpus())
    }

    /// `mariadb-backup --prepare` of the received backup (no defaults
    /// file, as the stock script does).
    pub fn prepare(&self, target: &Path) -> Vec<String> {
        let mut v = vec!["--prepare".to_string(), "--no-version-check".into()];
        if let Some(r) = &self.mysqld.innodb_force_recovery {
            v.push(format!("--innodb-force-recovery={r}"));
        }
        v.extend(words(self.opts.inno_apply_opts.as_ref()));
        v.extend(self.innoextra(false));
        v.push(format!("--target-dir={}", target.display()));
        v.push(format!("--datadir={}", target.display()));
        v.extend(self.mysqld_tail());
        v
    }

    /// `mariadb-backup --move-back` into the datadir.
    pub fn move_back(&self, target: &Path) -> Vec<String> {
        let mut v = self.defaults();
        v.extend(["--move-back".into(), "--no-version-check".into()]);
        if let Some(n) = self.opts.backup_threads {
            v.push(format!("--parallel={n}"));
        }
        v.extend(words(self.opts.inno_move_opts.as_ref()));
        v.extend(self.innoextra(false));
        v.extend(["--galera-info".into(), "--force-non-empty-directories".into()]);
        v.push(format!("--target-dir={}", target.display()));
        v.push(format!("--datadir={}", self.args.datadir.display()));
        v
    }
}

/// How many files mariadb-backup copies at once on the donor: `[sst]
/// backup-threads` when set, otherwise two on a donor with two CPUs or
/// more. mariadb-backup reads the datadir with O_DIRECT (the server's
/// flush method), one 1 MiB read at a time per thread, so one thread
/// leaves the disk idle between its reads: measured on a 1.5 GB datadir
/// read cold, 2.5–2.75 s with one thread, 1.83–1.86 s with two,
/// 1.74–1.77 s with four; a delta SST over the 1 Gbit/s rig (the source
/// is the limit there) took 12.1–12.6 s with one and 9.4 s with two (the
/// joiner on ext4), 7.9 s with two and 10.0 s with four (on XFS; the
/// disk is shared with the joiner's reads there) (perf/RESULTS.md). Two
/// keeps most of the gain and leaves the donor's other work its share of
/// the disk.
pub fn backup_threads(configured: Option<u32>, cpus: usize) -> u32 {
    configured.unwrap_or(if cpus >= 2 { 2 } else { 1 })
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

// ------------------------------------------------- streaming a backup

/// Runs mariadb-backup and feeds its mbstream, chunk by chunk, to `f`.
/// Succeeds only if the stream ended cleanly and mariadb-backup exited 0.
pub fn stream_backup(helper: &Helper<'_>, log: &Path, children: &Children, f: &mut Feeder) -> Result<()> {
    let mut child = helper.spawn_streaming(log, children)?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut reader = Reader::new(BufReader::with_capacity(1 << 20, stdout));
    let fed: Result<()> = (|| {
        while let Some(chunk) = reader.next_chunk().map_err(|e| SstError::BadBackup(format!("mariadb-backup's stream is garbled: {e}")))? {
            match chunk {
                Chunk::Payload { path, offset, data } => f.data(strip(&path), offset, &data)?,
                Chunk::Eof { path } => f.end(strip(&path))?,
            }
        }
        Ok(())
    })();
    if fed.is_err() {
        let _ = child.kill();
    }
    let status = child.wait().map_err(|e| SstError::io("waiting for mariadb-backup", e));
    children.remove(child.id());
    crate::syslog::forward_log("backup", log);
    // mariadb-backup's own failure explains a truncated stream best.
    helper.check(status?, log)?;
    fed
}

fn strip(path: &str) -> &[u8] {
    path.strip_prefix("./").unwrap_or(path).as_bytes()
}

/// Sends `first` files (name, content), then the backup `helper` streams,
/// in one streamed session. A failure of mariadb-backup or of its stream is
/// returned as that error, not as the engine's summary of it.
pub fn send_backup_stream(
    target: &str,
    token: &Token,
    cfg: &SendConfig,
    helper: &Helper<'_>,
    log: &Path,
    children: &Children,
    first: &[(&str, &[u8])],
) -> Result<Summary> {
    let failure = std::sync::Mutex::new(None);
    let sent = send_streamed(target, token, cfg, |f| {
        for (name, content) in first {
            f.file_bytes(name.as_bytes(), content)?;
        }
        stream_backup(helper, log, children, f).map_err(|e| {
            let msg = e.to_string();
            *failure.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e);
            EngineError::Config(msg)
        })
    });
    sent.map_err(|e| failure.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner).unwrap_or(SstError::Transfer(e)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args;
    use crate::mycnf::{MemFiles, Sources};

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_string()).collect()
    }

    #[test]
    fn mysqld_args_are_split_as_the_stock_parser_splits_them() {
        let m = split_mysqld_args(&s(&[
            "--defaults-file=/etc/my.cnf",
            "--wsrep-new-cluster",
            "--loose-innodb_undo_directory=/undo",
            "--innodb-log-group-home-dir",
            "/redo",
            "--log-bin",
            "--user=mysql",
            "-h",
            "/data",
            "-P3306",
            "--innodb-force-recovery=0",
            "--",
            "--literal",
        ]));
        assert_eq!(m.innodb_undo_directory.as_deref(), Some("/undo"));
        assert_eq!(m.innodb_log_group_home_dir.as_deref(), Some("/redo"));
        assert_eq!(m.log_bin.as_deref(), Some(""));
        assert_eq!(m.datadir.as_deref(), Some("/data"));
        assert_eq!(m.innodb_force_recovery, None, "0 is dropped");
        assert_eq!(m.kept, s(&["--wsrep-new-cluster", "--literal"]));
    }

    #[test]
    fn the_donor_copies_two_files_at_once_unless_told_otherwise() {
        assert_eq!(backup_threads(None, 1), 1, "one CPU: one thread");
        assert_eq!(backup_threads(None, 2), 2);
        assert_eq!(backup_threads(None, 64), 2, "more CPUs do not mean a faster disk");
        assert_eq!(backup_threads(Some(1), 8), 1, "backup-threads wins");
        assert_eq!(backup_threads(Some(6), 2), 6);
    }

    #[test]
    fn command_lines_match_the_stock_order_and_never_carry_a_password() {
        let argv = s(&[
            "--role",
            "donor",
            "--address",
            "127.0.0.1:4444/sluice_x//1",
            "--socket",
            "/run/my.sock",
            "--datadir",
            "/var/lib/mysql/",
            "--defaults-file",
            "/etc/my.cnf",
            "--gtid",
            "u:1",
            "--mysqld-args",
            "--defaults-file=/etc/my.cnf",
            "--wsrep-new-cluster",
        ]);
        let a = args::parse(&argv).unwrap();
        let cnf = "[sst]\ninno-backup-opts=--ftwrl-wait-timeout=30 --x\nbackup-threads=4\n[mariabackup]\nuse-memory=1G\n";
        let opts = crate::options::load(
            &MemFiles::new(&[("/my.cnf", cnf)]),
            &Sources { defaults_file: Some("/my.cnf".into()), ..Sources::default() },
        )
        .unwrap();
        let ctx = Context { args: &a, opts: &opts, mysqld: split_mysqld_args(&a.mysqld_args), user: Some("sst") };
        let b = ctx.backup(Path::new("/tmp/x"), Path::new("/tmp/t"));
        assert_eq!(
            b,
            s(&[
                "--defaults-file=/etc/my.cnf",
                "--backup",
                "--no-version-check",
                "--parallel=4",
                "--databases-exclude=lost+found",
                "--ftwrl-wait-timeout=30",
                "--x",
                "--tmpdir=/tmp/x",
                "--user=sst",
                "--socket=/run/my.sock",
                "--use-memory=1G",
                "--galera-info",
                "--stream=mbstream",
                "--target-dir=/tmp/t",
                "--datadir=/var/lib/mysql",
                "--mysqld-args",
                "--wsrep-new-cluster",
            ])
        );
        let p = ctx.prepare(Path::new("/d/.sst"));
        assert_eq!(p[..2], s(&["--prepare", "--no-version-check"]));
        assert!(!p.iter().any(|x| x.starts_with("--defaults-file") || x.starts_with("--user")), "{p:?}");
        let m = ctx.move_back(Path::new("/d/.sst"));
        assert_eq!(m[0], "--defaults-file=/etc/my.cnf");
        assert!(m.contains(&"--force-non-empty-directories".to_string()));
        assert!(m.contains(&"--target-dir=/d/.sst".to_string()) && m.contains(&"--datadir=/var/lib/mysql".to_string()));
    }
}
