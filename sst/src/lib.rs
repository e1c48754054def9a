//! sluice-sst: the Galera State Snapshot Transfer front-end.
//!
//! This crate will own mysqld's SST interface (arguments, my.cnf, the
//! `[sst]` option set, the stdout line protocol, the donor and joiner flows,
//! mariadb-backup and the mbstream codec), built on `sluice-engine`. It is
//! deliberately empty until that work lands: nothing here pretends to be a
//! working SST method yet.

#![forbid(unsafe_code)]

/// The engine this front-end drives, re-exported for the binary.
pub use sluice_engine as engine;
