//! sluice-sst: the Galera State Snapshot Transfer front-end.
//!
//! This crate will own mysqld's SST interface (arguments, the `[sst]`
//! option set, the stdout line protocol, the donor and joiner flows,
//! mariadb-backup and the mbstream codec), built on `sluice-engine`. So far
//! it has [`mycnf`], option files read exactly as `my_print_defaults` reads
//! them; the rest is not implemented yet, and nothing here pretends to be a
//! working SST method.

#![forbid(unsafe_code)]

pub mod args;
pub mod datadir;
pub mod mbstream;
pub mod mycnf;
pub mod mysqld;
pub mod options;

/// The engine this front-end drives, re-exported for the binary.
pub use sluice_engine as engine;
