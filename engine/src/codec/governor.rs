//! Which codec `--compress auto` runs, decided for the whole session by
//! measuring what each one delivers.
//!
//! The per-chunk [`super::AutoPolicy`] asks whether a chunk's codec time
//! is less than the link time it saves, with the link's speed read from how
//! fast the socket takes bytes. That is blind to one trap: a socket that
//! drains slowly because the *receiver* is short of CPU (a busy host, a
//! 10 GbE link, both ends on the same cores) looks like a slow link, and
//! compressing for it only adds work. So the session also runs a small
//! experiment: it measures its goodput — source bytes delivered per
//! second, over every stream — with the codec it runs ("the incumbent"),
//! and now and then runs another candidate (none, lz4, zstd at a fast
//! level) for one epoch. A candidate that delivers at least
//! [`WIN_MARGIN`] more than the incumbent's epochs before and after it
//! takes over (the second epoch guards against conditions that changed
//! under the challenger: a link back from an outage made a first version
//! drop compression for 9 s); an epoch that delivers almost nothing is a
//! stall, not a measurement, and is ignored. One that loses is tried again
//! after twice the wait, up to [`MAX_GAP`], so a settled session pays a
//! probe of well under a second per minute and codec. Compressibility that
//! changes (a run of LOB pages) shows up in the incumbent's own epochs and
//! the probes that follow.
//!
//! Pure logic: time comes in as a [`Duration`] since the session began,
//! bytes as a running total; [`Governor`] wraps it for the stream threads.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A codec the experiment can choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arm {
    Raw,
    Lz4,
    /// zstd at [`ZSTD_LEVEL`].
    Zstd,
}

/// The zstd level `auto` tries: the fastest positive level, slower than
/// lz4 but with a better ratio, which can win on a slow link (perf/RESULTS.md:
/// the 100 Mbit/s rows of the link and SST comparisons).
pub const ZSTD_LEVEL: i32 = 1;

impl Arm {
    fn index(self) -> usize {
        self as usize
    }

    fn from_index(i: u8) -> Self {
        match i {
            0 => Self::Raw,
            1 => Self::Lz4,
            _ => Self::Zstd,
        }
    }
}

impl std::fmt::Display for Arm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Raw => "none",
            Self::Lz4 => "lz4",
            Self::Zstd => "zstd:1",
        })
    }
}

/// Time after a switch before an epoch is measured: what is already in the
/// socket buffers was encoded by the previous codec.
pub const SETTLE: Duration = Duration::from_millis(200);
/// Shortest measured epoch.
pub const EPOCH: Duration = Duration::from_millis(500);
/// Longest measured epoch, when too few bytes arrive to judge (a slow link).
pub const MAX_EPOCH: Duration = Duration::from_secs(3);
/// Bytes an epoch wants before it is judged (its last block may be 1 MiB).
pub const EPOCH_BYTES: u64 = 8 << 20;
/// First wait before the incumbent is challenged, and after each switch:
/// a challenge that loses costs up to half the goodput of its epoch (no
/// compression on a link-bound session with 2:1 data), so short transfers
/// are not probed at all (measured: a 3 s first challenge made a 5 s
/// transfer over 1 Gbit/s 12 % slower).
pub const MIN_GAP: Duration = Duration::from_secs(8);
/// Longest wait between challenges.
pub const MAX_GAP: Duration = Duration::from_secs(64);
/// How much more a challenger must deliver to take over.
pub const WIN_MARGIN: f64 = 1.08;

/// A switch of the incumbent, for the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Switch {
    pub from: Arm,
    pub to: Arm,
    /// Goodput of each, bytes per second, as measured in their last epochs.
    pub from_rate: f64,
    pub to_rate: f64,
}

/// The experiment's state.
#[derive(Debug, Clone)]
pub struct Trial {
    arms: Vec<Arm>,
    incumbent: Arm,
    /// The arm the current epoch runs.
    running: Arm,
    /// Goodput per arm from its last epoch (0 = not measured).
    rate: [f64; 3],
    /// Start of the current epoch's measurement (after settling), and the
    /// byte total then; `None` while settling.
    measuring: Option<(Duration, u64)>,
    settle_until: Duration,
    /// Per arm: when it may challenge next, and the wait after a loss.
    due: [Duration; 3],
    gap: [Duration; 3],
    /// The shortest wait between challenges ([`MIN_GAP`] unless asked).
    base: Duration,
    /// Per arm: how long it ran, up to `last`.
    ran: [Duration; 3],
    last: Duration,
    /// A challenger that beat the incumbent, and its rate, while the
    /// incumbent runs the confirming epoch.
    confirming: Option<(Arm, f64)>,
}

