//! The typed `[sst]` option set (shared/SST-PROTOCOL.md §4), read once from
//! the option files and validated.
//!
//! Lookup follows the stock scripts: a key is read from a list of groups,
//! the first group with a non-empty value wins, and inside a group the last
//! occurrence wins; keys match with `_` as `-` and without `loose-`. The
//! server groups (`--mysqld`: what `my_print_defaults --mysqld` reads on
//! 10.11) come first for the "encgroups" keys, so `[mysqld]` beats `[sst]`
//! there. An invalid value is an error naming the key, the file and line it
//! came from, and the accepted values. Honouring every key end to end is
//! the SST flows' job; this module parses them all.

use std::path::PathBuf;

use crate::mycnf::{self, Files, MycnfError, OptionLine, Sources};
use sluice_engine::net::tls::TlsMode;

/// The groups `my_print_defaults --mysqld` reads on MariaDB 10.11
/// (measured with the real binary).
pub const MYSQLD_GROUPS: &[&str] =
    &["mysqld", "server", "mysqld-10.11", "mariadb", "mariadb-10.11", "mariadbd", "mariadbd-10.11", "client-server", "galera"];

/// A list of group sets, tried in order.
type GroupList = &'static [&'static [&'static str]];
const SST: GroupList = &[&["sst"]];
const BK: GroupList = &[&["sst"], &["xtrabackup"], &["mariabackup"]];
const ENC: GroupList = &[MYSQLD_GROUPS, &["sst"], &["xtrabackup"], &["mariabackup"]];
const MYSQLD: GroupList = &[MYSQLD_GROUPS];
const MYSQLD_SAFE: GroupList = &[&["mysqld_safe"]];

/// An invalid option value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OptionError {
    #[error(transparent)]
    Files(#[from] MycnfError),
    #[error("invalid value {value:?} for `{key}` in {file}:{line}; accepted: {accepted}")]
    Invalid { key: &'static str, value: String, file: String, line: usize, accepted: &'static str },
}

impl OptionError {
    /// The stock exit code: 22 for a bad value, 2 for unreadable files.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Files(_) => 2,
            Self::Invalid { .. } => 22,
        }
    }
}

