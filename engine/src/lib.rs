//! sluice-engine: a multi-stream, verified, position-addressed transfer
//! engine. It moves a tree of files from a sender to a receiver over N TCP
//! connections, checks every block and every file, and reports success only
//! for data that is verified and durable. It knows nothing of MariaDB.
//!
//! Modules, each with one job: [`manifest`] (the data model: entries,
//! extents, the path rule and its limits; a leaf), [`digest`] (block
//! checksums and file digests; a leaf), [`wire`] (frame layout), [`plan`]
//! (block queue, tallies), [`codec`] (compression, sealing, external
//! filters), [`backend`] (the only
//! syscalls, and the only module allowed `unsafe_code`), [`source`] (reading the sender's tree), [`sink`]
//! (writing the receiver's tree), [`net`] (sockets), [`pipeline`] (stream threads and shutdown), [`send`] and [`recv`]
//! (the two session state machines), [`progress`] (byte accounting), [`throttle`] (the shared rate limiter),
//! [`resume`] (the I/O-free core of reconnecting streams: rejoin proofs, the
//! replay log and its budget), `gate` (admission and examination of
//! connections), `lane` and `slot` (one stream across its connections, on
//! each side; the sender's stall watch), `feeder` (a streamed session's
//! producer side), [`fingerprint`] (BLAKE3 page fingerprints of an old
//! datadir, the first piece of delta SST), [`journal`] (the receiver's record of verified, durable
//! ranges that `recv --resume` continues from).
//! The protocol is specified in `engine/PROTOCOL.md`.

#![deny(unsafe_code)]

pub mod admission;
pub mod backend;
pub mod catalog;
pub mod cleanup;
pub mod codec;
pub mod delta;
pub mod diff;
pub mod digest;
mod error;
mod feeder;
pub mod fingerprint;
mod gate;
pub mod gears;
pub mod journal;
mod lane;
pub mod manifest;
pub mod net;
pub mod pipeline;
pub mod plan;
pub mod progress;
pub mod proto;
pub mod recv;
pub mod resume;
pub mod secret;
pub mod send;
pub mod sink;
mod slot;
pub mod source;
pub mod standin;
pub mod throttle;
pub mod wire;

pub use backend::{IO_ENV, IoMode, Method};
pub use error::{Error, Result, printable};
pub use net::Token;
pub use recv::{Journaling, ReceiveConfig, Receiver};
pub use send::{SendConfig, send};

/// Default block size: large enough that per-frame costs vanish, small
/// enough that N streams share one big file evenly.
pub const DEFAULT_BLOCK_SIZE: u32 = 1 << 20;

/// What a finished session moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    /// Manifest entries (files, directories, symlinks).
    pub entries: u64,
    /// Regular files.
    pub files: u64,
    /// Data bytes moved (holes excluded).
    pub bytes: u64,
    /// Payload bytes on the wire (less than `bytes` when compressed).
    pub wire_bytes: u64,
    /// Data bytes sent again after broken connections (sender side).
    pub resent: u64,
    /// Data bytes a resumed receiver already held from an interrupted
    /// transfer, and which were not sent again.
    pub held: u64,
    /// Data bytes a delta transfer took from the receiver's old copy
    /// instead of sending them (references).
    pub reused: u64,
    /// Data bytes a delta transfer sent as runs of zeros (nothing on the
    /// wire).
    pub zeros: u64,
    /// The protocol version the session spoke.
    pub protocol: u16,
    /// The most streams that carried data at once (a sender that adds
    /// streams while they pay; a receiver: the streams that connected).
    pub peak_streams: u16,
    /// Wall time of the session.
    pub elapsed: std::time::Duration,
}

impl Summary {
    /// Throughput in MiB/s.
    pub fn mib_per_sec(&self) -> f64 {
        self.bytes as f64 / (1024.0 * 1024.0) / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Data bytes per wire byte (1.0 without compression).
    pub fn compression_ratio(&self) -> f64 {
        if self.wire_bytes == 0 { 1.0 } else { self.bytes as f64 / self.wire_bytes as f64 }
    }
}

/// What this build is: version, the protocol versions it speaks, and the
/// features compiled in (for `--version`, the SST log's first line and
/// support requests).
pub fn build_info() -> String {
    let versions = if wire::MIN_PROTOCOL_VERSION == wire::PROTOCOL_VERSION {
        format!("protocol {}", wire::PROTOCOL_VERSION)
    } else {
        format!("protocol {}-{}", wire::MIN_PROTOCOL_VERSION, wire::PROTOCOL_VERSION)
    };
    let uring = if cfg!(feature = "uring") { "io_uring" } else { "no io_uring" };
    format!("sluice {} ({versions}; {uring}; zstd, lz4, AES-256-GCM, TLS via rustls/aws-lc-rs)", env!("CARGO_PKG_VERSION"))
}