impl Trial {
    /// An experiment over `arms`: the first is the first incumbent, the
    /// others challenge it in the order given, the first after `first`,
    /// which is also the shortest wait between challenges ([`MIN_GAP`]
    /// in production; tests shorten it).
    pub fn new(arms: &[Arm], first: Duration) -> Self {
        assert!(!arms.is_empty(), "at least one arm");
        let mut t = Self {
            arms: arms.to_vec(),
            incumbent: arms[0],
            running: arms[0],
            rate: [0.0; 3],
            measuring: None,
            settle_until: SETTLE,
            due: [Duration::ZERO; 3],
            gap: [first; 3],
            base: first,
            ran: [Duration::ZERO; 3],
            last: Duration::ZERO,
            confirming: None,
        };
        t.stagger(Duration::ZERO);
        t
    }

    /// Every challenger due again: the first one base wait after `now`,
    /// the others one base wait apart after it.
    fn stagger(&mut self, now: Duration) {
        let others: Vec<Arm> = self.arms.iter().copied().filter(|a| *a != self.incumbent).collect();
        for (k, a) in others.into_iter().enumerate() {
            self.gap[a.index()] = self.base;
            self.due[a.index()] = now + self.base * (k as u32 + 1);
        }
    }

    /// The arm to run now.
    pub fn running(&self) -> Arm {
        self.running
    }

    /// How the session's time was shared, e.g. "lz4 93 %, none 4 %,
    /// zstd:1 3 %" (arms that ran, most first); `None` for a session
    /// shorter than a second (nothing was measured).
    pub fn shares(&self) -> Option<String> {
        let total: f64 = self.ran.iter().map(Duration::as_secs_f64).sum();
        if total < 1.0 {
            return None;
        }
        let mut arms: Vec<(Arm, f64)> = self.arms.iter().map(|a| (*a, self.ran[a.index()].as_secs_f64() / total)).collect();
        arms.sort_by(|x, y| y.1.total_cmp(&x.1));
        let parts: Vec<String> = arms.into_iter().filter(|(_, f)| *f >= 0.005).map(|(a, f)| format!("{a} {:.0} %", f * 100.0)).collect();
        Some(parts.join(", "))
    }

    /// Advances to `now` with `done` source bytes delivered so far; returns
    /// a switch of the incumbent when one happened.
    pub fn tick(&mut self, now: Duration, done: u64) -> Option<Switch> {
        self.ran[self.running.index()] += now.saturating_sub(self.last);
        self.last = self.last.max(now);
        let Some((start, base)) = self.measuring else {
            if now >= self.settle_until {
                self.measuring = Some((now, done));
            }
            return None;
        };
        let (took, bytes) = (now.saturating_sub(start), done.saturating_sub(base));
        if took < EPOCH || (bytes < EPOCH_BYTES && took < MAX_EPOCH) {
            return None;
        }
        let ran = self.running;
        if bytes < EPOCH_BYTES {
            // Too little in MAX_EPOCH: a stall (a link down, a producer
            // waiting), not a measurement of the codec. Nothing is
            // recorded, and every challenge waits until MIN_GAP after the
            // last stall: a link that comes back refills its buffers in a
            // burst that would flatter whichever codec ran then.
            self.confirming = None;
            for a in self.arms.clone() {
                let d = &mut self.due[a.index()];
                *d = (*d).max(now + self.base);
            }
            if ran == self.incumbent {
                self.measuring = Some((now, done));
            } else {
                self.running = self.incumbent;
                self.measuring = None;
                self.settle_until = now + SETTLE;
            }
            return None;
        }
        let rate = bytes as f64 / took.as_secs_f64();
        self.rate[ran.index()] = rate;
        let mut switch = None;
        if ran != self.incumbent {
            // A challenger's epoch ends. If it beat the incumbent's last
            // epoch by the margin, the incumbent runs one more epoch to
            // confirm (conditions may have changed under the challenger,
            // as when a link comes back from an outage); otherwise the
            // challenger steps back and waits twice as long.
            if rate > self.rate[self.incumbent.index()] * WIN_MARGIN {
                self.confirming = Some((ran, rate));
            } else {
                self.lost(ran, now);
            }
            self.running = self.incumbent;
        } else if let Some((challenger, won_at)) = self.confirming.take() {
            if won_at > rate * WIN_MARGIN {
                switch = Some(Switch { from: self.incumbent, to: challenger, from_rate: rate, to_rate: won_at });
                self.incumbent = challenger;
                self.running = challenger;
                self.stagger(now);
            } else {
                self.lost(challenger, now);
            }
        } else if let Some(next) =
            self.arms.iter().copied().filter(|a| *a != self.incumbent && self.due[a.index()] <= now).min_by_key(|a| self.due[a.index()])
        {
            self.running = next;
        }
        if self.running == ran {
            self.measuring = Some((now, done));
        } else {
            // Another codec from now on: what the socket buffers hold was
            // encoded by the last one.
            self.measuring = None;
            self.settle_until = now + SETTLE;
        }
        switch
    }

