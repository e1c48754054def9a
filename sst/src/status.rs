//! What an SST is doing, told to everyone who asks: the stage (waiting,
//! receiving or sending, preparing, moving, done, failed), bytes done and
//! expected, rate and ETA in a JSON status file replaced atomically every
//! second (orchestrators and probes read it); progress lines for mysqld or
//! the log ([`crate::report::Sink`]) that cover every stage; and the idle
//! watchdog (`[sst] sst-idle-timeout`), which counts progress in every
//! stage — bytes in a transfer, a helper's I/O and CPU while it prepares or
//! moves — so only a stuck SST is stopped, never a slow one.
//!
//! mysqld checks the joiner's free space against the sum of the `total`
//! lines it read, while the data lands (SST-PROTOCOL.md §3, item 7), so
//! the joiner reports in MiB: the fraction mysqld shows is right and its
//! check cannot fail a good SST (sluice checks the space itself, with the
//! donor's announced size, before anything lands).

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sluice_engine::progress::Progress;

use crate::mysqld::Protocol;
use crate::process::Children;
use crate::report::Sink;

/// The status file's name in the datadir when `[sst] status-file` is unset.
pub const DEFAULT_FILE: &str = "sluice_sst_status.json";

const TICK: Duration = Duration::from_millis(250);

/// Where an SST is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Listening for the donor (joiner) or starting (donor).
    Waiting,
    Receiving,
    Sending,
    /// mariadb-backup `--prepare` in the staging directory.
    Preparing,
    /// The old data set aside, the new data moved into place.
    Moving,
    Done,
    Failed,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Receiving => "receiving",
            Self::Sending => "sending",
            Self::Preparing => "preparing",
            Self::Moving => "moving",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }

    fn watched(self) -> bool {
        matches!(self, Self::Receiving | Self::Sending | Self::Preparing | Self::Moving)
    }

    fn transfers(self) -> bool {
        matches!(self, Self::Receiving | Self::Sending)
    }
}

/// One snapshot of the status, as written to the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub role: &'static str,
    pub stage: Stage,
    pub pid: u32,
    pub started_unix: u64,
    pub updated_unix: u64,
    pub stage_seconds: f64,
    pub bytes_done: u64,
    pub bytes_expected: u64,
    /// Payload bytes on the wire (after compression).
    pub wire_bytes: u64,
    pub rate_bytes_per_s: u64,
    pub eta_seconds: Option<u64>,
    pub error: Option<String>,
}

/// A JSON string literal.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Status {
    /// The file's content: one JSON object and a newline.
    pub fn to_json(&self) -> String {
        let opt = |v: Option<u64>| v.map_or_else(|| "null".to_string(), |v| v.to_string());
        format!(
            "{{\"role\":{},\"stage\":{},\"pid\":{},\"version\":{},\"started_unix\":{},\"updated_unix\":{},\"stage_seconds\":{:.1},\
             \"bytes_done\":{},\"bytes_expected\":{},\"wire_bytes\":{},\"compression_ratio\":{},\"rate_bytes_per_s\":{},\"eta_seconds\":{},\"error\":{}}}\n",
            json_string(self.role),
            json_string(self.stage.name()),
            self.pid,
            json_string(env!("CARGO_PKG_VERSION")),
            self.started_unix,
            self.updated_unix,
            self.stage_seconds,
            self.bytes_done,
            self.bytes_expected,
            self.wire_bytes,
            if self.wire_bytes > 0 { format!("{:.2}", self.bytes_done as f64 / self.wire_bytes as f64) } else { "null".into() },
            self.rate_bytes_per_s,
            opt(self.eta_seconds),
            self.error.as_deref().map_or_else(|| "null".to_string(), json_string),
        )
    }
}

/// The watchdog's decision core: a pulse that must keep changing.
#[derive(Debug, Clone)]
pub struct Idle {
    limit: Duration,
    last: Option<u64>,
    since: Instant,
}

impl Idle {
    pub fn new(limit: Duration, now: Instant) -> Self {
        Self { limit, last: None, since: now }
    }

    /// Restarts the count (a new stage).
    pub fn reset(&mut self, now: Instant) {
        self.last = None;
        self.since = now;
    }

    /// Feeds the current pulse; true once it has not changed for the limit.
    pub fn expired(&mut self, pulse: u64, now: Instant) -> bool {
        if self.last != Some(pulse) {
            self.last = Some(pulse);
            self.since = now;
        }
        now.duration_since(self.since) >= self.limit
    }
}

