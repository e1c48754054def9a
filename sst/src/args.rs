//! The arguments mysqld passes to an SST script (shared/SST-PROTOCOL.md §1,
//! shared/MARIADB-OBSERVED.md §3–4), in old and new conventions.
//!
//! `--opt value` and `--opt=value` both work; values are trimmed; numbers
//! are checked; `--mysqld-args` takes the rest of argv; unknown options are
//! kept aside (and ignored), as the stock parser does. The role defaults to
//! donor; `--datadir` is required. Errors carry the stock exit codes. The
//! legacy `--password` never appears in `Debug` output.

use std::path::PathBuf;

/// Which side of the transfer this process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Donor,
    Joiner,
}

/// `--address`, split as the stock scripts split it:
/// `host[:port][/module[/lsn[/sst_ver]]]`, IPv6 hosts in brackets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SstAddress {
    /// The host as given (brackets kept for IPv6).
    pub host: String,
    pub port: Option<u16>,
    pub module: Option<String>,
    pub lsn: Option<String>,
    pub sst_ver: Option<String>,
}

/// The stock default SST port.
pub const DEFAULT_PORT: u16 = 4444;

impl SstAddress {
    pub fn parse(s: &str) -> Result<Self, ArgsError> {
        let s = s.trim();
        let bad = || ArgsError::Invalid { option: "--address", value: s.to_string() };
        let (host, rest) = if s.starts_with('[') {
            let end = s.find(']').ok_or_else(bad)?;
            (&s[..=end], &s[end + 1..])
        } else {
            let end = s.find([':', '/']).unwrap_or(s.len());
            (&s[..end], &s[end..])
        };
        if host.is_empty() || host == "[]" {
            return Err(bad());
        }
        let (port, path) = match rest.strip_prefix(':') {
            Some(r) => {
                let end = r.find('/').unwrap_or(r.len());
                (Some(r[..end].parse::<u16>().map_err(|_| bad())?), &r[end..])
            }
            None => (None, rest),
        };
        let mut parts = path.strip_prefix('/').map(|p| p.split('/').map(str::to_string)).into_iter().flatten();
        let opt = |x: Option<String>| x.filter(|v| !v.is_empty());
        Ok(Self { host: host.to_string(), port, module: opt(parts.next()), lsn: opt(parts.next()), sst_ver: opt(parts.next()) })
    }

    /// The host without IPv6 brackets.
    pub fn host_unbracketed(&self) -> &str {
        self.host.trim_start_matches('[').trim_end_matches(']')
    }

    pub fn port_or_default(&self) -> u16 {
        self.port.unwrap_or(DEFAULT_PORT)
    }
}

/// Everything mysqld may pass.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SstArgs {
    pub role: Option<Role>,
    pub address: Option<SstAddress>,
    pub datadir: PathBuf,
    pub defaults_file: Option<PathBuf>,
    pub defaults_extra_file: Option<PathBuf>,
    pub defaults_group_suffix: Option<String>,
    pub parent: Option<u32>,
    pub progress: bool,
    pub binlog: Option<String>,
    pub binlog_index: Option<String>,
    pub local_port: Option<u16>,
    pub port: Option<u16>,
    pub socket: Option<PathBuf>,
    pub host: Option<String>,
    pub gtid: Option<String>,
    pub gtid_domain_id: Option<u64>,
    pub bypass: bool,
    pub mysql_migrate: bool,
    pub user: Option<String>,
    pub password: Option<String>,
    pub innodb_data_home_dir: Option<PathBuf>,
    pub innodb_log_group_home_dir: Option<PathBuf>,
    pub innodb_undo_directory: Option<PathBuf>,
    pub aria_log_dir_path: Option<PathBuf>,
    pub innodb_buffer_pool_filename: Option<String>,
    pub innodb_buffer_pool_size: Option<String>,
    pub log_basename: Option<String>,
    pub tmpdir: Option<PathBuf>,
    /// mysqld's own argv (everything after `--mysqld-args`).
    pub mysqld_args: Vec<String>,
    /// Options this parser does not know (ignored, for the log).
    pub ignored: Vec<String>,
}

impl std::fmt::Debug for SstArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SstArgs")
            .field("role", &self.role())
            .field("address", &self.address)
            .field("datadir", &self.datadir)
            .field("parent", &self.parent)
            .field("gtid", &self.gtid)
            .field("bypass", &self.bypass)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl SstArgs {
    /// The role; the stock parser defaults to donor.
    pub fn role(&self) -> Role {
        self.role.unwrap_or(Role::Donor)
    }
}

/// Bad arguments, with the exit code the stock scripts use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    #[error("invalid --role {0:?}: must be donor or joiner")]
    Role(String),
    #[error("the '--datadir' parameter must be passed to the SST script")]
    NoDatadir,
    #[error("{option} needs a value")]
    Missing { option: &'static str },
    #[error("invalid value for {option}: {value:?}")]
    Invalid { option: &'static str, value: String },
    #[error("the port in --address ({address}) differs from --port ({port})")]
    PortMismatch { address: u16, port: u16 },
}

impl ArgsError {
    /// The exit status the stock scripts use for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Role(_) | Self::Invalid { .. } | Self::Missing { .. } => 22,
            Self::NoDatadir | Self::PortMismatch { .. } => 2,
        }
    }
}