    /// `arm` lost a challenge at `now`: twice the wait before its next.
    fn lost(&mut self, arm: Arm, now: Duration) {
        let g = &mut self.gap[arm.index()];
        *g = (*g * 2).min(MAX_GAP);
        self.due[arm.index()] = now + *g;
    }
}

/// The experiment shared by a session's stream threads.
#[derive(Debug)]
pub struct Governor {
    started: Instant,
    trial: Mutex<Trial>,
    running: AtomicU8,
    done: AtomicU64,
}

impl Governor {
    /// A governor over `arms` (see [`Trial::new`]).
    pub fn new(arms: &[Arm], first: Duration) -> Self {
        let trial = Trial::new(arms, first);
        Self { started: Instant::now(), running: AtomicU8::new(trial.running() as u8), trial: Mutex::new(trial), done: AtomicU64::new(0) }
    }

    /// The codec to use for the next chunk.
    pub fn arm(&self) -> Arm {
        Arm::from_index(self.running.load(Ordering::Relaxed))
    }

    /// Counts `raw` source bytes as delivered, and moves the experiment on
    /// (whichever stream gets the lock does; the others carry on).
    pub fn delivered(&self, raw: u64) {
        let done = self.done.fetch_add(raw, Ordering::Relaxed) + raw;
        let Ok(mut t) = self.trial.try_lock() else { return };
        if let Some(s) = t.tick(self.started.elapsed(), done) {
            tracing::info!(
                "adaptive compression: {} instead of {} ({:.0} MiB/s of data delivered against {:.0} MiB/s)",
                s.to,
                s.from,
                s.to_rate / 1_048_576.0,
                s.from_rate / 1_048_576.0
            );
        }
        self.running.store(t.running() as u8, Ordering::Relaxed);
    }

