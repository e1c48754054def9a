//! How many of a session's streams carry data (issue 15): the sender
//! connects up to a bound at the start, lets a few streams work and parks
//! the rest, then adds a stream while another one makes the session
//! deliver more and retires it when it does not (a path that limits each
//! connection — a long round trip, loss, a per-flow policer — gains from
//! more; a link that is full, a CPU that is busy or a source that is slow
//! does not).
//!
//! Two parts: [`Shifter`] decides from measured delivery, without I/O or
//! clocks; [`Gears`] holds the decision for the stream threads and parks
//! the ones above it. The sender's driver feeds one [`Sample`] per
//! [`EPOCH`] to the shifter and applies what it says.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::pipeline::Abort;
use crate::{Error, Result};

/// How often the driver measures delivery: long enough that a block more
/// or less (1 MiB) is a few per cent of what even a 25 MiB/s link
/// delivers in it.
pub const EPOCH: Duration = Duration::from_secs(1);

/// How often a parked stream shows the receiver it is alive (a KEEPALIVE;
/// the receiver's idle timeout is 120 s by default, seconds in tests).
pub const PARKED_KEEPALIVE: Duration = Duration::from_secs(1);

/// The most connections a session opens by default when it may add
/// streams: four times its start, at most this.
pub const MAX_DEFAULT: u16 = 16;

/// Epochs ignored at the start (TCP's slow start, the first reads).
const WARMUP: u32 = 1;
/// A stream added must raise delivery by this much to stay...
const GAIN: f64 = 1.10;
/// ...and one retired may cost at most this much.
const LOSS: f64 = 0.95;
/// Streams added that each delivered at least this share of what each
/// busy stream did before: the next probe adds twice as many.
const LINEAR: f64 = 0.8;
/// A busy stream waiting for work more than this share of the time: the
/// source limits, not the path.
const STARVED: f64 = 0.25;
/// Epochs between probes after one that did not pay: doubling, from..to.
const BACKOFF_MIN: u32 = 2;
const BACKOFF_MAX: u32 = 64;

/// One epoch's measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Data bytes delivered in the epoch.
    pub bytes: u64,
    pub elapsed: Duration,
    /// The share of the busy streams' time spent waiting for work.
    pub starved: f64,
}

impl Sample {
    fn rate(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64().max(1e-3)
    }
}

/// A change of the number of busy streams, and why (for the log).
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub to: usize,
    pub why: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Warmup(u32),
    Steady,
    /// `from` streams delivered `base`; `settle` epochs are ignored before
    /// the one that decides.
    Trial {
        from: usize,
        base: f64,
        settle: u32,
    },
}

/// Decides the number of busy streams between `start` and `max` from one
/// [`Sample`] per epoch: probes one more stream when the last probe is far
/// enough back, keeps it if delivery rose by [`GAIN`], retires it if not
/// (and waits twice as long before the next probe); tries one fewer now and
/// then above the start, keeping it if delivery held; retires streams above
/// the start while the source starves them.
#[derive(Debug, Clone)]
pub struct Shifter {
    start: usize,
    max: usize,
    active: usize,
    phase: Phase,
    /// Epochs to wait before the next probe, and the wait after a failed one.
    wait: u32,
    backoff: u32,
}

fn mib(rate: f64) -> String {
    format!("{:.0} MiB/s", rate / 1_048_576.0)
}

impl Shifter {
    pub fn new(start: usize, max: usize) -> Self {
        assert!(start >= 1 && max >= start, "1 <= start <= max");
        Self { start, max, active: start, phase: Phase::Warmup(WARMUP), wait: 0, backoff: BACKOFF_MIN }
    }

    /// Busy streams now.
    pub fn active(&self) -> usize {
        self.active
    }

