//! The SST front-end's one error type, with the exit codes of the stock
//! scripts (shared/SST-PROTOCOL.md §2.3) so mysqld and operators see the
//! statuses they know.

use crate::args::ArgsError;
use crate::options::OptionError;

/// Why an SST failed.
#[derive(Debug, thiserror::Error)]
pub enum SstError {
    #[error(transparent)]
    Args(#[from] ArgsError),
    #[error(transparent)]
    Options(#[from] OptionError),
    /// The transfer itself failed (network, peer, verification, disk).
    #[error("transfer failed: {0}")]
    Transfer(#[from] sluice_engine::Error),
    /// A helper program failed; `tail` holds the last lines of its log.
    #[error("{what} failed ({status}); see {log}. Last lines:\n{tail}")]
    Tool { what: String, status: String, log: String, tail: String },
    /// A helper program is not installed.
    #[error("{0} not found on PATH; install it (Debian: apt-get install mariadb-backup)")]
    Missing(String),
    /// The two nodes do not run the same SST method or mode.
    #[error("{0}")]
    Incompatible(String),
    /// A local file or directory operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The received backup is not usable.
    #[error("{0}")]
    BadBackup(String),
    /// Another SST still runs on this datadir.
    #[error("{0}")]
    Busy(String),
    /// A target filesystem cannot take the new data (exit 28, ENOSPC).
    #[error("{0}")]
    NoSpace(String),
    /// The idle watchdog (`[sst] sst-idle-timeout`) saw no progress (exit
    /// 110, ETIMEDOUT).
    #[error("{0}")]
    Stalled(String),
    /// mysqld went away while the SST ran.
    #[error("parent mysqld process (pid {0}) terminated unexpectedly")]
    ParentGone(u32),
}

impl SstError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io { context: context.into(), source }
    }

    /// The exit status the stock scripts use for this kind of failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Args(e) => e.exit_code(),
            Self::Options(e) => e.exit_code(),
            Self::Transfer(_) | Self::ParentGone(_) => 32,
            Self::Tool { .. } | Self::Incompatible(_) => 22,
            Self::Missing(_) => 42,
            Self::Io { .. } | Self::BadBackup(_) => 2,
            Self::Busy(_) => 114,
            Self::NoSpace(_) => 28,
            Self::Stalled(_) => 110,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = SstError> = std::result::Result<T, E>;