    /// Logs how the session's time was shared among the codecs.
    pub fn report(&self) {
        let t = self.trial.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(shares) = t.shares() {
            tracing::info!("adaptive compression: {shares} of the transfer (incumbent at the end: {})", t.incumbent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: f64 = 1_048_576.0;

    /// Runs a trial in virtual time for `secs`, each arm delivering at the
    /// rate `rates(t, arm)` (MiB/s); returns the switches (with their
    /// times) and the seconds each arm ran.
    fn simulate(arms: &[Arm], secs: f64, rates: impl Fn(f64, Arm) -> f64) -> (Vec<(f64, Switch)>, [f64; 3]) {
        let mut t = Trial::new(arms, MIN_GAP);
        let (mut done, mut switches, mut share) = (0f64, Vec::new(), [0f64; 3]);
        let dt = 0.01;
        for step in 0..(secs / dt) as u64 {
            let now = step as f64 * dt;
            let arm = t.running();
            done += rates(now, arm) * MIB * dt;
            share[arm.index()] += dt;
            if let Some(s) = t.tick(Duration::from_secs_f64(now), done as u64) {
                switches.push((now, s));
            }
        }
        (switches, share)
    }

    const ALL: [Arm; 3] = [Arm::Lz4, Arm::Raw, Arm::Zstd];

    #[test]
    fn a_slow_link_keeps_compressing_and_probes_ever_less_often() {
        // 1 Gbit/s with data that compresses 1.8×: raw is the link's 112.
        let (switches, share) = simulate(&ALL, 120.0, |_, a| match a {
            Arm::Raw => 112.0,
            Arm::Lz4 => 200.0,
            Arm::Zstd => 205.0,
        });
        assert!(switches.is_empty(), "within the margin nothing takes over: {switches:?}");
        // The probes back off toward MAX_GAP: raw ran a few seconds of
        // 120 (each probe is SETTLE + EPOCH).
        assert!(share[Arm::Raw.index()] < 4.0, "raw ran {share:?}");
        assert!(share[Arm::Lz4.index()] > 112.0, "{share:?}");
    }

    #[test]
    fn a_cpu_bound_session_stops_compressing_within_seconds() {
        // Both ends short of CPU: compressing only slows delivery.
        let (switches, share) = simulate(&ALL, 60.0, |_, a| match a {
            Arm::Raw => 300.0,
            Arm::Lz4 => 180.0,
            Arm::Zstd => 90.0,
        });
        let (at, first) = &switches[0];
        assert_eq!((first.from, first.to), (Arm::Lz4, Arm::Raw), "{switches:?}");
        assert!(*at < MIN_GAP.as_secs_f64() + 2.0, "switched at {at} s");
        assert!((first.to_rate / MIB - 300.0).abs() < 30.0 && (first.from_rate / MIB - 180.0).abs() < 20.0, "{first:?}");
        assert_eq!(switches.len(), 1, "no switching back and forth: {switches:?}");
        let mut t = Trial::new(&ALL, MIN_GAP);
        t.tick(Duration::ZERO, 0);
        t.tick(Duration::from_secs(10), 1 << 30);
        assert_eq!(t.shares().as_deref(), Some("lz4 100 %"));
        assert!(share[Arm::Raw.index()] > 45.0, "{share:?}");
    }

    #[test]
    fn a_change_of_conditions_is_followed() {
        // CPU-bound for 30 s, then the link slows to 100 Mbit/s.
        let (switches, _) = simulate(&ALL, 120.0, |t, a| match (t < 30.0, a) {
            (true, Arm::Raw) => 300.0,
            (true, Arm::Lz4) => 180.0,
            (true, Arm::Zstd) => 90.0,
            (false, Arm::Raw) => 11.5,
            (false, Arm::Lz4) => 21.0,
            (false, Arm::Zstd) => 24.0,
        });
        let back = switches.iter().find(|(at, s)| *at > 30.0 && s.from == Arm::Raw);
        let (at, s) = back.unwrap_or_else(|| panic!("never compressed again: {switches:?}"));
        assert!(*at < 30.0 + MAX_GAP.as_secs_f64() + 2.0 * MAX_EPOCH.as_secs_f64() + 1.0, "{switches:?}");
        assert_ne!(s.to, Arm::Raw);
        // At the end a compressing codec holds: zstd, whose ratio wins at this speed.
        assert_eq!(switches.last().unwrap().1.to, Arm::Zstd, "{switches:?}");
    }

    /// The link goes down for 20 s while lz4 runs and comes back just as
    /// no compression challenges it: the challenger's epoch sees the
    /// burst of a link back from an outage, the incumbent's confirming
    /// epoch sees the link as it is, and nothing switches.
    #[test]
    fn an_outage_does_not_make_a_challenger_win() {
        // (7 MiB/s trickles through while it is down: what the SST log
        // showed, enough bytes for an epoch to count.)
        let (switches, share) = simulate(&ALL, 60.0, |t, a| match ((6.0..26.0).contains(&t), a) {
            (true, _) => 7.0,
            (false, Arm::Raw) => 112.0,
            (false, Arm::Lz4) => 200.0,
            (false, Arm::Zstd) => 205.0,
        });
        assert!(switches.is_empty(), "{switches:?}");
        assert!(share[Arm::Lz4.index()] > 50.0, "{share:?}");
        // Nothing at all while down (every epoch a stall), then a burst
        // as the socket buffers refill, whatever the codec.
        let (switches, _) = simulate(&ALL, 60.0, |t, a| match (t, a) {
            (t, _) if (6.0..26.0).contains(&t) => 0.0,
            (t, _) if (26.0..26.4).contains(&t) => 900.0,
            (_, Arm::Raw) => 112.0,
            (_, _) => 200.0,
        });
        assert!(switches.is_empty(), "a burst after the outage made a challenger win: {switches:?}");
    }

    #[test]
    fn one_arm_never_switches_and_slow_epochs_wait_for_bytes() {
        let (switches, share) = simulate(&[Arm::Raw], 20.0, |_, _| 1.0);
        assert!(switches.is_empty());
        assert!(share[Arm::Raw.index()] > 19.9);
        // 1 MiB/s: an epoch waits for MAX_EPOCH, not EPOCH.
        let mut t = Trial::new(&[Arm::Lz4, Arm::Raw], MIN_GAP);
        t.tick(Duration::ZERO, 0);
        t.tick(SETTLE, 0);
        assert!(t.measuring.is_some());
        t.tick(SETTLE + EPOCH + Duration::from_millis(10), 1 << 20);
        assert!(t.rate.iter().all(|r| *r == 0.0), "judged too early");
        t.tick(SETTLE + MAX_EPOCH, 4 << 20);
        assert!(t.rate.iter().all(|r| *r == 0.0), "4 MiB in MAX_EPOCH is a stall, not a measurement");
        t.tick(SETTLE + MAX_EPOCH * 2, (4 << 20) + EPOCH_BYTES);
        assert!((t.rate[Arm::Lz4.index()] - EPOCH_BYTES as f64 / MAX_EPOCH.as_secs_f64()).abs() < 1.0, "{:?}", t.rate);
    }
}