/// What a helper process has done so far: bytes read and written, CPU
/// ticks (any change is progress).
fn helper_pulse(pids: &[u32]) -> u64 {
    let mut sum = 0u64;
    for pid in pids {
        if let Ok(io) = std::fs::read_to_string(format!("/proc/{pid}/io")) {
            for l in io.lines() {
                if let Some(v) = l.strip_prefix("rchar: ").or_else(|| l.strip_prefix("wchar: ")) {
                    sum = sum.wrapping_add(v.trim().parse().unwrap_or(0));
                }
            }
        }
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // utime and stime are fields 14 and 15; the command name before
            // them may hold spaces, so count from the closing parenthesis.
            if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
                let f: Vec<&str> = rest.split_whitespace().collect();
                for i in [11, 12] {
                    sum = sum.wrapping_add(f.get(i).and_then(|v| v.parse().ok()).unwrap_or(0));
                }
            }
        }
    }
    sum
}

#[derive(Debug)]
struct State {
    stage: Stage,
    stage_started: Instant,
    progress: Option<Arc<Progress>>,
    expected: u64,
    error: Option<String>,
}

#[derive(Debug)]
struct Inner {
    role: &'static str,
    sink: Sink,
    path: Option<PathBuf>,
    idle: Option<Duration>,
    children: Children,
    started: SystemTime,
    state: Mutex<State>,
    stop: AtomicBool,
    expired: AtomicBool,
}

/// The running monitor of one SST.
#[derive(Debug)]
pub struct Monitor {
    inner: Arc<Inner>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn mib_units(bytes: u64) -> u64 {
    bytes.div_ceil(1 << 20)
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn snapshot(&self) -> Status {
        let st = self.lock();
        let (done, wire, seconds) = st.progress.as_ref().map_or((0, 0, 0.0), |p| {
            let s = p.snapshot();
            (s.done, s.wire, s.seconds)
        });
        let rate = if st.stage.transfers() && seconds > 0.5 { (done as f64 / seconds) as u64 } else { 0 };
        let eta = (rate > 0 && st.expected > done).then(|| (st.expected - done) / rate);
        Status {
            role: self.role,
            stage: st.stage,
            pid: std::process::id(),
            started_unix: unix(self.started),
            updated_unix: unix(SystemTime::now()),
            stage_seconds: st.stage_started.elapsed().as_secs_f64(),
            bytes_done: done,
            bytes_expected: st.expected,
            wire_bytes: wire,
            rate_bytes_per_s: rate,
            eta_seconds: eta,
            error: st.error.clone(),
        }
    }

    fn write_file(&self) {
        let Some(path) = &self.path else { return };
        if let Err(e) = crate::fresh::replace_unsynced(path, self.snapshot().to_json().as_bytes()) {
            tracing::debug!("cannot write the status file {}: {e}", path.display());
        }
    }

    /// The progress line for mysqld, in its units (bytes on the donor, MiB
    /// on the joiner).
    fn units(&self, bytes: u64) -> u64 {
        if self.role == "joiner" { mib_units(bytes) } else { bytes }
    }

    fn emit(&self) {
        let s = self.snapshot();
        match &self.sink {
            Sink::Mysqld if s.stage.transfers() => {
                let _ = Protocol::new(std::io::stdout()).complete(self.units(s.bytes_done));
            }
            Sink::Log | Sink::File(_) if s.stage.transfers() => {
                let line = human(self.role, &s);
                if let Sink::File(path) = &self.sink {
                    // A fifo without a reader must not block the SST.
                    let f = std::fs::OpenOptions::new().append(true).create(true).custom_flags(libc::O_NONBLOCK).open(path);
                    if let Ok(mut f) = f {
                        let _ = writeln!(f, "{line}");
                    }
                } else {
                    tracing::info!("{line}");
                }
            }
            _ => {}
        }
    }

    fn pulse(&self) -> u64 {
        let st = self.lock();
        let bytes = st.progress.as_ref().map_or(0, |p| {
            let s = p.snapshot();
            // A stream waiting to reconnect is not a stall: the resume
            // window bounds that wait.
            let waiting = if s.resuming > 0 { s.seconds.to_bits() } else { 0 };
            s.done.wrapping_add(s.wire).wrapping_add(waiting)
        });
        drop(st);
        bytes.wrapping_add(helper_pulse(&self.children.pids()))
    }
}

fn human(role: &str, s: &Status) -> String {
    let mib = |b: u64| b as f64 / 1_048_576.0;
    let rate = mib(s.rate_bytes_per_s);
    // What compression saved, once anything was compressed.
    let ratio = if s.wire_bytes > 0 && s.wire_bytes < s.bytes_done {
        format!(", {:.2}x compression", s.bytes_done as f64 / s.wire_bytes as f64)
    } else {
        String::new()
    };
    if s.bytes_expected > 0 {
        format!(
            "{role}: {:.0} of {:.0} MiB ({:.0} %), {rate:.0} MiB/s{ratio}",
            mib(s.bytes_done),
            mib(s.bytes_expected),
            100.0 * s.bytes_done as f64 / s.bytes_expected as f64
        )
    } else {
        format!("{role}: {:.0} MiB, {rate:.0} MiB/s{ratio}", mib(s.bytes_done))
    }
}

fn run(inner: &Inner) {
    let start = Instant::now();
    let mut idle = inner.idle.map(|l| Idle::new(l, start));
    let mut stage = Stage::Waiting;
    let mut last_write = start;
    let mut last_emit = start;
    let every = if inner.sink == Sink::Mysqld { Duration::from_secs(1) } else { Duration::from_secs(10) };
    while !inner.stop.load(Ordering::Acquire) {
        std::thread::sleep(TICK);
        let now = Instant::now();
        let current = inner.lock().stage;
        if current != stage {
            stage = current;
            if let Some(i) = &mut idle {
                i.reset(now);
            }
        }
        if now.duration_since(last_write) >= Duration::from_secs(1) {
            inner.write_file();
            last_write = now;
        }
        if now.duration_since(last_emit) >= every {
            inner.emit();
            last_emit = now;
        }
        if let Some(i) = &mut idle {
            if stage.watched() && !inner.expired.load(Ordering::Acquire) && i.expired(inner.pulse(), now) {
                expire(inner, stage, i.limit);
            }
        }
    }
}

/// The watchdog fires: helpers are killed (their flow then fails and puts
/// the old data back); a transfer cannot be interrupted from here, so the
/// process ends as on a fatal signal (nothing of the old data is touched
/// while data travels).
fn expire(inner: &Inner, stage: Stage, limit: Duration) {
    inner.expired.store(true, Ordering::Release);
    let msg = format!(
        "no progress for {} s while {}: giving up ([sst] sst-idle-timeout={}; raise it, or set 0 to wait forever)",
        limit.as_secs(),
        stage.name(),
        limit.as_secs()
    );
    tracing::error!("{msg}");
    if stage.transfers() {
        {
            let mut st = inner.lock();
            st.stage = Stage::Failed;
            st.error = Some(msg);
        }
        inner.write_file();
        sluice_engine::cleanup::run(&format!("stopped: no progress for {} s ([sst] sst-idle-timeout)", limit.as_secs()));
        std::process::exit(110);
    }
    inner.lock().error = Some(msg);
    inner.children.kill_all();
}

impl Monitor {
    /// Starts the monitor thread; the status file (if any) says `waiting`
    /// at once.
    pub fn start(
        role: &'static str,
        sink: Sink,
        path: Option<PathBuf>,
        idle: Option<Duration>,
        children: Children,
    ) -> std::io::Result<Self> {
        let inner = Arc::new(Inner {
            role,
            sink,
            path,
            idle,
            children,
            started: SystemTime::now(),
            state: Mutex::new(State { stage: Stage::Waiting, stage_started: Instant::now(), progress: None, expected: 0, error: None }),
            stop: AtomicBool::new(false),
            expired: AtomicBool::new(false),
        });
        inner.write_file();
        let i = Arc::clone(&inner);
        let thread = std::thread::Builder::new().name("sluice-status".into()).spawn(move || run(&i))?;
        Ok(Self { inner, thread: Mutex::new(Some(thread)) })
    }

