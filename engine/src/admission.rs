//! Admission of unauthenticated connections: how many, from where, for how
//! long. A pure policy: it takes addresses and `now` and returns which
//! pending handshakes to cut; the receiver's accept loop does the I/O.
//!
//! Rules (SECURITY.md F1, F16):
//! * every handshake (TLS, magic, HELLO) has one absolute deadline from its
//!   accept, not a per-read idle timeout, so a peer that trickles a byte at
//!   a time is cut when its time is up;
//! * at most `per_source` handshakes per source address and `total` in all
//!   are pending; a new connection beyond either cap evicts the *oldest*
//!   pending one (of that source, else overall) instead of being dropped, so
//!   strangers holding slots can never turn a real sender away — a real
//!   sender's handshake takes one round trip;
//! * refusals are logged at most [`LOG_BURST`] per [`LOG_WINDOW`], then
//!   summed up, so an unauthenticated flood cannot grow mysqld's error log.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Default cap on pending handshakes from one source address.
pub const PER_SOURCE: usize = 8;
/// Default cap on pending handshakes in all.
pub const TOTAL: usize = 64;
/// Refusal lines logged per window before they are only counted.
pub const LOG_BURST: u32 = 10;
/// The window of the refusal log limit.
pub const LOG_WINDOW: Duration = Duration::from_secs(10);

/// Identifies one pending handshake.
pub type Ticket = u64;

#[derive(Debug, Clone, Copy)]
struct Pending {
    ticket: Ticket,
    source: IpAddr,
    since: Instant,
}

/// Pending handshakes and the caps and deadline that bound them.
#[derive(Debug)]
pub struct Admission {
    per_source: usize,
    total: usize,
    deadline: Duration,
    /// Oldest first.
    pending: VecDeque<Pending>,
    next: Ticket,
}

impl Admission {
    pub fn new(per_source: usize, total: usize, deadline: Duration) -> Self {
        Self { per_source: per_source.max(1), total: total.max(1), deadline, pending: VecDeque::new(), next: 0 }
    }

    /// Admits a connection from `source`; returns its ticket and the tickets
    /// of the handshakes to cut to make room (oldest first).
    pub fn admit(&mut self, source: IpAddr, now: Instant) -> (Ticket, Vec<Ticket>) {
        let mut evict = Vec::new();
        if self.pending.iter().filter(|p| p.source == source).count() >= self.per_source {
            if let Some(i) = self.pending.iter().position(|p| p.source == source) {
                evict.extend(self.pending.remove(i).map(|p| p.ticket));
            }
        }
        while self.pending.len() >= self.total {
            evict.extend(self.pending.pop_front().map(|p| p.ticket));
        }
        let ticket = self.next;
        self.next += 1;
        self.pending.push_back(Pending { ticket, source, since: now });
        (ticket, evict)
    }

    /// The handshake `ticket` ended (joined or refused).
    pub fn done(&mut self, ticket: Ticket) {
        self.pending.retain(|p| p.ticket != ticket);
    }

    /// Removes and returns the handshakes whose deadline has passed.
    pub fn expired(&mut self, now: Instant) -> Vec<Ticket> {
        let mut out = Vec::new();
        while let Some(p) = self.pending.front().filter(|p| now.saturating_duration_since(p.since) >= self.deadline) {
            out.push(p.ticket);
            self.pending.pop_front();
        }
        out
    }

    /// Removes every pending handshake (the session is complete).
    pub fn drain(&mut self) -> Vec<Ticket> {
        self.pending.drain(..).map(|p| p.ticket).collect()
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

/// A rate limit for log lines about unauthenticated peers.
#[derive(Debug, Default)]
pub struct LogLimit {
    window_start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

/// What to do with one refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogDecision {
    /// Log it; `suppressed` lines were dropped in the previous window.
    Log { suppressed: u64 },
    /// Count it only.
    Drop,
}

impl LogLimit {
    pub fn decide(&mut self, now: Instant) -> LogDecision {
        let fresh = self.window_start.is_none_or(|s| now.saturating_duration_since(s) >= LOG_WINDOW);
        if fresh {
            self.window_start = Some(now);
            self.logged = 0;
        }
        if self.logged < LOG_BURST {
            self.logged += 1;
            let suppressed = std::mem::take(&mut self.suppressed);
            LogDecision::Log { suppressed }
        } else {
            self.suppressed += 1;
            LogDecision::Drop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn a_full_source_evicts_its_own_oldest_and_no_other() {
        let t0 = Instant::now();
        let mut a = Admission::new(2, 10, Duration::from_secs(5));
        let (x, e) = a.admit(ip(2), t0);
        assert!(e.is_empty());
        let (_other, e) = a.admit(ip(3), t0);
        assert!(e.is_empty());
        let (_y, e) = a.admit(ip(2), t0);
        assert!(e.is_empty());
        let (_z, e) = a.admit(ip(2), t0);
        assert_eq!(e, vec![x], "the oldest of the full source goes");
        assert_eq!(a.len(), 3);
    }

    #[test]
    fn a_full_table_evicts_the_oldest_overall() {
        let t0 = Instant::now();
        let mut a = Admission::new(8, 3, Duration::from_secs(5));
        let tickets: Vec<Ticket> = (2..5).map(|i| a.admit(ip(i), t0).0).collect();
        let (_new, e) = a.admit(ip(9), t0);
        assert_eq!(e, vec![tickets[0]]);
        a.done(tickets[1]);
        let (_new2, e) = a.admit(ip(10), t0);
        assert!(e.is_empty(), "a finished handshake freed its slot: {e:?}");
    }

    #[test]
    fn the_deadline_is_absolute_from_accept() {
        let t0 = Instant::now();
        let mut a = Admission::new(8, 8, Duration::from_secs(5));
        let (x, _) = a.admit(ip(2), t0);
        let (y, _) = a.admit(ip(3), t0 + Duration::from_secs(3));
        assert!(a.expired(t0 + Duration::from_millis(4999)).is_empty());
        assert_eq!(a.expired(t0 + Duration::from_secs(5)), vec![x]);
        assert_eq!(a.expired(t0 + Duration::from_secs(8)), vec![y]);
        assert!(a.is_empty());
    }

    #[test]
    fn refusal_logs_are_rate_limited_and_counted() {
        let t0 = Instant::now();
        let mut l = LogLimit::default();
        for _ in 0..LOG_BURST {
            assert_eq!(l.decide(t0), LogDecision::Log { suppressed: 0 });
        }
        for _ in 0..500 {
            assert_eq!(l.decide(t0 + Duration::from_secs(1)), LogDecision::Drop);
        }
        assert_eq!(l.decide(t0 + LOG_WINDOW), LogDecision::Log { suppressed: 500 });
        assert_eq!(l.decide(t0 + LOG_WINDOW), LogDecision::Log { suppressed: 0 });
    }
}
