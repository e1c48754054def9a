//! The rate limiter shared by all streams of a session.
//!
//! A virtual-clock limiter (GCRA): each grant of `n` bytes moves the
//! theoretical arrival time `tat` forward by `n / rate`; a caller whose
//! `tat` lies more than `burst / rate` ahead of now must wait for the
//! difference. Sleep overshoot is carried forward instead of lost, because
//! `tat` only snaps to `now` after the link was idle (shared/MEASURED-IO.md
//! §6: a plain token bucket with a chunk-sized burst lost 20–30 % to sleep
//! overshoot). [`Gcra`] takes `now` and returns a delay; it never reads the
//! clock or sleeps, so it is tested in virtual time. [`Throttle`] wraps it
//! for threads.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// Parses a byte count with an optional K, M or G suffix (powers of 1024),
/// as the stock `rlimit` option and `pv -L` accept: `200M`, `512k`, `1G`.
pub fn parse_bytes(s: &str) -> Result<u64> {
    let t = s.trim();
    let bad = |why: &str| Error::Config(format!("{s:?} is not a byte count ({why}; examples: 4096, 512K, 200M, 1G)"));
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => return Err(bad(&format!("unknown suffix {c:?}, use K, M or G"))),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: u64 = num.trim().parse().map_err(|_| bad("not a whole number"))?;
    n.checked_mul(mult).ok_or_else(|| bad("too large"))
}

/// The limiter's arithmetic, in virtual time.
#[derive(Debug, Clone)]
pub struct Gcra {
    /// Nanoseconds per byte.
    ns_per_byte: f64,
    /// How far `tat` may run ahead of now without waiting.
    tolerance: Duration,
    /// Theoretical arrival time, as an offset from the caller's origin.
    tat: Duration,
}

impl Gcra {
    /// A limiter of `rate` bytes per second. The burst is
    /// max(1 MiB, 10 ms of traffic), what measured accurate here.
    pub fn new(rate: u64) -> Self {
        assert!(rate > 0, "rate must be positive");
        let burst = (rate / 100).max(1 << 20);
        let ns_per_byte = 1e9 / rate as f64;
        Self { ns_per_byte, tolerance: Duration::from_nanos((burst as f64 * ns_per_byte) as u64), tat: Duration::ZERO }
    }

    /// Accounts `bytes` sent at `now` (time since the caller's origin) and
    /// returns how long the caller must wait before sending them.
    pub fn delay(&mut self, bytes: u64, now: Duration) -> Option<Duration> {
        let tat = self.tat.max(now);
        let wait = tat.saturating_sub(now + self.tolerance);
        self.tat = tat + Duration::from_nanos((bytes as f64 * self.ns_per_byte) as u64);
        (!wait.is_zero()).then_some(wait)
    }
}

/// A [`Gcra`] shared by threads, measuring time from its creation.
#[derive(Debug)]
pub struct Throttle {
    origin: Instant,
    gcra: Mutex<Gcra>,
}

impl Throttle {
    pub fn new(rate: u64) -> Self {
        Self { origin: Instant::now(), gcra: Mutex::new(Gcra::new(rate)) }
    }

    /// Blocks until `bytes` may be sent.
    pub fn acquire(&self, bytes: u64) {
        let now = self.origin.elapsed();
        // A poisoned lock means a thread panicked mid-update; the state is
        // still a valid time, so keep limiting.
        let wait = self.gcra.lock().unwrap_or_else(std::sync::PoisonError::into_inner).delay(bytes, now);
        if let Some(w) = wait {
            std::thread::sleep(w);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// Sends `total` bytes in `chunk`s through the limiter with a sleeper
    /// that overshoots every sleep by `overshoot`; returns the virtual time.
    fn simulate(rate: u64, chunk: u64, total: u64, overshoot: Duration) -> Duration {
        let mut g = Gcra::new(rate);
        let mut now = Duration::ZERO;
        let mut sent = 0;
        while sent < total {
            if let Some(w) = g.delay(chunk, now) {
                now += w + overshoot;
            }
            sent += chunk;
        }
        now
    }

    #[test]
    fn long_run_rate_is_within_one_percent_despite_overshoot() {
        for (chunk, overshoot_us) in [(64 << 10, 300), (MIB, 400), (4096, 150)] {
            let rate = 100 * MIB;
            let total = 10 * rate;
            let t = simulate(rate, chunk, total, Duration::from_micros(overshoot_us)).as_secs_f64();
            // The burst lets the first 10 ms through at once; over 10 s that is 0.1 %.
            let achieved = total as f64 / t;
            let err = (achieved - rate as f64).abs() / rate as f64;
            assert!(err < 0.01, "chunk {chunk}: achieved {achieved:.0} B/s, error {:.3} %", err * 100.0);
        }
    }

    #[test]
    fn idle_time_is_not_banked_beyond_the_burst() {
        // 1 MiB/s with a 1 MiB burst (1 s of tolerance).
        let mut g = Gcra::new(MIB);
        assert_eq!(g.delay(MIB, Duration::ZERO), None);
        // After 100 idle seconds, the burst plus one grant pass at once, no more.
        let now = Duration::from_secs(100);
        assert_eq!(g.delay(MIB, now), None);
        assert_eq!(g.delay(MIB, now), None);
        assert_eq!(g.delay(MIB, now), Some(Duration::from_secs(1)));
        assert_eq!(g.delay(MIB, now), Some(Duration::from_secs(2)));
    }

    #[test]
    fn byte_counts_parse_like_rlimit() {
        assert_eq!(parse_bytes("200M").unwrap(), 200 << 20);
        assert_eq!(parse_bytes("512k").unwrap(), 512 << 10);
        assert_eq!(parse_bytes("1G").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        let e = parse_bytes("12Q").unwrap_err().to_string();
        assert!(e.contains("12Q") && e.contains("K, M or G"), "{e}");
        assert!(parse_bytes("fast").is_err());
        assert!(parse_bytes("99999999999G").is_err());
    }
}