    /// Enters `stage`, counting `progress` against `expected` bytes.
    pub fn stage(&self, stage: Stage, progress: Option<Arc<Progress>>, expected: u64) {
        // The transfer that ends gets its last progress line.
        if self.inner.lock().stage.transfers() {
            self.inner.emit();
        }
        {
            let mut st = self.inner.lock();
            st.stage = stage;
            st.stage_started = Instant::now();
            st.progress = progress;
            st.expected = expected;
        }
        if self.inner.sink == Sink::Mysqld && stage.watched() {
            let units = if stage.transfers() { self.inner.units(expected) } else { 1 };
            let _ = Protocol::new(std::io::stdout()).total(units);
        }
        tracing::debug!("stage: {}", stage.name());
        self.inner.write_file();
    }

    /// A helper stage (prepare, move) finished: its one unit is complete.
    pub fn helper_done(&self) {
        if self.inner.sink == Sink::Mysqld {
            let _ = Protocol::new(std::io::stdout()).complete(1);
        }
    }

    /// Whether the watchdog stopped this SST.
    pub fn expired(&self) -> bool {
        self.inner.expired.load(Ordering::Acquire)
    }

    /// The watchdog's message, if it fired.
    pub fn expiry(&self) -> Option<String> {
        if self.expired() { self.inner.lock().error.clone() } else { None }
    }

