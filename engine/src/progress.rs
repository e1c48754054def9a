//! Byte and time accounting shared by all streams of a session.
//!
//! Streams add what they moved; whoever reports (a binary, the SST front
//! end) reads a snapshot. Nothing here prints.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

/// Shared counters of one session.
#[derive(Debug)]
pub struct Progress {
    started: Instant,
    total: AtomicU64,
    done: AtomicU64,
    wire: AtomicU64,
    resent: AtomicU64,
    resuming: AtomicU32,
}

/// A consistent-enough view of [`Progress`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Snapshot {
    /// Data bytes the manifest announced.
    pub total: u64,
    /// Data bytes moved so far (decoded).
    pub done: u64,
    /// Payload bytes on the wire so far (after compression).
    pub wire: u64,
    /// Data bytes sent again after a stream reconnected.
    pub resent: u64,
    /// Streams waiting for a broken connection to come back right now.
    pub resuming: u32,
    pub seconds: f64,
}

impl Default for Progress {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            total: AtomicU64::new(0),
            done: AtomicU64::new(0),
            wire: AtomicU64::new(0),
            resent: AtomicU64::new(0),
            resuming: AtomicU32::new(0),
        }
    }
}

impl Progress {
    pub fn set_total(&self, bytes: u64) {
        self.total.store(bytes, Ordering::Relaxed);
    }

    pub fn add(&self, bytes: u64) {
        self.done.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn add_wire(&self, bytes: u64) {
        self.wire.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn add_resent(&self, bytes: u64) {
        self.resent.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts a stream as waiting to reconnect until the guard drops (a
    /// watchdog must not mistake that wait, bounded by the resume window,
    /// for a stall).
    pub fn resuming(&self) -> ResumingGuard<'_> {
        self.resuming.fetch_add(1, Ordering::Relaxed);
        ResumingGuard(self)
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            total: self.total.load(Ordering::Relaxed),
            done: self.done.load(Ordering::Relaxed),
            wire: self.wire.load(Ordering::Relaxed),
            resent: self.resent.load(Ordering::Relaxed),
            resuming: self.resuming.load(Ordering::Relaxed),
            seconds: self.started.elapsed().as_secs_f64(),
        }
    }
}

/// See [`Progress::resuming`].
#[derive(Debug)]
pub struct ResumingGuard<'a>(&'a Progress);

impl Drop for ResumingGuard<'_> {
    fn drop(&mut self) {
        self.0.resuming.fetch_sub(1, Ordering::Relaxed);
    }
}