/// Every key the stock mariabackup method reads, plus sluice's own.
#[derive(Clone, PartialEq, Eq)]
pub struct SstOptions {
    pub streamfmt: String,
    pub transferfmt: String,
    pub sockopt: Option<String>,
    pub rlimit: Option<u64>,
    pub compressor: Option<String>,
    pub decompressor: Option<String>,
    pub encrypt: u8,
    pub encrypt_algo: Option<String>,
    pub encrypt_format: String,
    pub encrypt_key: Option<String>,
    pub encrypt_key_file: Option<PathBuf>,
    pub encrypt_threads: Option<u32>,
    pub encrypt_chunk_size: Option<String>,
    pub ssl_mode: TlsMode,
    pub tca: Option<PathBuf>,
    pub tcapath: Option<PathBuf>,
    pub tcert: Option<PathBuf>,
    pub tkey: Option<PathBuf>,
    pub ssl_ca: Option<PathBuf>,
    pub ssl_capath: Option<PathBuf>,
    pub ssl_cert: Option<PathBuf>,
    pub ssl_key: Option<PathBuf>,
    pub ssl_dhparams: Option<PathBuf>,
    pub progress: Option<String>,
    pub time: bool,
    pub cpat: Option<String>,
    pub use_extra: bool,
    pub thread_handling: Option<String>,
    pub extra_port: Option<u16>,
    pub inno_backup_opts: Option<String>,
    pub inno_apply_opts: Option<String>,
    pub inno_move_opts: Option<String>,
    pub use_memory: Option<String>,
    pub sst_initial_timeout: u64,
    pub sst_syslog: i32,
    pub syslog: bool,
    pub syslog_tag: Option<String>,
    pub sst_log_archive: bool,
    pub sst_log_archive_dir: PathBuf,
    pub compress: Option<String>,
    pub compress_chunk_size: Option<String>,
    pub compress_threads: Option<u32>,
    pub backup_threads: Option<u32>,
    pub tmpdir: Option<PathBuf>,
    pub wsrep_sst_auth: Option<String>,
    pub innodb_data_home_dir: Option<PathBuf>,
    pub innodb_log_group_home_dir: Option<PathBuf>,
    pub innodb_undo_directory: Option<PathBuf>,
    pub aria_log_dir_path: Option<PathBuf>,
    pub log_bin: Option<String>,
    pub log_bin_index: Option<String>,
    pub log_basename: Option<String>,
    pub innodb_buffer_pool_size: Option<String>,
    /// sluice: parallel streams (`streams` in `[sst]`); set alone, a fixed
    /// count.
    pub streams: Option<u16>,
    /// sluice: the most streams the donor adds while each one makes the
    /// transfer faster (`max-streams`; default: 4 × `streams`' default, at
    /// most 16, when `streams` is not set).
    pub max_streams: Option<u16>,
    /// sluice: `backup` (mariadb-backup, the default) or `copy`.
    pub mode: String,
    /// sluice: `refuse` (default) or `clean` when old and new data do not
    /// fit side by side.
    pub low_space: String,
    /// sluice: the mariadb-backup binary that runs `--prepare` and
    /// `--move-back` on the joiner.
    pub prepare_binary: Option<PathBuf>,
    /// sluice: the JSON status file (default `<datadir>/sluice_sst_status.json`).
    pub status_file: Option<PathBuf>,
    /// Seconds without progress in any stage before the SST gives up
    /// (`sst-idle-timeout`, as PXC names it; 0 = never).
    pub sst_idle_timeout: u64,
    /// Seconds a broken SST connection waits to come back and resume
    /// (`resume-window`; 0 = fail at the first break).
    pub resume_window: u64,
    /// sluice: whether a copy-mode donor sends only the pages the
    /// joiner's old datadir lacks (`delta`): `Some(true)` on, `Some(false)`
    /// off, `None` (`auto`, the default) on unless the joiner is on this
    /// host, where hashing both copies costs more than sending.
    pub delta: Option<bool>,
    /// Every `plugin-load`/`plugin-load-add` value of the server groups.
    pub plugin_load: Vec<String>,
    pub file_key_management_filename: Option<PathBuf>,
    pub file_key_management_filekey: Option<String>,
    pub innodb_encrypt_tables: Option<String>,
    pub innodb_encrypt_log: Option<String>,
    /// The server's own settings, for `sluice check`: `wsrep_sst_auth`,
    /// `socket`, `datadir`, `wsrep_sst_receive_address`, `wsrep_node_address`.
    pub server_sst_auth: Option<String>,
    pub server_socket: Option<PathBuf>,
    pub server_datadir: Option<PathBuf>,
    pub wsrep_sst_receive_address: Option<String>,
    pub wsrep_node_address: Option<String>,
}

