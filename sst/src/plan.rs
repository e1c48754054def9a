//! One SST, resolved once: the typed plan every flow reads (role, mode,
//! layout, transport, progress sink, status file, watchdog, paths), built
//! from mysqld's arguments, `--mysqld-args` and the option files. The flows
//! ([`crate::donor`], [`crate::joiner`], [`crate::copy`]) take only this;
//! [`crate::session`] builds it and dispatches. A leaf: it imports no flow.

use std::path::PathBuf;
use std::time::Duration;

use crate::args::{Role, SstArgs};
use crate::auth::Credentials;
use crate::backup::{MysqldArgs, split_mysqld_args};
use crate::error::{Result, SstError};
use crate::layout::{self, Layout};
use crate::options::SstOptions;
use crate::process::Children;
use crate::report;
use crate::status::Monitor;

/// The file in which the donor sends its state (`<uuid>:<seqno> <domain>`)
/// along with the backup; the joiner reads it and removes it before
/// `--prepare`.
pub const STATE_FILE: &str = "sluice_sst_state";

/// The marker the donor sends instead of a backup when Galera chose IST.
pub const IST_MARKER: &str = "xtrabackup_ist";

/// The donor's announcement (sizes, versions, keys), sent in a session of
/// its own before any data ([`crate::preflight`]).
pub const PREAMBLE_FILE: &str = "sluice_sst_preamble.json";

/// How the data travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// mariadb-backup's stream, prepared on the joiner.
    Backup,
    /// The datadir's files under a short lock, as rsync does.
    Copy,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Backup => "backup",
            Self::Copy => "copy",
        }
    }
}

/// What the joiner does when its filesystems cannot hold the old data and
/// the new side by side (`[sst] low-space`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LowSpace {
    /// Refuse the SST before anything is touched (the default).
    Refuse,
    /// Delete the old data first, with a warning, as the stock script does.
    Clean,
}

/// Everything a flow needs.
#[derive(Debug)]
pub struct Plan {
    pub role: Role,
    pub args: SstArgs,
    pub opts: SstOptions,
    pub creds: Credentials,
    /// This node's `[sst] mode` (the donor follows the joiner's).
    pub mode: Mode,
    pub mysqld: MysqldArgs,
    /// The joiner's special directories and binary log.
    pub layout: Layout,
    pub low_space: LowSpace,
    /// The mariadb-backup that prepares and moves back (`[sst]
    /// prepare-binary`), `None` for the one on `PATH`.
    pub prepare_binary: Option<PathBuf>,
    /// Helper processes to kill if mysqld dies.
    pub children: Children,
    /// Where transfer progress goes.
    pub progress: report::Sink,
    /// The stage, the status file and the idle watchdog.
    pub monitor: Monitor,
}

impl Plan {
    /// Resolves the arguments and options once.
    pub fn new(args: SstArgs, opts: SstOptions, creds: Credentials) -> Result<Self> {
        let role = args.role();
        let mode = if opts.mode == "copy" { Mode::Copy } else { Mode::Backup };
        let mysqld = split_mysqld_args(&args.mysqld_args);
        let layout = layout::resolve(&args, &mysqld, &opts);
        let low_space = match opts.low_space.as_str() {
            "clean" => LowSpace::Clean,
            _ => LowSpace::Refuse,
        };
        let progress = report::Sink::choose(&opts, args.progress);
        let status = opts.status_file.clone().unwrap_or_else(|| args.datadir.join(crate::status::DEFAULT_FILE));
        let idle = (opts.sst_idle_timeout > 0).then(|| Duration::from_secs(opts.sst_idle_timeout));
        let children = Children::default();
        let role_name = if role == Role::Joiner { "joiner" } else { "donor" };
        let monitor = Monitor::start(role_name, progress.clone(), Some(status), idle, children.clone())
            .map_err(|e| SstError::io("starting the status monitor", e))?;
        Ok(Self {
            role,
            mode,
            mysqld,
            layout,
            low_space,
            prepare_binary: opts.prepare_binary.clone(),
            args,
            opts,
            creds,
            children,
            progress,
            monitor,
        })
    }

    /// The mariadb-backup that prepares and moves back a received backup.
    pub fn prepare_program(&self) -> Result<PathBuf> {
        match &self.prepare_binary {
            Some(p) if std::fs::metadata(p).is_ok_and(|m| m.is_file()) => Ok(p.clone()),
            Some(p) => Err(SstError::Incompatible(format!(
                "[sst] prepare-binary={} does not exist or is not a file; install that mariadb-backup or unset the key",
                p.display()
            ))),
            None => crate::process::find_program("mariadb-backup"),
        }
    }
}