    /// Takes one epoch's sample; returns the change to make, if any.
    pub fn observe(&mut self, s: Sample) -> Option<Change> {
        let rate = s.rate();
        let starved = s.starved > STARVED;
        match self.phase {
            Phase::Warmup(n) => {
                self.phase = if n > 1 { Phase::Warmup(n - 1) } else { Phase::Steady };
                None
            }
            Phase::Trial { from, base, settle } if settle > 0 => {
                self.phase = Phase::Trial { from, base, settle: settle - 1 };
                None
            }
            Phase::Trial { from, base, .. } => {
                let to = self.active;
                let kept = if to > from { rate >= base * GAIN && !starved } else { rate >= base * LOSS || starved };
                self.phase = Phase::Steady;
                if kept {
                    self.backoff = BACKOFF_MIN;
                    self.wait = self.backoff;
                    let verb = if to > from { "added" } else { "retired" };
                    tracing::debug!("streams: {verb} one: {from} → {to} delivered {} → {}", mib(base), mib(rate));
                    if to > from && to < self.max {
                        // Streams that paid: probe more at once, twice as
                        // many while each one added delivered (nearly) as
                        // much as each one before.
                        let linear = rate >= base * (1.0 + LINEAR * (to - from) as f64 / from as f64);
                        let step = if linear { 2 * (to - from) } else { 1 };
                        self.active = (to + step).min(self.max);
                        self.phase = Phase::Trial { from: to, base: rate, settle: 1 };
                        let why = format!(
                            "{from} → {to} streams raised delivery from {} to {}; probing {} more",
                            mib(base),
                            mib(rate),
                            self.active - to
                        );
                        return Some(Change { to: self.active, why });
                    }
                    return None;
                }
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                self.wait = self.backoff;
                self.active = from;
                let why = if to > from {
                    format!("{to} streams delivered {} against {}'s {}: no gain", mib(rate), from, mib(base))
                } else {
                    format!("{to} streams delivered {} against {}'s {}: a loss", mib(rate), from, mib(base))
                };
                Some(Change { to: from, why })
            }
            Phase::Steady => {
                if starved {
                    if self.active > self.start {
                        self.active -= 1;
                        self.wait = self.backoff;
                        let why = format!("the streams waited for data {:.0}% of the time", s.starved * 100.0);
                        return Some(Change { to: self.active, why });
                    }
                    return None;
                }
                if self.wait > 0 {
                    self.wait -= 1;
                    return None;
                }
                let from = self.active;
                // Up while there is room; above the start, down now and
                // then (the path may have changed).
                let up = from < self.max && !(from > self.start && self.backoff >= 8 && self.backoff.is_power_of_two());
                let to = if up {
                    from + 1
                } else if from > self.start {
                    from - 1
                } else {
                    self.wait = BACKOFF_MAX;
                    return None;
                };
                self.active = to;
                self.phase = Phase::Trial { from, base: rate, settle: 1 };
                let why = format!("probing: {from} streams deliver {}", mib(rate));
                Some(Change { to, why })
            }
        }
    }
}

/// What a stream may do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// Take work.
    Go,
    /// End now: the receiver cannot hold a parked stream (protocol < 8).
    Retire,
}

#[derive(Debug)]
struct State {
    active: usize,
    /// The work ran out: every stream takes its turn and finds none.
    finished: bool,
}

/// The number of busy streams, shared by a session's stream threads.
#[derive(Debug)]
pub struct Gears {
    total: usize,
    /// The receiver lets a stream idle (KEEPALIVEs): park, do not retire.
    parkable: bool,
    state: Mutex<State>,
    wake: Condvar,
    /// Nanoseconds busy streams waited for work.
    starved: AtomicU64,
    peak: AtomicUsize,
}

impl Gears {
    /// `total` connected streams, `start` of them busy. With `parkable`
    /// false the others end at once and the count stays fixed.
    pub fn new(start: usize, total: usize, parkable: bool) -> Self {
        let start = start.clamp(1, total.max(1));
        Self {
            total,
            parkable,
            state: Mutex::new(State { active: start, finished: false }),
            wake: Condvar::new(),
            starved: AtomicU64::new(0),
            peak: AtomicUsize::new(start),
        }
    }