/// Options that take a value, by their canonical name.
const VALUED: &[&str] = &[
    "role",
    "address",
    "datadir",
    "defaults-file",
    "defaults-extra-file",
    "defaults-group-suffix",
    "parent",
    "progress",
    "binlog",
    "log-bin",
    "binlog-index",
    "log-bin-index",
    "local-port",
    "port",
    "socket",
    "host",
    "gtid",
    "gtid-domain-id",
    "user",
    "password",
    "auth",
    "innodb-data-home-dir",
    "innodb-log-group-home-dir",
    "innodb-undo-directory",
    "aria-log-dir-path",
    "innodb-buffer-pool-filename",
    "innodb-buffer-pool-size",
    "log-basename",
    "tmpdir",
    "sst-tmpdir",
];

/// Parses argv (without the program name).
pub fn parse(argv: &[String]) -> Result<SstArgs, ArgsError> {
    let mut a = SstArgs::default();
    let mut i = 0;
    while i < argv.len() {
        let tok = &argv[i];
        i += 1;
        let Some(body) = tok.strip_prefix("--") else {
            a.ignored.push(tok.clone());
            continue;
        };
        if body == "mysqld-args" {
            a.mysqld_args = argv[i..].iter().filter(|s| !s.is_empty()).cloned().collect();
            break;
        }
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n.replace('_', "-"), Some(v.to_string())),
            None => (body.replace('_', "-"), None),
        };
        match name.as_str() {
            "bypass" => a.bypass = true,
            "mysql-migrate" => a.mysql_migrate = true,
            n if VALUED.contains(&n) => {
                let v = match inline {
                    Some(v) => v,
                    None if i < argv.len() => {
                        i += 1;
                        argv[i - 1].clone()
                    }
                    None => return Err(ArgsError::Missing { option: static_name(n) }),
                };
                set(&mut a, n, v.trim())?;
            }
            _ => a.ignored.push(tok.clone()),
        }
    }
    if a.datadir.as_os_str().is_empty() {
        return Err(ArgsError::NoDatadir);
    }
    if let (Some(ap), Some(p)) = (a.address.as_ref().and_then(|x| x.port), a.port) {
        if ap != p {
            return Err(ArgsError::PortMismatch { address: ap, port: p });
        }
    }
    Ok(a)
}

fn static_name(n: &str) -> &'static str {
    VALUED.iter().find(|v| **v == n).copied().unwrap_or("option")
}

fn number<T: std::str::FromStr>(option: &str, v: &str) -> Result<T, ArgsError> {
    v.trim_matches('\'').parse().map_err(|_| ArgsError::Invalid { option: static_name(option), value: v.to_string() })
}

