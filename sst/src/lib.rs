//! sluice-sst: the Galera State Snapshot Transfer front-end.
//!
//! mysqld's SST interface built on `sluice-engine`: [`args`] (what mysqld
//! passes), [`mycnf`] and [`options`] (option files read as
//! `my_print_defaults` reads them, and the typed `[sst]` set), [`auth`]
//! (credentials), [`transport`] (`[sst]` keys mapped onto the engine),
//! [`mysqld`] (the stdout line protocol and log lines), [`mbstream`] (the
//! backup stream format), [`backup`] (mariadb-backup command lines),
//! [`layout`] (special directories, binary logs), [`datadir`] (the joiner's
//! cleanup), [`process`] (helpers and the parent watch), [`report`]
//! (progress), [`check`] (`sluice check`), [`status`] (status file, watchdog), [`logs`] (log archive,
//! pid file), [`syslog`], [`preflight`] (the donor's announcement and the
//! joiner's checks); [`plan`] resolves one SST once; the flows: [`session`]
//! (entry point), [`donor`] and [`joiner`] (backup mode), [`copy`] (copy
//! mode), [`manual`] (manual SST). Errors: [`error`].

#![forbid(unsafe_code)]

pub mod args;
pub mod aside;
pub mod auth;
pub mod backup;
pub mod check;
pub mod copy;
pub mod datadir;
pub mod donor;
pub mod error;
pub mod fresh;
pub mod joiner;
pub mod layout;
pub mod logs;
pub mod manual;
pub mod mbstream;
pub mod mycnf;
pub mod mysqld;
pub mod options;
pub mod plan;
pub mod preflight;
pub mod process;
pub mod report;
pub mod session;
pub mod status;
pub mod syslog;
pub mod transport;

/// The engine this front-end drives, re-exported for the binary.
pub use sluice_engine as engine;

/// The build, as the SST log's first line says it.
pub fn version_line() -> String {
    sluice_engine::build_info()
}