impl std::fmt::Debug for SstOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SstOptions")
            .field("encrypt", &self.encrypt)
            .field("ssl_mode", &self.ssl_mode)
            .field("compressor", &self.compressor)
            .field("rlimit", &self.rlimit)
            .field("encrypt_key", &self.encrypt_key.as_ref().map(|_| "<redacted>"))
            .field("wsrep_sst_auth", &self.wsrep_sst_auth.as_ref().map(|_| "<redacted>"))
            .field("server_sst_auth", &self.server_sst_auth.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// Looks keys up in the loaded option lines.
struct Lookup {
    lines: Vec<OptionLine>,
    suffix: Option<String>,
}

impl Lookup {
    fn in_set(&self, group: &str, set: &[&str]) -> bool {
        set.iter()
            .any(|g| group.eq_ignore_ascii_case(g) || self.suffix.as_ref().is_some_and(|s| group.eq_ignore_ascii_case(&format!("{g}{s}"))))
    }

    /// The winning line for `key`: first group set with a non-empty value,
    /// last occurrence inside it.
    fn get(&self, key: &str, groups: GroupList) -> Option<&OptionLine> {
        groups.iter().find_map(|set| {
            self.lines
                .iter()
                .rev()
                .find(|o| self.in_set(&o.group, set) && o.name() == key && o.value.as_deref().is_some_and(|v| !v.is_empty()))
        })
    }

    /// Every non-empty value of `key` in `groups`, in file order.
    fn all(&self, key: &str, groups: GroupList) -> Vec<String> {
        self.lines
            .iter()
            .filter(|o| groups.iter().any(|set| self.in_set(&o.group, set)) && o.name() == key)
            .filter_map(|o| o.value.clone().filter(|v| !v.is_empty()))
            .collect()
    }

    fn present(&self, key: &str, groups: GroupList) -> bool {
        groups.iter().any(|set| self.lines.iter().any(|o| self.in_set(&o.group, set) && o.name() == key))
    }

    fn string(&self, key: &str, groups: GroupList) -> Option<String> {
        self.get(key, groups).and_then(|o| o.value.clone())
    }

    fn path(&self, key: &str, groups: GroupList) -> Option<PathBuf> {
        self.string(key, groups).map(PathBuf::from)
    }

    fn parsed<T>(
        &self,
        key: &'static str,
        groups: GroupList,
        accepted: &'static str,
        f: impl Fn(&str) -> Option<T>,
    ) -> Result<Option<T>, OptionError> {
        let Some(o) = self.get(key, groups) else { return Ok(None) };
        let v = o.value.as_deref().unwrap_or("");
        f(v.trim()).map(Some).ok_or_else(|| OptionError::Invalid {
            key,
            value: v.to_string(),
            file: o.file.display().to_string(),
            line: o.line,
            accepted,
        })
    }

    fn number<T: std::str::FromStr>(&self, key: &'static str, groups: GroupList, accepted: &'static str) -> Result<Option<T>, OptionError> {
        self.parsed(key, groups, accepted, |v| v.parse().ok())
    }

    fn flag(&self, key: &'static str, groups: GroupList, default: bool) -> Result<bool, OptionError> {
        Ok(self.parsed(key, groups, "0, 1, on, off, yes, no, true, false", parse_bool)?.unwrap_or(default))
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "on" | "yes" | "true" => Some(true),
        "0" | "off" | "no" | "false" => Some(false),
        _ => None,
    }
}

impl SstOptions {
    /// The options of one option file's text (for tests of other modules).
    #[cfg(test)]
    pub(crate) fn from_cnf(cnf: &str) -> Result<Self, OptionError> {
        load(&crate::mycnf::MemFiles::new(&[("/my.cnf", cnf)]), &Sources { defaults_file: Some("/my.cnf".into()), ..Sources::default() })
    }

    /// The options of an empty configuration (for tests of other modules).
    #[cfg(test)]
    pub(crate) fn defaults_for_test() -> Self {
        Self::from_cnf("").expect("an empty file parses")
    }
}

/// Reads and validates every option.
pub fn load(files: &dyn Files, sources: &Sources) -> Result<SstOptions, OptionError> {
    let mut groups: Vec<&str> = MYSQLD_GROUPS.to_vec();
    groups.extend(["sst", "xtrabackup", "mariabackup", "mysqld_safe"]);
    let l = Lookup { lines: mycnf::load(files, sources, &groups)?, suffix: sources.group_suffix.clone() };
    let encrypt = l.number::<u8>("encrypt", ENC, "0, 1, 2, 3 or 4")?.unwrap_or(0);
    if encrypt > 4 {
        let o = l.get("encrypt", ENC).expect("the value came from a line");
        return Err(OptionError::Invalid {
            key: "encrypt",
            value: encrypt.to_string(),
            file: o.file.display().to_string(),
            line: o.line,
            accepted: "0, 1, 2, 3 or 4",
        });
    }
    let ssl_mode =
        l.parsed("ssl-mode", ENC, "DISABLED, REQUIRED, VERIFY_CA or VERIFY_IDENTITY", |v| v.parse::<TlsMode>().ok())?.unwrap_or_default();
    if !l.flag("sst-special-dirs", SST, true)? {
        tracing::warn!("sst-special-dirs=0 is not supported (as in the stock script); using 1");
    }
    Ok(SstOptions {
        streamfmt: l.string("streamfmt", SST).unwrap_or_else(|| "mbstream".into()),
        transferfmt: l.string("transferfmt", SST).unwrap_or_else(|| "socat".into()),
        sockopt: l.string("sockopt", SST),
        rlimit: l.parsed("rlimit", SST, "a byte rate such as 80m, 200M or 1G", |v| sluice_engine::throttle::parse_bytes(v).ok())?,
        compressor: l.string("compressor", SST),
        decompressor: l.string("decompressor", SST),
        encrypt,
        encrypt_algo: l.string("encrypt-algo", ENC),
        encrypt_format: l
            .parsed("encrypt-format", ENC, "openssl or xbcrypt", |v| {
                ["openssl", "xbcrypt"].contains(&v.to_ascii_lowercase().as_str()).then(|| v.to_ascii_lowercase())
            })?
            .unwrap_or_else(|| "openssl".into()),
        encrypt_key: {
            // A secret inline in a file others can read is not secret
            // (SECURITY.md F15): say so, with the fix.
            if let Some(o) = l.get("encrypt-key", ENC) {
                use std::os::unix::fs::PermissionsExt;
                if std::fs::metadata(&o.file).is_ok_and(|m| m.permissions().mode() & 0o004 != 0) {
                    tracing::warn!(
                        "encrypt-key is set in {} (line {}), which every user can read: move the key to a file only the SST user can read and set encrypt-key-file instead",
                        o.file.display(),
                        o.line
                    );
                }
            }
            l.string("encrypt-key", ENC)
        },
        encrypt_key_file: l.path("encrypt-key-file", ENC),
        encrypt_threads: l.number("encrypt-threads", ENC, "a whole number")?,
        encrypt_chunk_size: l.string("encrypt-chunk-size", ENC),
        ssl_mode,
        tca: l.path("tca", SST),
        tcapath: l.path("tcapath", SST),
        tcert: l.path("tcert", SST),
        tkey: l.path("tkey", SST),
        ssl_ca: l.path("ssl-ca", ENC),
        ssl_capath: l.path("ssl-capath", ENC),
        ssl_cert: l.path("ssl-cert", ENC),
        ssl_key: l.path("ssl-key", ENC),
        ssl_dhparams: l.path("ssl-dhparams", ENC),
        progress: l.string("progress", SST),
        time: l.flag("time", SST, false)?,
        cpat: l.string("cpat", SST),
        use_extra: l.flag("use-extra", SST, false)?,
        thread_handling: l.string("thread-handling", MYSQLD),
        extra_port: l.number("extra-port", MYSQLD, "a port number")?,
        inno_backup_opts: l.string("inno-backup-opts", BK),
        inno_apply_opts: l.string("inno-apply-opts", BK),
        inno_move_opts: l.string("inno-move-opts", BK),
        use_memory: l.string("use-memory", BK),
        sst_initial_timeout: l.number("sst-initial-timeout", SST, "seconds (0 = no limit)")?.unwrap_or(300),
        sst_syslog: l.number("sst-syslog", SST, "-1, 0 or 1")?.unwrap_or(0),
        syslog: l.present("syslog", MYSQLD_SAFE),
        syslog_tag: l.string("syslog-tag", MYSQLD_SAFE),
        sst_log_archive: l.flag("sst-log-archive", SST, true)?,
        sst_log_archive_dir: l.path("sst-log-archive-dir", SST).unwrap_or_else(|| PathBuf::from("/tmp/sst_log_archive")),
        compress: l.string("compress", ENC).filter(|c| !c.eq_ignore_ascii_case("none")),
        compress_chunk_size: l.string("compress-chunk-size", ENC),
        compress_threads: l.number("compress-threads", ENC, "a whole number")?,
        backup_threads: l.number("backup-threads", ENC, "a whole number")?,
        tmpdir: l.path("tmpdir", ENC),
        wsrep_sst_auth: l.string("wsrep-sst-auth", SST),
        innodb_data_home_dir: l.path("innodb-data-home-dir", MYSQLD),
        innodb_log_group_home_dir: l.path("innodb-log-group-home-dir", MYSQLD),
        innodb_undo_directory: l.path("innodb-undo-directory", MYSQLD),
        aria_log_dir_path: l.path("aria-log-dir-path", MYSQLD),
        // `log-bin` without a value turns the binary log on with the default name.
        log_bin: l.string("log-bin", MYSQLD).or_else(|| l.present("log-bin", MYSQLD).then(String::new)),
        log_bin_index: l.string("log-bin-index", MYSQLD),
        log_basename: l.string("log-basename", MYSQLD),
        innodb_buffer_pool_size: l.string("innodb-buffer-pool-size", MYSQLD),
        streams: l.parsed("streams", SST, "1 to 256", |v| v.parse::<u16>().ok().filter(|n| (1..=256).contains(n)))?,
        max_streams: l.parsed("max-streams", SST, "1 to 256", |v| v.parse::<u16>().ok().filter(|n| (1..=256).contains(n)))?,
        mode: l
            .parsed("mode", SST, "backup or copy", |v| {
                ["backup", "copy"].contains(&v.to_ascii_lowercase().as_str()).then(|| v.to_ascii_lowercase())
            })?
            .unwrap_or_else(|| "backup".into()),
        low_space: l
            .parsed("low-space", SST, "refuse or clean", |v| {
                ["refuse", "clean"].contains(&v.to_ascii_lowercase().as_str()).then(|| v.to_ascii_lowercase())
            })?
            .unwrap_or_else(|| "refuse".into()),
        prepare_binary: l.path("prepare-binary", SST),
        status_file: l.path("status-file", SST),
        sst_idle_timeout: l.number("sst-idle-timeout", SST, "seconds (0 = never)")?.unwrap_or(120),
        resume_window: l.number("resume-window", SST, "seconds (0 = off)")?.unwrap_or(600),
        delta: l
            .parsed("delta", SST, "auto, on or off", |v| if v.eq_ignore_ascii_case("auto") { Some(None) } else { parse_bool(v).map(Some) })?
            .flatten(),
        plugin_load: [l.all("plugin-load", MYSQLD), l.all("plugin-load-add", MYSQLD)].concat(),
        file_key_management_filename: l.path("file-key-management-filename", MYSQLD),
        file_key_management_filekey: l.string("file-key-management-filekey", MYSQLD),
        innodb_encrypt_tables: l.string("innodb-encrypt-tables", MYSQLD),
        innodb_encrypt_log: l.string("innodb-encrypt-log", MYSQLD),
        server_sst_auth: l.string("wsrep-sst-auth", MYSQLD),
        server_socket: l.path("socket", MYSQLD),
        server_datadir: l.path("datadir", MYSQLD),
        wsrep_sst_receive_address: l.string("wsrep-sst-receive-address", MYSQLD),
        wsrep_node_address: l.string("wsrep-node-address", MYSQLD),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(cnf: &str) -> Result<SstOptions, OptionError> {
        SstOptions::from_cnf(cnf)
    }

    #[test]
    fn defaults_when_nothing_is_set() {
        let o = opts("[mysqld]\ndatadir=/d\n").unwrap();
        assert_eq!((o.encrypt, o.ssl_mode, o.sst_initial_timeout, o.sst_log_archive), (0, TlsMode::Disabled, 300, true));
        assert_eq!((o.streamfmt.as_str(), o.transferfmt.as_str(), o.mode.as_str()), ("mbstream", "socat", "backup"));
        assert_eq!(o.sst_log_archive_dir, PathBuf::from("/tmp/sst_log_archive"));
        assert_eq!((o.low_space.as_str(), o.sst_idle_timeout, o.status_file.as_ref()), ("refuse", 120, None));
        assert_eq!(o.resume_window, 600);
        assert_eq!(o.delta, None, "delta is auto by default");
    }

    #[test]
    fn sluice_keys_and_encryption_settings_are_read() {
        let o = opts(
            "[mysqld]\nplugin_load_add=file_key_management\nloose-file-key-management-filename=/etc/mysql/keys.txt\n\
             innodb_encrypt_tables=ON\n[galera]\nplugin-load-add=auth_pam\n\
             [sst]\nlow-space=clean\nsst-idle-timeout=0\nresume-window=30\ndelta=off\nstatus-file=/run/sst.json\nprepare-binary=/opt/mb/bin/mariadb-backup\n",
        )
        .unwrap();
        assert_eq!(o.plugin_load, ["file_key_management", "auth_pam"]);
        assert_eq!(o.file_key_management_filename, Some(PathBuf::from("/etc/mysql/keys.txt")));
        assert_eq!((o.low_space.as_str(), o.sst_idle_timeout), ("clean", 0));
        assert_eq!(o.resume_window, 30);
        assert_eq!(o.delta, Some(false));
        assert_eq!(o.status_file, Some(PathBuf::from("/run/sst.json")));
        assert_eq!(o.prepare_binary, Some(PathBuf::from("/opt/mb/bin/mariadb-backup")));
        assert!(opts("[sst]\nlow-space=maybe\n").unwrap_err().to_string().contains("refuse or clean"));
    }

    #[test]
    fn server_groups_beat_sst_for_encgroups_and_last_occurrence_wins() {
        let o = opts(
            "[sst]\nencrypt=3\nssl-mode=VERIFY_CA\ncompressor=\"zstd -1\"\ncompressor=\"lz4 -z\"\nrlimit=80m\nstreams=4\n\
             [mariadb]\nssl_mode=required\n[mysqld]\nencrypt=4\ninnodb_undo_directory=/undo\n[mariabackup]\nuse_memory=2G\n\
             [mysqld_safe]\nsyslog\n",
        )
        .unwrap();
        assert_eq!(o.encrypt, 4, "[mysqld] beats [sst] for encrypt");
        assert_eq!(o.ssl_mode, TlsMode::Required);
        assert_eq!(o.compressor.as_deref(), Some("lz4 -z"));
        assert_eq!((o.rlimit, o.streams, o.max_streams), (Some(80 << 20), Some(4), None));
        assert_eq!(opts("[sst]\nmax-streams=12\n").unwrap().max_streams, Some(12));
        assert_eq!(o.innodb_undo_directory, Some(PathBuf::from("/undo")));
        assert_eq!(o.use_memory.as_deref(), Some("2G"));
        assert!(o.syslog);
    }

    #[test]
    fn empty_values_fall_through_to_the_next_group() {
        let o = opts("[mysqld]\ntmpdir=\n[sst]\ntmpdir=/fast\n").unwrap();
        assert_eq!(o.tmpdir, Some(PathBuf::from("/fast")));
    }

    #[test]
    fn invalid_values_name_key_file_line_and_accepted_values() {
        let e = opts("[sst]\n\nrlimit=12Q\n").unwrap_err();
        assert_eq!(e.exit_code(), 22);
        let msg = e.to_string();
        assert!(msg.contains("`rlimit`") && msg.contains("/my.cnf:3") && msg.contains("12Q") && msg.contains("80m"), "{msg}");
        assert!(opts("[sst]\nencrypt=7\n").unwrap_err().to_string().contains("0, 1, 2, 3 or 4"));
        assert!(opts("[sst]\nssl-mode=PREFERRED\n").unwrap_err().to_string().contains("VERIFY_IDENTITY"));
        assert!(opts("[sst]\nstreams=0\n").unwrap_err().to_string().contains("1 to 256"));
        assert!(opts("[sst]\nmax-streams=300\n").unwrap_err().to_string().contains("`max-streams`"));
        assert!(opts("[sst]\ntime=maybe\n").unwrap_err().to_string().contains("`time`"));
        assert!(opts("[sst]\nmode=rsync\n").unwrap_err().to_string().contains("backup or copy"));
    }

    #[test]
    fn secrets_never_reach_debug_output() {
        let o = opts("[sst]\nwsrep-sst-auth=root:hunter2\nencrypt-key=topsecret\n").unwrap();
        let d = format!("{o:?}");
        assert!(!d.contains("hunter2") && !d.contains("topsecret"), "{d}");
    }
}