    /// Whether the count may change while the session runs.
    pub fn shifts(&self) -> bool {
        self.parkable && self.active() < self.total
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn active(&self) -> usize {
        self.lock().active
    }

    /// The most streams that were busy at once.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// Sets the number of busy streams (within 1..=total) and wakes the
    /// parked ones that may go.
    pub fn shift(&self, to: usize) {
        let to = to.clamp(1, self.total);
        self.lock().active = to;
        self.peak.fetch_max(to, Ordering::Relaxed);
        self.wake.notify_all();
    }

    /// The work ran out (or the session ends): every parked stream goes,
    /// to find no work and end.
    pub fn finish(&self) {
        self.lock().finished = true;
        self.wake.notify_all();
    }

    /// A busy stream waited `d` for work.
    pub fn starved(&self, d: Duration) {
        self.starved.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Nanoseconds busy streams have waited for work so far.
    pub fn starved_total(&self) -> u64 {
        self.starved.load(Ordering::Relaxed)
    }

    /// Stream `index`'s turn: returns at once while it is busy; parks it
    /// while it is not, calling `alive` every [`PARKED_KEEPALIVE`] (its
    /// error ends the wait), until it may go, the work ran out or `abort`
    /// is set.
    pub fn turn(&self, index: usize, abort: &Abort, mut alive: impl FnMut() -> Result<()>) -> Result<Turn> {
        let mut state = self.lock();
        loop {
            if state.finished || index < state.active {
                return Ok(Turn::Go);
            }
            if !self.parkable {
                return Ok(Turn::Retire);
            }
            if abort.is_set() {
                return Err(Abort::error());
            }
            let (s, timeout) = self.wake.wait_timeout(state, PARKED_KEEPALIVE).unwrap_or_else(std::sync::PoisonError::into_inner);
            state = s;
            if timeout.timed_out() && !state.finished && index >= state.active {
                drop(state);
                alive()?;
                state = self.lock();
            }
        }
    }
}

/// The connections a sender opens: `start`, or up to `max` when it may add
/// streams while the session runs. Validated here: the bounds are the
/// operator's.
pub fn connections(start: u16, max: Option<u16>) -> Result<u16> {
    match max {
        Some(m) if m < start => Err(Error::Config(format!("max-streams ({m}) is below streams ({start})"))),
        Some(m) if m > crate::wire::MAX_STREAMS => Err(Error::Config(format!("max-streams must be at most {}", crate::wire::MAX_STREAMS))),
        Some(m) => Ok(m),
        None => Ok(start),
    }
}

/// The default bound for a session that starts with `start` streams.
pub fn default_max(start: u16) -> u16 {
    start.saturating_mul(4).clamp(start, MAX_DEFAULT.max(start))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(mib_per_s: f64) -> Sample {
        Sample { bytes: (mib_per_s * 1_048_576.0 * EPOCH.as_secs_f64()) as u64, elapsed: EPOCH, starved: 0.0 }
    }

    /// Runs the shifter against a path whose delivery is `path(streams)`
    /// for `epochs`; returns the busy count after each epoch.
    fn drive(sh: &mut Shifter, epochs: usize, path: impl Fn(usize) -> f64) -> Vec<usize> {
        (0..epochs)
            .map(|_| {
                let s = sample(path(sh.active()));
                if let Some(c) = sh.observe(s) {
                    assert_eq!(c.to, sh.active());
                    assert!(!c.why.is_empty());
                }
                sh.active()
            })
            .collect()
    }

    #[test]
    fn a_path_that_limits_each_connection_gets_streams_up_to_the_bound() {
        // 25 MiB/s per connection, 1 GiB/s in all.
        let mut sh = Shifter::new(2, 8);
        let seen = drive(&mut sh, 60, |n| (25.0 * n as f64).min(1024.0));
        let reached = seen.iter().position(|&n| n == 8).unwrap_or_else(|| panic!("{seen:?}"));
        assert!(reached <= 8, "twice as many each time they pay: 2, 3, 5, 8 within 8 s: {seen:?}");
        // At the bound it tries one fewer now and then, and comes back.
        let after = &seen[reached..];
        assert!(after.iter().all(|&n| n >= 7) && after.iter().filter(|&&n| n == 8).count() * 4 >= after.len() * 3, "{seen:?}");
        assert!(seen.windows(2).all(|w| w[1] + 1 >= w[0]), "never drops more than one at a time: {seen:?}");
    }

    #[test]
    fn a_full_link_keeps_the_start_and_probes_ever_more_rarely() {
        // 110 MiB/s whatever the count (a 1 Gbit/s link).
        let mut sh = Shifter::new(2, 8);
        let seen = drive(&mut sh, 400, |_| 110.0);
        assert!(seen.iter().all(|&n| n <= 3), "{seen:?}");
        let probes = seen.iter().filter(|&&n| n == 3).count();
        // Two epochs per probe; waits of 4, 8, … 64 epochs.
        assert!((4..=24).contains(&probes), "{probes} epochs on probes: {seen:?}");
        assert_eq!(*seen.last().unwrap(), 2);
    }

    #[test]
    fn streams_added_are_retired_when_the_path_stops_paying_for_them() {
        let mut sh = Shifter::new(2, 8);
        let first = drive(&mut sh, 30, |n| 20.0 * n as f64);
        assert!(first[first.len() - 10..].iter().all(|&n| n >= 7), "{first:?}");
        // Now a shared bottleneck caps everything at 60 MiB/s: more than
        // three streams buy nothing, and the down-probes find it.
        let then = drive(&mut sh, 600, |n| (20.0 * n as f64).min(60.0));
        assert!(then[then.len() - 100..].iter().all(|&n| n <= 4), "{then:?}");
    }

    #[test]
    fn a_starving_source_retires_the_streams_above_the_start_and_never_probes() {
        let mut sh = Shifter::new(2, 8);
        drive(&mut sh, 20, |n| 20.0 * n as f64);
        assert!(sh.active() > 4);
        for _ in 0..20 {
            sh.observe(Sample { starved: 0.6, ..sample(30.0) });
        }
        assert_eq!(sh.active(), 2);
        for _ in 0..200 {
            assert_eq!(sh.observe(Sample { starved: 0.6, ..sample(30.0) }), None);
        }
    }

    #[test]
    fn a_fixed_bound_never_changes() {
        let mut sh = Shifter::new(3, 3);
        assert!(drive(&mut sh, 200, |n| 10.0 * n as f64).iter().all(|&n| n == 3));
    }

    #[test]
    fn parked_streams_wait_keep_alive_and_go_when_shifted_or_finished() {
        let gears = std::sync::Arc::new(Gears::new(1, 3, true));
        let abort = std::sync::Arc::new(Abort::default());
        assert_eq!(gears.turn(0, &abort, || unreachable!("busy")).unwrap(), Turn::Go);
        let (g, a) = (std::sync::Arc::clone(&gears), std::sync::Arc::clone(&abort));
        let parked = std::thread::spawn(move || {
            let mut alive = 0;
            let t = g.turn(2, &a, || {
                alive += 1;
                Ok(())
            });
            (t.unwrap(), alive)
        });
        std::thread::sleep(PARKED_KEEPALIVE * 2 + Duration::from_millis(300));
        gears.shift(3);
        let (turn, alive) = parked.join().unwrap();
        assert_eq!(turn, Turn::Go);
        assert!(alive >= 1, "a parked stream says it is alive");
        assert_eq!(gears.peak(), 3);
        gears.shift(1);
        gears.finish();
        assert_eq!(gears.turn(2, &abort, || unreachable!()).unwrap(), Turn::Go, "finished: everyone goes, to find no work");
    }

    #[test]
    fn an_older_receiver_gets_its_surplus_streams_retired_and_abort_ends_a_park() {
        let gears = Gears::new(2, 4, false);
        assert!(!gears.shifts());
        let abort = Abort::default();
        assert_eq!(gears.turn(1, &abort, || unreachable!()).unwrap(), Turn::Go);
        assert_eq!(gears.turn(3, &abort, || unreachable!()).unwrap(), Turn::Retire);
        let gears = Gears::new(1, 2, true);
        abort.trip();
        assert!(gears.turn(1, &abort, || Ok(())).is_err());
        let gears = Gears::new(1, 2, true);
        let e = gears.turn(1, &Abort::default(), || Err(Error::Config("the link broke".into()))).unwrap_err();
        assert!(e.to_string().contains("the link broke"));
    }

    #[test]
    fn bounds_are_checked_and_defaulted() {
        assert_eq!(connections(2, None).unwrap(), 2);
        assert_eq!(connections(2, Some(8)).unwrap(), 8);
        assert!(connections(4, Some(2)).unwrap_err().to_string().contains("below"));
        assert!(connections(4, Some(300)).is_err());
        assert_eq!((default_max(1), default_max(2), default_max(8), default_max(64)), (4, 8, 16, 64));
    }
}