    /// Something that records a failure in the status file at once, for a
    /// thread that is about to make mysqld end this process (a refusal
    /// told to the donor: the donor fails, the cluster tells this node's
    /// mysqld, and it may kill the joiner before [`Monitor::finish`]).
    pub fn failing_now(&self) -> impl Fn(&str) + Send + Sync + 'static {
        let inner = Arc::clone(&self.inner);
        move |error: &str| {
            {
                let mut st = inner.lock();
                st.stage = Stage::Failed;
                st.stage_started = Instant::now();
                st.error = Some(error.to_string());
            }
            inner.write_file();
        }
    }

    /// Ends the monitor with `done` or `failed` (naming `error`) in the file.
    pub fn finish(&self, error: Option<&str>) {
        self.inner.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.lock().unwrap_or_else(PoisonError::into_inner).take() {
            let _ = t.join();
        }
        if self.inner.lock().stage.transfers() {
            self.inner.emit();
        }
        {
            let mut st = self.inner.lock();
            st.stage = if error.is_some() { Stage::Failed } else { Stage::Done };
            st.stage_started = Instant::now();
            if let Some(e) = error {
                st.error = Some(e.to_string());
            }
        }
        self.inner.write_file();
    }

    /// The status file's path.
    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_fires_only_after_the_pulse_stood_still_for_the_limit() {
        let t0 = Instant::now();
        let mut i = Idle::new(Duration::from_secs(10), t0);
        assert!(!i.expired(5, t0));
        assert!(!i.expired(5, t0 + Duration::from_secs(9)));
        assert!(!i.expired(6, t0 + Duration::from_secs(15)), "a change restarts the count");
        assert!(!i.expired(6, t0 + Duration::from_secs(24)));
        assert!(i.expired(6, t0 + Duration::from_secs(25)));
        i.reset(t0 + Duration::from_secs(30));
        assert!(!i.expired(6, t0 + Duration::from_secs(31)), "a new stage starts a new count");
    }

    #[test]
    fn status_is_one_json_object_with_escaped_error() {
        let s = Status {
            role: "joiner",
            stage: Stage::Failed,
            pid: 7,
            started_unix: 1,
            updated_unix: 2,
            stage_seconds: 0.25,
            bytes_done: 10,
            bytes_expected: 20,
            wire_bytes: 4,
            rate_bytes_per_s: 5,
            eta_seconds: Some(2),
            error: Some("bad \"quote\"\nand\u{1} control".into()),
        };
        let j = s.to_json();
        assert!(j.ends_with("}\n") && j.matches('\n').count() == 1, "{j}");
        assert!(j.contains(r#""stage":"failed""#) && j.contains(r#""eta_seconds":2"#), "{j}");
        assert!(j.contains(r#""wire_bytes":4,"compression_ratio":2.50"#), "{j}");
        assert!(j.contains(r#""error":"bad \"quote\"\nand\u0001 control""#), "{j}");
    }

    #[test]
    fn a_helpers_pulse_moves_while_it_works() {
        let mut child = std::process::Command::new("sh").args(["-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"]).spawn().unwrap();
        let pid = child.id();
        let a = helper_pulse(&[pid]);
        std::thread::sleep(Duration::from_millis(300));
        let b = helper_pulse(&[pid]);
        let _ = child.kill();
        let _ = child.wait();
        assert_ne!(a, b, "CPU time of a busy helper counts as progress");
    }

    #[test]
    fn human_progress_reaches_a_progress_file() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("progress.txt");
        let m = Monitor::start("donor", Sink::File(out.clone()), None, None, Children::default()).unwrap();
        let p = Arc::new(Progress::default());
        p.add(1 << 20);
        p.add_wire(1 << 19);
        m.stage(Stage::Sending, Some(p), 4 << 20);
        m.finish(None);
        let text = std::fs::read_to_string(&out).unwrap();
        assert!(text.starts_with("donor: 1 of 4 MiB (25 %)") && text.contains("2.00x compression"), "{text}");
    }

    #[test]
    fn the_file_is_replaced_whole_and_ends_done_or_failed() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("s.json");
        let m = Monitor::start("joiner", Sink::None, Some(path.clone()), None, Children::default()).unwrap();
        assert!(std::fs::read_to_string(&path).unwrap().contains(r#""stage":"waiting""#));
        let p = Arc::new(Progress::default());
        p.add(1 << 20);
        m.stage(Stage::Receiving, Some(Arc::clone(&p)), 4 << 20);
        let s = std::fs::read_to_string(&path).unwrap();
        assert!(s.contains(r#""stage":"receiving""#) && s.contains(r#""bytes_expected":4194304"#), "{s}");
        m.finish(Some("disk full"));
        let s = std::fs::read_to_string(&path).unwrap();
        assert!(s.contains(r#""stage":"failed""#) && s.contains(r#""error":"disk full""#), "{s}");
        let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
    }
}