fn set(a: &mut SstArgs, name: &str, v: &str) -> Result<(), ArgsError> {
    let v = v.trim_matches('\'');
    let s = || Some(v.to_string());
    let p = || Some(PathBuf::from(v));
    match name {
        "role" => {
            a.role = Some(match v {
                "donor" => Role::Donor,
                "joiner" => Role::Joiner,
                _ => return Err(ArgsError::Role(v.to_string())),
            });
        }
        "address" => a.address = Some(SstAddress::parse(v)?),
        "datadir" => a.datadir = PathBuf::from(v.trim_end_matches('/')).components().collect(),
        "defaults-file" => a.defaults_file = p(),
        "defaults-extra-file" => a.defaults_extra_file = p(),
        "defaults-group-suffix" => a.defaults_group_suffix = s(),
        "parent" => a.parent = Some(number(name, v)?),
        "progress" => a.progress = number::<u32>(name, v)? != 0,
        "binlog" | "log-bin" => a.binlog = s(),
        "binlog-index" | "log-bin-index" => a.binlog_index = s(),
        "local-port" => a.local_port = Some(number(name, v)?),
        "port" => a.port = Some(number(name, v)?),
        "socket" => a.socket = p(),
        "host" => a.host = s(),
        "gtid" => a.gtid = s(),
        "gtid-domain-id" => a.gtid_domain_id = Some(number(name, v)?),
        "user" => a.user = s(),
        "password" => a.password = s(),
        // Pre-2015 servers passed `--auth user:password`; the password goes
        // to `password`, never to a log.
        "auth" => {
            if let Some((u, pw)) = v.split_once(':') {
                a.user = Some(u.to_string());
                a.password = Some(pw.to_string());
            } else {
                a.user = s();
            }
        }
        "innodb-data-home-dir" => a.innodb_data_home_dir = p(),
        "innodb-log-group-home-dir" => a.innodb_log_group_home_dir = p(),
        "innodb-undo-directory" => a.innodb_undo_directory = p(),
        "aria-log-dir-path" => a.aria_log_dir_path = p(),
        "innodb-buffer-pool-filename" => a.innodb_buffer_pool_filename = s(),
        "innodb-buffer-pool-size" => a.innodb_buffer_pool_size = s(),
        "log-basename" => a.log_basename = s(),
        "tmpdir" | "sst-tmpdir" => a.tmpdir = p(),
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| (*x).to_string()).collect()
    }

    #[test]
    fn observed_joiner_argv_parses() {
        // MARIADB-OBSERVED.md §3, as the shell hands it over.
        let a = parse(&argv(&[
            "--role",
            "joiner",
            "--address",
            "127.0.0.1:14445",
            "--datadir",
            "/w/node2/data/",
            "--defaults-file",
            "/w/node2/my.cnf",
            "--parent",
            "29233",
            "--progress",
            "0",
            "--binlog",
            "mysql-bin",
            "--mysqld-args",
            "--defaults-file=/w/node2/my.cnf",
        ]))
        .unwrap();
        assert_eq!(a.role(), Role::Joiner);
        assert_eq!(a.datadir, PathBuf::from("/w/node2/data"));
        assert_eq!(a.address.as_ref().unwrap().port_or_default(), 14445);
        assert_eq!((a.parent, a.progress, a.binlog.as_deref()), (Some(29233), false, Some("mysql-bin")));
        assert_eq!(a.mysqld_args, ["--defaults-file=/w/node2/my.cnf"]);
    }

    #[test]
    fn observed_donor_argv_parses() {
        let a = parse(&argv(&[
            "--role",
            "donor",
            "--address",
            "127.0.0.1:14445/xtrabackup_sst//1",
            "--local-port",
            "13306",
            "--socket",
            "/w/mysqld.sock",
            "--progress",
            "0",
            "--datadir",
            "/w/node1/data/",
            "--gtid",
            "5ddc2d84-e57f-11f1-bdb1-3269f43d81db:16",
            "--gtid-domain-id",
            "0",
            "--bypass",
            "--mysqld-args",
            "--defaults-file=/w/my.cnf",
            "--wsrep-new-cluster",
        ]))
        .unwrap();
        let ad = a.address.clone().unwrap();
        assert_eq!(
            (ad.host.as_str(), ad.port, ad.module.as_deref(), ad.lsn, ad.sst_ver.as_deref()),
            ("127.0.0.1", Some(14445), Some("xtrabackup_sst"), None, Some("1"))
        );
        assert_eq!((a.local_port, a.gtid_domain_id, a.bypass), (Some(13306), Some(0), true));
        assert_eq!(a.mysqld_args.len(), 2, "everything after --mysqld-args belongs to mysqld");
    }

    #[test]
    fn old_conventions_and_unknown_options() {
        // Older servers quoted numbers, used `=` forms and passed --auth.
        let a = parse(&argv(&["--parent='77'", "--local-port", "'3306'", "--datadir=/d", "--auth", "root:s3cret", "--frobnicate", "x"]))
            .unwrap();
        assert_eq!((a.parent, a.local_port, a.role()), (Some(77), Some(3306), Role::Donor));
        assert_eq!(a.ignored, ["--frobnicate", "x"]);
        assert!(!format!("{a:?}").contains("s3cret"), "passwords never reach Debug output");
        assert_eq!(a.password.as_deref(), Some("s3cret"));
    }

    #[test]
    fn bad_input_gets_the_stock_exit_codes() {
        assert_eq!(parse(&argv(&["--role", "observer", "--datadir", "/d"])).unwrap_err().exit_code(), 22);
        assert_eq!(parse(&argv(&["--role", "joiner"])).unwrap_err(), ArgsError::NoDatadir);
        assert_eq!(parse(&argv(&["--role", "joiner"])).unwrap_err().exit_code(), 2);
        assert_eq!(parse(&argv(&["--datadir", "/d", "--parent", "x1"])).unwrap_err().exit_code(), 22);
        let e = parse(&argv(&["--datadir", "/d", "--address", "h:1234", "--port", "4444"])).unwrap_err();
        assert_eq!((e.exit_code(), e), (2, ArgsError::PortMismatch { address: 1234, port: 4444 }));
        assert!(matches!(parse(&argv(&["--datadir", "/d", "--gtid"])), Err(ArgsError::Missing { option: "gtid" })));
    }

    #[test]
    fn addresses_split_like_the_stock_scripts() {
        let a = SstAddress::parse("[::1]:4444/sluice_00ff//1").unwrap();
        assert_eq!((a.host.as_str(), a.host_unbracketed(), a.port, a.module.as_deref()), ("[::1]", "::1", Some(4444), Some("sluice_00ff")));
        let b = SstAddress::parse("db2.example").unwrap();
        assert_eq!((b.port_or_default(), b.module), (4444, None));
        let c = SstAddress::parse("10.0.0.2/rsync_sst").unwrap();
        assert_eq!((c.host.as_str(), c.port, c.module.as_deref()), ("10.0.0.2", None, Some("rsync_sst")));
        assert!(SstAddress::parse("[::1").is_err());
        assert!(SstAddress::parse("h:99999").is_err());
    }
}
