//! The sender's session: handshake on N streams, manifest on stream 0,
//! blocks pulled from the shared [`Schedule`] by one thread per stream, the
//! END totals, and the receiver's verdict.
//!
//! States, in order: `Connect` (HELLO/WELCOME on every stream) → `Manifest`
//! → `Data` (stream threads) → `End` → `AwaitVerdict`. Any stream failure
//! aborts the others; the receiver's verdict, when it has one, is the error
//! reported, because it says what went wrong on the far side.

use std::fs::File;
use std::net::Shutdown;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver as Rx, RecvTimeoutError, bounded, unbounded};

use crate::backend::{self, IoMode, StreamIo};
use crate::codec::governor::Governor;
use crate::codec::seal::{Binding, Direction, SealKey, Sealer, TAG_LEN};
use crate::codec::{Compression, Encoder};
pub use crate::feeder::Feeder;
use crate::feeder::{Item, ItemKind};
use crate::gears::{self, Gears, Shifter, Turn};
use crate::lane::{self, Hail, Heard, Lane, Replay, Resumer};
use crate::manifest::{Entry, Extent};
use crate::net::tls::TlsOptions;
use crate::net::{self, Link, Token};
use crate::pipeline::{self, Abort};
use crate::plan::{Schedule, SendTally};
use crate::progress::Progress;
use crate::proto::Outbound;
use crate::resume::{Budget, RejoinKey};
use crate::source::{self, SourceTree};
use crate::throttle::Throttle;
use crate::wire::{self, DataHeader, Frame};
use crate::{Error, Result, Summary};

/// How to send.
#[derive(Debug, Clone)]
pub struct SendConfig {
    /// Parallel TCP connections (with `max_streams`: the busy ones at the
    /// start).
    pub streams: u16,
    /// Add streams up to this many while the session runs, as long as each
    /// one added makes it deliver more, and retire them when they stop
    /// paying ([`crate::gears`]); this many connections are opened, the
    /// idle ones parked. `None`: `streams`, fixed. A receiver on this host
    /// or one older than protocol 8 gets `streams`, fixed.
    pub max_streams: Option<u16>,
    pub io: IoMode,
    /// Largest block per DATA frame.
    pub block_size: u32,
    /// How long to keep retrying a refused connection.
    pub connect_timeout: Duration,
    /// Longest time a socket may block.
    pub idle_timeout: Duration,
    /// Socket options for every stream.
    pub sockopt: net::SockOpts,
    /// Per-chunk compression (the receiver learns it from the session).
    pub compress: Compression,
    /// Wire bytes per second for all streams together.
    pub rate_limit: Option<u64>,
    /// Seal every frame with AES-256-GCM (the receiver needs the same key).
    pub seal_key: Option<SealKey>,
    /// An external filter command run on every block (`sh -c`, block on
    /// stdin, result on stdout) in streamed sessions; the receiver needs its
    /// inverse. For configured compressors sluice has no codec for.
    pub filter: Option<String>,
    /// TLS (the sender is the client).
    pub tls: TlsOptions,
    /// Shared byte counters, if the caller wants to report progress.
    pub progress: Option<Arc<Progress>>,
    /// How long a broken stream keeps trying to reconnect (0: not at all;
    /// the receiver must allow it too).
    pub resume_window: Duration,
    /// Most bytes of a streamed source kept for resending until the
    /// receiver acknowledges them (all streams together).
    pub replay_budget: u64,
    /// With `Compression::Auto`: how long the session runs lz4 before it
    /// first measures another codec against it, and the shortest wait
    /// between such measurements.
    pub adapt_after: Duration,
    /// Ask for a delta transfer: a receiver with an old copy serves its
    /// fingerprints, and equal ranges travel as references (in a streamed
    /// session, a receiver whose old copy is another directory).
    pub delta: bool,
}

/// How far ahead of each block the sender asks the kernel to read.
const READ_AHEAD: u64 = 16 << 20;

/// Default stream count: the number of CPUs, at least 2.
pub fn default_streams() -> u16 {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, usize::from(wire::MAX_STREAMS)) as u16)
}

impl Default for SendConfig {
    fn default() -> Self {
        Self {
            streams: default_streams(),
            max_streams: None,
            io: IoMode::Auto,
            block_size: crate::DEFAULT_BLOCK_SIZE,
            connect_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            sockopt: net::SockOpts::default(),
            compress: Compression::None,
            rate_limit: None,
            seal_key: None,
            filter: None,
            tls: TlsOptions::default(),
            progress: None,
            resume_window: crate::resume::DEFAULT_WINDOW,
            adapt_after: crate::codec::governor::MIN_GAP,
            replay_budget: crate::resume::DEFAULT_REPLAY_BUDGET,
            delta: false,
        }
    }
}

/// Checks the parts of a configuration every session needs.
fn validate(cfg: &SendConfig) -> Result<()> {
    if cfg.streams == 0 || cfg.streams > wire::MAX_STREAMS {
        return Err(Error::Config(format!("--streams must be between 1 and {}", wire::MAX_STREAMS)));
    }
    crate::gears::connections(cfg.streams, cfg.max_streams)?;
    if cfg.block_size < 4096 || cfg.block_size > wire::MAX_PAYLOAD {
        return Err(Error::Config(format!("--block-size must be between 4 KiB and {} MiB", wire::MAX_PAYLOAD >> 20)));
    }
    if cfg.rate_limit == Some(0) {
        return Err(Error::Config("--rate-limit must be positive".into()));
    }
    Ok(())
}

/// The connected streams of one session, the readers of what the
/// receiver says, and the per-stream sealers.
struct Session {
    lanes: Arc<Vec<Arc<Lane>>>,
    peer: String,
    sealers: Arc<Vec<std::sync::Mutex<Option<Sealer>>>>,
    /// Why the process is being stopped (a fatal signal), once it is: told
    /// to the receiver in ABORT on every stream.
    stopped: Arc<std::sync::OnceLock<String>>,
    /// The streams that said ABORT.
    said: Arc<Vec<std::sync::atomic::AtomicBool>>,
    /// The farewell registered with [`crate::cleanup`] while the session runs.
    farewell: u64,
    abort: Arc<Abort>,
    verdict: Rx<Heard>,
    verdict_tx: crossbeam_channel::Sender<Heard>,
    readers: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// Set when the session closes: the stall watch ends.
    closing: Arc<std::sync::atomic::AtomicBool>,
    /// Longest silence after END before the verdict (KEEPALIVEs reset it).
    verdict_wait: Duration,
    /// Set when the receiver granted RESUME.
    resume: Option<Arc<Resumer>>,
    /// The capabilities the receiver granted.
    caps: u64,
    /// `--compress auto`'s choice of codec, shared by the streams.
    governor: Option<Arc<Governor>>,
    /// The protocol version the receiver chose.
    version: u16,
    /// A delta transfer's fingerprints (set when DELTA was granted).
    prints: lane::Prints,
    /// How many streams are busy.
    gears: Arc<Gears>,
    /// Data bytes sent as references, and as zeros.
    reused: std::sync::atomic::AtomicU64,
    zeros: std::sync::atomic::AtomicU64,
}

impl Session {
    /// Connects and handshakes every stream, then starts the readers.
    fn open(addr: &str, token: &Token, cfg: &SendConfig, streamed: bool) -> Result<Self> {
        // Certificate problems surface before any connection is made.
        let tls = if cfg.tls.enabled() { Some((cfg.tls.client_config()?, cfg.tls.server_name(addr)?)) } else { None };
        let salt: [u8; 16] = net::random_bytes().map_err(|e| Error::io("reading /dev/urandom", e))?;
        let total = crate::gears::connections(cfg.streams, cfg.max_streams)?;
        let hail = Hail {
            token: token.clone(),
            salt,
            streams: total,
            caps: capabilities(cfg, streamed),
            connect_timeout: cfg.connect_timeout,
            idle: cfg.idle_timeout,
            sockopt: cfg.sockopt,
            tls,
        };
        let mut lanes = Vec::with_capacity(usize::from(total));
        let mut welcome: Option<lane::Welcome> = None;
        for i in 0..total {
            let (sock, w) = lane::handshake(addr, &hail, i)?;
            let first = *welcome.get_or_insert(w);
            if (first.version, first.nonce, first.secret, first.caps) != (w.version, w.nonce, w.secret, w.caps) {
                return Err(Error::peer(
                    addr,
                    "answered with different session nonces on different streams (is more than one receiver behind this address?)",
                ));
            }
            lanes.push(Arc::new(Lane::new(i, sock)));
        }
        let welcome = welcome.expect("at least one stream");
        let lanes = Arc::new(lanes);
        let peer = net::peer_name(lanes[0].link().tcp());
        let granted = Hail { caps: welcome.caps, ..hail };
        let resume = (welcome.caps & wire::caps::RESUME != 0).then(|| {
            let material = cfg.seal_key.as_ref().map(|k| k.material("sluice rejoin"));
            Arc::new(Resumer {
                addr: addr.to_string(),
                key: RejoinKey::derive(&welcome.secret, &salt, &welcome.nonce, token.as_bytes(), material.as_ref()),
                hail: granted.clone(),
                nonce: welcome.nonce,
                seal: cfg.seal_key.clone(),
                window: cfg.resume_window,
                budget: Budget::new(cfg.replay_budget),
            })
        });
        if resume.is_none() && !cfg.resume_window.is_zero() {
            tracing::info!("the receiver does not resume broken streams (its resume window is 0)");
        }
        // One sealer per stream and direction; stream 0's serves the
        // manifest, its stream thread and END in turn. The key is bound to
        // both ends' randomness, the token and what was agreed.
        let session = cfg.seal_key.as_ref().map(|k| {
            k.session(&Binding {
                sender_salt: &salt,
                receiver_nonce: &welcome.nonce,
                token: token.as_bytes(),
                capabilities: welcome.caps,
                streams: total,
            })
        });
        let sealers: Arc<Vec<_>> = Arc::new(
            (0..total).map(|i| std::sync::Mutex::new(session.clone().map(|k| Sealer::new(k, Direction::ToReceiver, i)))).collect(),
        );
        // The receiver speaks on stream 0: KEEPALIVEs after END, and its
        // verdict, possibly early; in a resumable session it acknowledges
        // on every stream. A failed verdict stops the streams at once,
        // instead of letting them send the rest into a receiver that has
        // given up. (The wait is bounded in `finish`.)
        let abort = Arc::new(Abort::default());
        let prints: lane::Prints = Arc::default();
        let (verdict_tx, verdict) = unbounded();
        let mut readers = Vec::new();
        let listened = if resume.is_some() { lanes.len() } else { 1 };
        for i in 0..listened {
            let opener = session.clone().map(|k| Sealer::new(k, Direction::ToSender, i as u16));
            let zero = (i == 0).then(|| (verdict_tx.clone(), Arc::clone(&prints)));
            readers.push(lane::spawn_reader(&lanes, i, opener, peer.clone(), zero, resume.clone(), Arc::clone(&abort))?);
        }
        let stopped = Arc::new(std::sync::OnceLock::new());
        let said: Arc<Vec<_>> = Arc::new((0..total).map(|_| std::sync::atomic::AtomicBool::new(false)).collect());
        let farewell = crate::cleanup::add_farewell(farewell(&lanes, &sealers, &stopped, &said, &abort));
        let closing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        if resume.is_some() {
            readers.push(lane::spawn_stall_watch(&lanes, &closing, &abort)?);
        }
        let verdict_wait = if cfg.idle_timeout.is_zero() { Duration::from_secs(120) } else { cfg.idle_timeout };
        let caps = welcome.caps;
        let governor = (cfg.compress == Compression::Auto).then(|| {
            let arms = Compression::arms(caps);
            let names: Vec<String> = arms.iter().map(ToString::to_string).collect();
            tracing::debug!("adaptive compression: starting with {}, measuring {} against it", names[0], names[1..].join(" and "));
            Arc::new(Governor::new(&arms, cfg.adapt_after))
        });
        let parkable = welcome.version >= wire::since::PARKED_STREAMS;
        let gears = Arc::new(Gears::new(usize::from(cfg.streams), usize::from(total), parkable));
        if total > cfg.streams {
            if parkable {
                tracing::info!("streams: {} busy at the start, up to {total} while each one added makes the transfer faster", cfg.streams);
            } else {
                tracing::info!(
                    "streams: {} (the receiver speaks protocol {}, which cannot hold a stream idle; the other {} end at once)",
                    cfg.streams,
                    welcome.version,
                    total - cfg.streams
                );
            }
        }
        Ok(Self {
            lanes,
            peer,
            stopped,
            said,
            farewell,
            sealers,
            abort,
            verdict,
            verdict_tx,
            readers: std::sync::Mutex::new(readers),
            closing,
            verdict_wait,
            resume,
            caps,
            governor,
            version: welcome.version,
            prints,
            gears,
            reused: std::sync::atomic::AtomicU64::new(0),
            zeros: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// A delta transfer, if the receiver granted it: its fingerprints go
    /// to a new book.
    fn start_delta(&self, cfg: &SendConfig, book: impl FnOnce() -> crate::delta::Book) {
        if self.caps & wire::caps::DELTA != 0 {
            tracing::info!("delta: the receiver has an old copy; ranges whose pages it holds travel as references");
            let _ = self.prints.set(Arc::new(book()));
        } else if cfg.delta {
            tracing::info!("delta: the receiver has no old copy to compare with; sending everything");
        }
    }

    /// Data bytes sent as references and as zeros.
    fn delta_totals(&self) -> (u64, u64) {
        (self.reused.load(std::sync::atomic::Ordering::Relaxed), self.zeros.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Logs what a delta transfer of `bytes` data bytes sent how.
    fn report_delta(&self, bytes: u64) {
        if self.prints.get().is_some() {
            let (reused, zeros) = self.delta_totals();
            tracing::info!(
                "delta: {:.1} MiB of {:.1} MiB sent as references to the old copy, {:.1} MiB as zeros, {:.1} MiB as data",
                reused as f64 / 1_048_576.0,
                bytes as f64 / 1_048_576.0,
                zeros as f64 / 1_048_576.0,
                bytes.saturating_sub(reused + zeros) as f64 / 1_048_576.0,
            );
        }
    }

    /// Runs `work` on one thread per stream (see [`pipeline::run_streams`]),
    /// and, while they run, shifts the number of busy ones by what
    /// `progress` says they deliver.
    fn run_streams<T: Send>(
        &self,
        progress: &Progress,
        work: impl Fn(usize, &Lane, &mut Option<Sealer>) -> Result<T> + Sync,
    ) -> Vec<Result<T>> {
        let (done_tx, done) = crossbeam_channel::bounded::<()>(0);
        std::thread::scope(|scope| {
            if self.gears.shifts() {
                scope.spawn(|| self.shift_while(progress, &done));
            }
            let results = pipeline::run_streams(
                &self.lanes[..],
                &self.abort,
                |index, lane| work(index, lane, &mut lock(&self.sealers[index])),
                // Wake writers blocked on a slow receiver; keep the read side
                // open so the receiver's verdict can still arrive.
                |_| {
                    for l in self.lanes.iter() {
                        l.link().shutdown(Shutdown::Write);
                    }
                },
            );
            drop(done_tx);
            results
        })
    }

    /// Measures delivery every [`gears::EPOCH`] and applies the
    /// [`Shifter`]'s changes until `done` closes.
    fn shift_while(&self, progress: &Progress, done: &Rx<()>) {
        let gears = &self.gears;
        let mut shifter = Shifter::new(gears.active(), self.lanes.len());
        let (mut bytes, mut starved, mut at) = (progress.snapshot().done, gears.starved_total(), Instant::now());
        while let Err(RecvTimeoutError::Timeout) = done.recv_timeout(gears::EPOCH) {
            let now = Instant::now();
            let (b, st) = (progress.snapshot().done, gears.starved_total());
            let elapsed = now - at;
            let busy = elapsed.as_nanos() as f64 * shifter.active() as f64;
            let sample = gears::Sample { bytes: b - bytes, elapsed, starved: (st - starved) as f64 / busy.max(1.0) };
            (bytes, starved, at) = (b, st, now);
            if let Some(change) = shifter.observe(sample) {
                tracing::info!("streams: {} → {} ({})", gears.active(), change.to, change.why);
                gears.shift(change.to);
            }
        }
    }

    /// Gives `lane` a new connection after `why` broke the last one, and
    /// starts its reader; returns the receiver's count of processed frames
    /// (the caller sends again what follows).
    fn reconnect(&self, lane: &Lane, seal: &mut Option<Sealer>, why: &str, since: Instant) -> Result<u64> {
        let Some(resume) = &self.resume else { unreachable!("only resumable sessions reconnect") };
        let deadline = since + resume.window;
        tracing::warn!(stream = lane.index, "stream {} broke ({why}); reconnecting (resume window {:?})", lane.index, resume.window);
        let (frames, writer, opener) = resume.reconnect(lane, deadline, why, &self.abort)?;
        *seal = writer;
        let zero = (lane.index == 0).then(|| (self.verdict_tx.clone(), Arc::clone(&self.prints)));
        let reader = lane::spawn_reader(
            &self.lanes,
            usize::from(lane.index),
            opener,
            self.peer.clone(),
            zero,
            self.resume.clone(),
            Arc::clone(&self.abort),
        )?;
        lock_vec(&self.readers).push(reader);
        Ok(frames)
    }

    /// END, the verdict, and teardown; returns the data bytes sent.
    fn close(
        &self,
        entries: u64,
        results: Vec<Result<(u64, u64)>>,
        resend: &dyn Fn(&Lane, &mut Option<Sealer>) -> Result<()>,
    ) -> Result<u64> {
        if let Some(g) = &self.governor {
            g.report();
        }
        let outcome = finish(self, entries, results, resend);
        if outcome.is_err() {
            for l in self.lanes.iter() {
                l.link().shutdown(Shutdown::Both);
            }
        }
        // Readers end when their connection does; the stall watch when told.
        self.closing.store(true, std::sync::atomic::Ordering::Release);
        for l in self.lanes.iter() {
            l.link().shutdown(Shutdown::Both);
        }
        for r in lock_vec(&self.readers).drain(..) {
            let _ = r.join();
        }
        outcome
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        crate::cleanup::remove_farewell(self.farewell);
        // A session that failed before `close` ends its stall watch too.
        self.closing.store(true, std::sync::atomic::Ordering::Release);
    }
}

/// How long a stopped sender waits for its streams to say ABORT.
const FAREWELL_WAIT: Duration = Duration::from_secs(2);

/// What a sender says when a fatal signal stops its process: ABORT on
/// every stream, so the receiver fails at once ("the sender was stopped
/// by a signal") instead of waiting out its resume window for a
/// reconnection that cannot come. A stream thread that is running says it
/// itself when it sees the abort (it holds its stream's sealer); the rest
/// are said here. Bounded by [`FAREWELL_WAIT`].
fn farewell(
    lanes: &Arc<Vec<Arc<Lane>>>,
    sealers: &Arc<Vec<std::sync::Mutex<Option<Sealer>>>>,
    stopped: &Arc<std::sync::OnceLock<String>>,
    said: &Arc<Vec<std::sync::atomic::AtomicBool>>,
    abort: &Arc<Abort>,
) -> crate::cleanup::Farewell {
    let (lanes, sealers, stopped, said, abort) =
        (Arc::clone(lanes), Arc::clone(sealers), Arc::clone(stopped), Arc::clone(said), Arc::clone(abort));
    Arc::new(move |why: &str| {
        let reason = stopped.get_or_init(|| format!("it was {why}")).clone();
        abort.trip();
        let deadline = Instant::now() + FAREWELL_WAIT;
        loop {
            let mut left = 0;
            for (i, lane) in lanes.iter().enumerate() {
                if said[i].load(std::sync::atomic::Ordering::Acquire) {
                    continue;
                }
                match sealers[i].try_lock() {
                    Ok(mut seal) => {
                        let mut buf = Vec::new();
                        net::encode_frame(&Frame::Abort { reason: reason.clone() }, &mut buf, seal.as_mut());
                        let _ = std::io::Write::write_all(&mut &*lane.link(), &buf);
                        said[i].store(true, std::sync::atomic::Ordering::Release);
                    }
                    Err(_) => left += 1,
                }
            }
            if left == 0 || Instant::now() >= deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
}

fn lock_vec<T>(m: &std::sync::Mutex<Vec<T>>) -> std::sync::MutexGuard<'_, Vec<T>> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Sends `roots` to the receiver at `addr`, authenticating with `token`.
/// Returns only after the receiver has verified and synced everything.
pub fn send(addr: &str, token: &Token, roots: &[PathBuf], cfg: &SendConfig) -> Result<Summary> {
    validate(cfg)?;
    send_tree(addr, token, &source::scan(roots)?, cfg)
}

/// `cfg`, with adaptive compression and the adding of streams switched off
/// when the receiver is on this host: over loopback the "link" is a memory
/// copy on the same CPUs the codec would take (measured: `copy` of 1 GiB,
/// 1.5–1.9 s plain, 1.8–2.6 s with auto), so compressing there only costs,
/// and there is no path whose parallelism more streams could use.
fn for_peer<'a>(cfg: &'a SendConfig, addr: &str) -> Result<std::borrow::Cow<'a, SendConfig>> {
    if cfg.compress != Compression::Auto && cfg.max_streams.is_none_or(|m| m <= cfg.streams) {
        return Ok(std::borrow::Cow::Borrowed(cfg));
    }
    let targets = net::resolve_with(addr, &cfg.sockopt)?;
    if targets.is_empty() || !targets.iter().all(|a| a.ip().is_loopback()) {
        return Ok(std::borrow::Cow::Borrowed(cfg));
    }
    let mut local = cfg.clone();
    if cfg.compress == Compression::Auto {
        tracing::info!("adaptive compression off: the receiver at {addr} is on this host");
        local.compress = Compression::None;
    }
    if local.max_streams.take().is_some_and(|m| m > cfg.streams) {
        tracing::info!("streams: {}, fixed: the receiver at {addr} is on this host", cfg.streams);
    }
    Ok(std::borrow::Cow::Owned(local))
}

/// Sends a manifest built by the caller (e.g. [`source::scan_mapped`]).
pub fn send_tree(addr: &str, token: &Token, tree: &SourceTree, cfg: &SendConfig) -> Result<Summary> {
    let started = Instant::now();
    validate(cfg)?;
    let cfg = &*for_peer(cfg, addr)?;
    if cfg.filter.is_some() {
        return Err(Error::Config("external filters are supported in streamed sessions only".into()));
    }
    let mut method = backend::select(cfg.io, true)?;
    if (cfg.compress != Compression::None || cfg.seal_key.is_some() || cfg.tls.enabled() || cfg.delta) && method != backend::Method::Copy {
        tracing::info!("compression, sealing, TLS or a delta reads every block; using the copy path instead of {method}");
        method = backend::Method::Copy;
    }
    tracing::info!(backend = %method, streams = cfg.streams, compress = %cfg.compress, sealed = cfg.seal_key.is_some(), "sending");
    let progress = cfg.progress.clone().unwrap_or_default();
    progress.set_total(tree.data_bytes());
    let throttle = cfg.rate_limit.map(Throttle::new);
    let session = Session::open(addr, token, cfg, false)?;
    session.start_delta(cfg, || crate::delta::Book::new(&tree.entries));
    StreamCtx { lane: &session.lanes[0], session: &session, cfg, throttle: None, progress: &progress, tree: Some(tree) }.manifest(
        &tree.entries,
        tree.data_bytes(),
        &session.sealers[0],
    )?;
    // A resumed receiver says what it holds; only the rest is sent.
    let held = if session.caps & wire::caps::HAVE != 0 {
        let reconnect = || {
            StreamCtx { lane: &session.lanes[0], session: &session, cfg, throttle: None, progress: &progress, tree: Some(tree) }
                .resume_after(&mut lock(&session.sealers[0]), "the connection broke")
        };
        await_held(&session, &tree.entries, &reconnect)?
    } else {
        Vec::new()
    };
    let held_bytes: u64 = held.iter().flat_map(|(_, r)| r).map(|x| x.len).sum();
    let todo: std::borrow::Cow<'_, [Entry]> = if held.is_empty() {
        std::borrow::Cow::Borrowed(&tree.entries)
    } else {
        let mut todo = tree.entries.clone();
        for (id, ranges) in &held {
            let e = &mut todo[*id as usize];
            e.extents = crate::manifest::subtract_extents(&e.extents, ranges);
        }
        std::borrow::Cow::Owned(todo)
    };
    if session.caps & wire::caps::HAVE != 0 {
        tracing::info!(
            "the receiver resumes an interrupted transfer: it holds {:.1} MiB of {:.1} MiB ({} files); sending the rest",
            held_bytes as f64 / 1_048_576.0,
            tree.data_bytes() as f64 / 1_048_576.0,
            held.len()
        );
        progress.set_total(tree.data_bytes() - held_bytes);
    }

    let schedule = Schedule::new(&todo, cfg.block_size);
    let tally = SendTally::new(&todo, cfg.block_size);
    let throttle = throttle.as_ref();
    let results = session.run_streams(&progress, |_, lane, seal| {
        let ctx = StreamCtx { lane, session: &session, cfg, throttle, progress: &progress, tree: Some(tree) };
        ctx.run_tree(method, &schedule, &tally, seal).inspect_err(|e| ctx.give_up(e, seal))
    });
    let resend = |lane: &Lane, seal: &mut Option<Sealer>| {
        StreamCtx { lane, session: &session, cfg, throttle, progress: &progress, tree: Some(tree) }
            .resume_after(seal, "the connection broke")
    };
    let bytes = session.close(tree.entries.len() as u64, results, &resend)?;
    session.report_delta(bytes);
    let (reused, zeros) = session.delta_totals();
    let files = tree.entries.iter().filter(|e| e.kind == crate::manifest::EntryKind::File).count() as u64;
    let wire_bytes = progress.snapshot().wire;
    Ok(Summary {
        entries: tree.entries.len() as u64,
        files,
        bytes,
        wire_bytes,
        resent: progress.snapshot().resent,
        held: held_bytes,
        reused,
        zeros,
        protocol: session.version,
        peak_streams: session.gears.peak() as u16,
        elapsed: started.elapsed(),
    })
}

/// Sends files that `produce` discovers as it goes (a backup stream, say)
/// in a streamed session: `produce` hands data to the [`Feeder`] on its own
/// thread while the streams send it. An error from `produce` aborts the
/// session, so the receiver keeps its incomplete-marker, and is returned.
/// Returns only after the receiver has verified and synced everything.
pub fn send_streamed<F>(addr: &str, token: &Token, cfg: &SendConfig, produce: F) -> Result<Summary>
where
    F: FnOnce(&mut Feeder) -> Result<()> + Send,
{
    let started = Instant::now();
    validate(cfg)?;
    let cfg = &*for_peer(cfg, addr)?;
    tracing::info!(streams = cfg.streams, compress = %cfg.compress, sealed = cfg.seal_key.is_some(), tls = ?cfg.tls.mode, "sending a stream");
    let progress = cfg.progress.clone().unwrap_or_default();
    let throttle = cfg.rate_limit.map(Throttle::new);
    let session = Session::open(addr, token, cfg, true)?;
    session.start_delta(cfg, crate::delta::Book::streamed);
    let session_version = session.version;
    StreamCtx { lane: &session.lanes[0], session: &session, cfg, throttle: None, progress: &progress, tree: None }.manifest(
        &[],
        0,
        &session.sealers[0],
    )?;
    // A few blocks per stream in flight: enough to keep every stream busy,
    // little enough memory.
    let (tx, rx) = bounded::<Item>(usize::from(cfg.streams) * 4);
    // Why the producer failed, for the ABORT frame the streams send.
    let failure = std::sync::OnceLock::new();
    let (results, produced) = std::thread::scope(|scope| {
        let (abort, failure, book) = (Arc::clone(&session.abort), &failure, session.prints.get().cloned());
        let producer = scope.spawn(move || {
            let mut feeder = Feeder::new(tx, cfg.block_size, Arc::clone(&abort));
            if let Some(book) = book {
                feeder = feeder.with_delta(book, cfg.idle_timeout.max(Duration::from_secs(30)));
            }
            let r = produce(&mut feeder).and_then(|()| feeder.finish());
            // A producer stopped by the session's abort (the receiver
            // refused, a stream failed) only echoes that failure.
            let echoed = r.is_err() && abort.is_set();
            if let Err(e) = &r {
                let _ = failure.set(e.to_string());
                abort.trip();
            }
            (r, echoed)
        });
        let results = session.run_streams(&progress, |_, lane, seal| {
            let ctx = StreamCtx { lane, session: &session, cfg, throttle: throttle.as_ref(), progress: &progress, tree: None };
            ctx.run_items(&rx, failure, seal).inspect_err(|e| ctx.give_up(e, seal))
        });
        // If every stream failed, the producer must not wait on a full queue.
        drop(rx);
        (results, producer.join().unwrap_or_else(|_| (Err(Error::Aborted("the stream producer panicked".into())), false)))
    });
    let resend = |lane: &Lane, seal: &mut Option<Sealer>| {
        StreamCtx { lane, session: &session, cfg, throttle: throttle.as_ref(), progress: &progress, tree: None }
            .resume_after(seal, "the connection broke")
    };
    let (files, data_bytes) = match produced {
        (Ok(totals), _) => totals,
        (Err(e), echoed) => {
            let closed = session.close(0, vec![Err(Abort::error())], &resend);
            // The root cause: the receiver's verdict, if it said one.
            return Err(match closed {
                Err(cause) if echoed => cause,
                _ => e,
            });
        }
    };
    let bytes = session.close(files, results, &resend)?;
    debug_assert_eq!(bytes, data_bytes);
    session.report_delta(bytes);
    let (reused, zeros) = session.delta_totals();
    Ok(Summary {
        entries: files,
        files,
        bytes,
        wire_bytes: progress.snapshot().wire,
        resent: progress.snapshot().resent,
        held: 0,
        reused,
        zeros,
        protocol: session_version,
        peak_streams: session.gears.peak() as u16,
        elapsed: started.elapsed(),
    })
}

/// The capability bits this configuration needs from the receiver.
fn capabilities(cfg: &SendConfig, streamed: bool) -> u64 {
    cfg.compress.capabilities()
        | if cfg.seal_key.is_some() { wire::caps::SEAL_AES256GCM } else { 0 }
        | if streamed { wire::caps::STREAMED } else { 0 }
        | if cfg.filter.is_some() { wire::caps::EXTERNAL_FILTER } else { 0 }
        | if cfg.resume_window.is_zero() { 0 } else { wire::caps::RESUME }
        | if streamed { 0 } else { wire::caps::HAVE }
        | if cfg.delta { wire::caps::DELTA } else { 0 }
}

/// Locks a stream's sealer slot (a poisoned lock only means a stream thread
/// panicked, which fails the session anyway).
fn lock(m: &std::sync::Mutex<Option<Sealer>>) -> std::sync::MutexGuard<'_, Option<Sealer>> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct StreamCtx<'a> {
    lane: &'a Lane,
    session: &'a Session,
    cfg: &'a SendConfig,
    throttle: Option<&'a Throttle>,
    progress: &'a Progress,
    /// The tree a tree session reads its blocks from (again, after a
    /// reconnection).
    tree: Option<&'a SourceTree>,
}

impl StreamCtx<'_> {
    /// Sends the manifest on stream 0 (see [`send_manifest`](Self::send_manifest));
    /// a sender that fails or is stopped meanwhile says so (ABORT).
    fn manifest(&self, entries: &[Entry], data_bytes: u64, sealer: &std::sync::Mutex<Option<Sealer>>) -> Result<()> {
        let mut seal = lock(sealer);
        self.send_manifest(entries, data_bytes, &mut seal).inspect_err(|e| self.give_up(e, &mut seal))
    }

    /// Sends the manifest (stream 0) in frames of at most half the MANIFEST
    /// bound, several per write. From protocol 6 on, a resumable session
    /// counts them like every later frame of the stream, so a connection
    /// that breaks during the manifest is taken over and the rest sent
    /// again; before, such a break fails the session.
    fn send_manifest(&self, entries: &[Entry], data_bytes: u64, seal: &mut Option<Sealer>) -> Result<()> {
        let counted = self.resumable() && self.session.version >= wire::since::MANIFEST_RESUMES;
        let budget = wire::MAX_MANIFEST_BODY as usize / 2;
        let mut buf = Vec::with_capacity(budget + 1024);
        let mut from = 0usize;
        let flush = |buf: &mut Vec<u8>, seal: &mut Option<Sealer>| -> Result<()> {
            let sent = std::io::Write::write_all(&mut &*self.lane.link(), buf);
            buf.clear();
            match sent {
                Ok(()) => Ok(()),
                Err(e) if counted => self.recover(e, seal, "the manifest"),
                Err(e) => Err(Error::peer(self.peer(), format!("sending the manifest failed: {e}"))),
            }
        };
        while from < entries.len() {
            if self.session.abort.is_set() {
                return Err(Abort::error());
            }
            let mut to = from;
            let mut size = 0;
            while to < entries.len() && (to == from || size + wire::entry_len(&entries[to]) <= budget) {
                size += wire::entry_len(&entries[to]);
                to += 1;
            }
            if counted {
                self.lane.record(Replay::Entries { from: from as u32, to: to as u32 }, 0);
            }
            net::encode_frame(&Frame::Manifest(entries[from..to].to_vec()), &mut buf, seal.as_mut());
            if buf.len() > budget {
                flush(&mut buf, seal)?;
            }
            from = to;
        }
        let end = Frame::ManifestEnd { entries: entries.len() as u64, data_bytes };
        if counted {
            self.lane.record(Replay::Frame(end.clone()), 0);
        }
        net::encode_frame(&end, &mut buf, seal.as_mut());
        flush(&mut buf, seal)
    }

    fn encoder(&self) -> Result<Option<Encoder>> {
        match (self.cfg.compress, &self.session.governor) {
            (Compression::None, _) => Ok(None),
            (Compression::Auto, Some(g)) => Ok(Some(Encoder::governed(self.cfg.block_size, Arc::clone(g))?)),
            (mode, _) => Ok(Some(Encoder::new(mode, self.cfg.block_size)?)),
        }
    }

    fn peer(&self) -> &str {
        &self.session.peer
    }

    fn index(&self) -> usize {
        usize::from(self.lane.index)
    }

    fn resumable(&self) -> bool {
        self.session.resume.is_some()
    }

    /// Keeps `frame` for a resend (resumable sessions only).
    fn record(&self, frame: Replay, held: u64) {
        if self.resumable() {
            self.lane.record(frame, held);
        }
    }

    /// After a failed write: in a resumable session, a broken connection
    /// is replaced and everything unacknowledged sent again; otherwise, or
    /// for another failure, the error.
    fn recover(&self, e: std::io::Error, seal: &mut Option<Sealer>, path: &str) -> Result<()> {
        if self.resumable() && (net::is_break(&e) || e.kind() == std::io::ErrorKind::UnexpectedEof) && !self.session.abort.is_set() {
            return self.resume_after(seal, &format!("{e} while sending {path}"));
        }
        Err(self.send_err(e, path))
    }

    /// Reconnects this stream and sends again what the receiver has not
    /// processed, until that succeeds or the resume window ends.
    fn resume_after(&self, seal: &mut Option<Sealer>, why: &str) -> Result<()> {
        let mut why = why.to_string();
        let started = Instant::now();
        let _waiting = self.progress.resuming();
        loop {
            // One window from the first break, however often sending
            // again breaks too.
            let frames = self.session.reconnect(self.lane, seal, &why, started)?;
            let freed = self.lane.resumed(frames).map_err(|e| Error::peer(self.peer(), format!("stream {}: {e}", self.lane.index)))?;
            if let Some(r) = &self.session.resume {
                r.budget.release(freed);
            }
            let pending = self.lane.pending();
            match self.resend(&pending, seal) {
                Ok(bytes) => {
                    tracing::warn!(
                        stream = self.lane.index,
                        "stream {} resumed after {:.1?}: the receiver had processed {frames} frames; sent {} frames ({bytes} data bytes) again",
                        self.lane.index,
                        started.elapsed(),
                        pending.len()
                    );
                    self.progress.add_resent(bytes);
                    return Ok(());
                }
                Err(e) if net::is_break(&e) || e.kind() == std::io::ErrorKind::UnexpectedEof => why = format!("{e} while sending again"),
                Err(e) => return Err(Error::peer(self.peer(), format!("stream {} failed while sending again: {e}", self.lane.index))),
            }
        }
    }

    /// Sends `frames` again on the current connection; returns the data
    /// bytes they carried.
    fn resend(&self, frames: &[Replay], seal: &mut Option<Sealer>) -> std::io::Result<u64> {
        let link = self.lane.link();
        let mut open: Option<(u32, File)> = None;
        let mut bytes = 0;
        for f in frames {
            match f {
                Replay::Frame(frame) => {
                    let mut buf = Vec::new();
                    net::encode_frame(frame, &mut buf, seal.as_mut());
                    std::io::Write::write_all(&mut &*link, &buf)?;
                }
                Replay::Entries { from, to } => {
                    let entries = &self.tree.expect("manifest entries come from a tree").entries;
                    let mut buf = Vec::new();
                    net::encode_frame(&Frame::Manifest(entries[*from as usize..*to as usize].to_vec()), &mut buf, seal.as_mut());
                    std::io::Write::write_all(&mut &*link, &buf)?;
                }
                Replay::Block { file_id, seq, offset, len, checksum } => {
                    let tree = self.tree.expect("tree blocks come from a tree");
                    if open.as_ref().is_none_or(|(id, _)| id != file_id) {
                        let file = tree.open(*file_id).map_err(std::io::Error::other)?;
                        open = Some((*file_id, file));
                    }
                    let file = &open.as_ref().expect("opened above").1;
                    let mut data = vec![0u8; *len as usize];
                    std::os::unix::fs::FileExt::read_exact_at(file, &mut data, *offset)?;
                    if crate::digest::checksum(&data) != *checksum {
                        return Err(std::io::Error::other(format!(
                            "{} changed while it was being sent (a block sent again after a reconnection differs from the first time); send it again once it is quiet",
                            tree.paths[*file_id as usize].display()
                        )));
                    }
                    let header = DataHeader { file_id: *file_id, seq: *seq, offset: *offset, raw_len: *len, checksum: *checksum };
                    self.write_data(&link, header, 0, &mut data, seal)?;
                    bytes += u64::from(*len);
                }
                Replay::Mark { file_id, seq, offset, len, checksum, flag } => {
                    let header = DataHeader { file_id: *file_id, seq: *seq, offset: *offset, raw_len: *len, checksum: *checksum };
                    self.write_data(&link, header, *flag, &mut [], seal)?;
                }
                Replay::Bytes { file_id, seq, offset, data, checksum } => {
                    let header =
                        DataHeader { file_id: *file_id, seq: *seq, offset: *offset, raw_len: data.len() as u32, checksum: *checksum };
                    let (flags, mut payload) = match &self.cfg.filter {
                        Some(cmd) => {
                            (wire::data_flags::EXTERNAL, crate::codec::external::run_filter(cmd, data, wire::MAX_PAYLOAD as usize)?)
                        }
                        None => (0, data.to_vec()),
                    };
                    self.write_data(&link, header, flags, &mut payload, seal)?;
                    bytes += data.len() as u64;
                }
            }
        }
        Ok(bytes)
    }

    /// One DATA frame from memory, sealed when the session seals.
    fn write_data(
        &self,
        link: &Link,
        header: DataHeader,
        flags: u8,
        payload: &mut [u8],
        seal: &mut Option<Sealer>,
    ) -> std::io::Result<u64> {
        let tag_len = if seal.is_some() { TAG_LEN } else { 0 };
        let sealed = if seal.is_some() { wire::SEALED } else { 0 };
        let prefix = header.encode_prefix((payload.len() + tag_len) as u32, flags | sealed);
        let tag = seal.as_mut().map(|s| s.seal(&prefix, payload));
        self.throttle(payload.len() + tag_len);
        let tag: &[u8] = tag.as_ref().map_or(&[], |t| &t[..]);
        backend::write_parts(link, &[&prefix, payload, tag])?;
        let wire = (payload.len() + tag_len) as u64;
        self.progress.add_wire(wire);
        Ok(wire)
    }

    /// Writes STREAM_END and, in a resumable session, waits until the
    /// receiver has processed everything this stream sent.
    fn end_stream(&self, out: &Outbound, seal: &mut Option<Sealer>) -> Result<()> {
        let end = out.end();
        self.record(Replay::Frame(end.clone()), 0);
        if let Err(e) = self.write_frame(&end, seal) {
            self.recover(e, seal, "the end of the stream")?;
        }
        self.settle(seal)
    }

    /// Waits until the receiver acknowledged everything recorded,
    /// reconnecting as often as the connection breaks.
    fn settle(&self, seal: &mut Option<Sealer>) -> Result<()> {
        if !self.resumable() {
            return Ok(());
        }
        while let Some(why) = self.lane.settle(self.peer(), self.cfg.idle_timeout.max(Duration::from_secs(1)), &self.session.abort)? {
            self.resume_after(seal, &why)?;
        }
        Ok(())
    }

    fn write_frame(&self, frame: &Frame, seal: &mut Option<Sealer>) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(64);
        net::encode_frame(frame, &mut buf, seal.as_mut());
        std::io::Write::write_all(&mut &*self.lane.link(), &buf)
    }

    /// Sends blocks of the tree until the queue is empty; returns (frames, bytes).
    fn run_tree(&self, method: backend::Method, schedule: &Schedule, tally: &SendTally, seal: &mut Option<Sealer>) -> Result<(u64, u64)> {
        let tree = self.tree.expect("a tree session");
        let mut io = StreamIo::new(method, self.cfg.block_size).map_err(|e| Error::io(format!("setting up {method} I/O"), e))?;
        let mut encoder = self.encoder()?;
        let mut open: Option<(u32, File)> = None;
        let mut out = Outbound::new();
        let book = self.session.prints.get().map(|b| &**b);
        loop {
            if self.turn(seal)? == Turn::Retire {
                break;
            }
            let Some(b) = schedule.next_block() else {
                self.session.gears.finish();
                break;
            };
            if self.session.abort.is_set() {
                return Err(Abort::error());
            }
            self.lane.check(self.peer())?;
            if open.as_ref().is_none_or(|(id, _)| *id != b.file_id) {
                open = Some((b.file_id, tree.open(b.file_id)?));
            }
            let file = &open.as_ref().expect("opened above").1;
            // Keep the disk reading ahead of the streams (best effort).
            let _ = backend::sys::will_need(file, b.offset + u64::from(b.len), READ_AHEAD);
            let path = || tree.paths[b.file_id as usize].display().to_string();
            let checksum = io.load(file, b.offset, b.len).map_err(|e| Error::io(format!("reading {}", path()), e))?;
            if let Some(book) = book {
                let pieces = self.compare(book, &b, io.loaded(b.len));
                if pieces.iter().any(|p| p.fate != crate::delta::Fate::Send) {
                    let last = self.send_pieces(&b, &pieces, &mut io, &mut out, tally, &mut encoder, seal, &path())?;
                    if last {
                        book.forget(b.file_id);
                    }
                    self.progress.add(u64::from(b.len));
                    continue;
                }
            }
            let header = out.block(b.file_id, b.offset, b.len, checksum)?;
            // The FILE_DONE of a file's last block rides in the same write.
            let done = tally.record(&b, checksum).map(|digest| Frame::FileDone { file_id: b.file_id, digest });
            if let (Some(book), Some(_)) = (book, &done) {
                book.forget(b.file_id);
            }
            self.record(Replay::Block { file_id: b.file_id, seq: header.seq, offset: b.offset, len: b.len, checksum }, 0);
            if let Some(f) = &done {
                self.record(Replay::Frame(f.clone()), 0);
            }
            let encoded = encoder.as_mut().and_then(|e| e.encode(io.loaded(b.len)));
            let link = self.lane.link();
            let sent = if encoded.is_none() && seal.is_none() && !link.is_tls() {
                // Untransformed: the backend may send straight from the file.
                let started = Instant::now();
                self.throttle(b.len as usize);
                let prefix = header.encode_prefix(b.len, 0);
                let mut trailer = Vec::new();
                if let Some(f) = &done {
                    net::encode_frame(f, &mut trailer, None);
                }
                io.transmit(link.tcp(), &prefix, file, b.offset, b.len, &trailer).map(|()| {
                    if let Some(e) = encoder.as_mut() {
                        e.record_send(b.len as usize, b.len as usize, started.elapsed());
                    }
                    u64::from(b.len)
                })
            } else {
                let (flags, payload) = match encoded {
                    Some((flag, packed)) => (flag, packed),
                    None => (0, io.loaded_mut(b.len)),
                };
                self.send_memory(&link, header, flags, payload, done.as_ref(), seal).map(|(wire, took)| {
                    if let Some(e) = encoder.as_mut() {
                        e.record_send(b.len as usize, wire as usize, took);
                    }
                    wire
                })
            };
            match sent {
                Ok(wire) => self.progress.add_wire(wire),
                Err(e) => self.recover(e, seal, &path())?,
            }
            self.progress.add(u64::from(b.len));
        }
        self.end_stream(&out, seal)?;
        Ok(out.totals())
    }

    /// How the pieces of block `b` (its bytes `data`) travel: the pages
    /// whose fingerprints equal the receiver's old copy's become
    /// references, pages of zeros zeros, the rest data. Waits for the
    /// fingerprints (bounded: a silent receiver closes the book, and
    /// every page is compared with nothing).
    fn compare(&self, book: &crate::delta::Book, b: &crate::plan::Block, data: &[u8]) -> Vec<crate::delta::Piece> {
        use crate::delta::Fate;
        let pages = crate::delta::pages_within(b.offset, b.len);
        if pages.is_empty() {
            return vec![crate::delta::Piece { offset: b.offset, len: b.len, fate: Fate::Send }];
        }
        let prints = if book.is_closed() {
            vec![None; (pages.end - pages.start) as usize]
        } else {
            let wait = self.cfg.idle_timeout.max(Duration::from_secs(30));
            book.take(b.file_id, pages.clone(), wait, &|| self.session.abort.is_set())
        };
        let fates = crate::delta::fates(data, b.offset, pages.start, &prints);
        crate::delta::split(b.offset, b.len, &fates)
    }

    /// Sends block `b` (loaded in `io`) as `pieces`: references without
    /// payload, the rest as data (compressed as the session says), each
    /// with its own sequence number and checksum; the file digest is the
    /// sum over the pieces. Returns whether it was the file's last block.
    #[allow(clippy::too_many_arguments)]
    fn send_pieces(
        &self,
        b: &crate::plan::Block,
        pieces: &[crate::delta::Piece],
        io: &mut StreamIo,
        out: &mut Outbound,
        tally: &SendTally,
        encoder: &mut Option<Encoder>,
        seal: &mut Option<Sealer>,
        path: &str,
    ) -> Result<bool> {
        let mut headers = Vec::with_capacity(pieces.len());
        let mut sum = 0u64;
        {
            let data = io.loaded(b.len);
            for p in pieces {
                let at = (p.offset - b.offset) as usize;
                let checksum = crate::digest::checksum(&data[at..at + p.len as usize]);
                sum = sum.wrapping_add(crate::digest::block_digest(b.file_id, p.offset, p.len, checksum));
                headers.push(out.block(b.file_id, p.offset, p.len, checksum)?);
            }
        }
        let done = tally.record_digest(b, sum).map(|digest| Frame::FileDone { file_id: b.file_id, digest });
        for h in &headers {
            // Sent again as data after a reconnection (read from the file).
            self.record(Replay::Block { file_id: h.file_id, seq: h.seq, offset: h.offset, len: h.raw_len, checksum: h.checksum }, 0);
        }
        if let Some(f) = &done {
            self.record(Replay::Frame(f.clone()), 0);
        }
        let link = self.lane.link();
        let data = io.loaded_mut(b.len);
        for (k, (p, h)) in pieces.iter().zip(headers).enumerate() {
            let trailer = if k + 1 == pieces.len() { done.as_ref() } else { None };
            let at = (p.offset - b.offset) as usize;
            let bytes = &mut data[at..at + p.len as usize];
            let (counter, flag) = match p.fate {
                crate::delta::Fate::Send => (None, 0),
                crate::delta::Fate::Zero => (Some(&self.session.zeros), wire::data_flags::ZERO),
                crate::delta::Fate::Reference => (Some(&self.session.reused), wire::data_flags::REF),
            };
            let sent = if let Some(counter) = counter {
                counter.fetch_add(u64::from(p.len), std::sync::atomic::Ordering::Relaxed);
                self.send_memory(&link, h, flag, &mut [], trailer, seal).map(|(wire, _)| wire)
            } else {
                match encoder.as_mut().and_then(|e| e.encode(bytes)) {
                    Some((flag, packed)) => self.send_memory(&link, h, flag, packed, trailer, seal),
                    None => self.send_memory(&link, h, 0, bytes, trailer, seal),
                }
                .map(|(wire, took)| {
                    if let Some(e) = encoder.as_mut() {
                        e.record_send(p.len as usize, wire as usize, took);
                    }
                    wire
                })
            };
            match sent {
                Ok(wire) => self.progress.add_wire(wire),
                // Everything recorded, the pieces not yet written included,
                // goes again on the new connection.
                Err(e) => {
                    self.recover(e, seal, path)?;
                    break;
                }
            }
        }
        Ok(done.is_some())
    }

    /// Sends items of a streamed session until the producer is done;
    /// returns (frames, bytes). Each file is announced on this stream
    /// before this stream's first frame about it.
    fn run_items(&self, rx: &Rx<Item>, failure: &std::sync::OnceLock<String>, seal: &mut Option<Sealer>) -> Result<(u64, u64)> {
        let mut encoder = self.encoder()?;
        let mut announced = std::collections::HashSet::new();
        let mut out = Outbound::new();
        // The producer's failure, told to the receiver on every stream.
        let stop = |seal: &mut Option<Sealer>| {
            if let Some(reason) = failure.get().or(self.session.stopped.get()) {
                let _ = self.write_frame(&Frame::Abort { reason: reason.clone() }, seal);
                self.session.said[self.index()].store(true, std::sync::atomic::Ordering::Release);
            }
            Abort::error()
        };
        let abort = &self.session.abort;
        let gears = &self.session.gears;
        loop {
            if self.turn(seal)? == Turn::Retire {
                break;
            }
            let waited = Instant::now();
            let got = rx.recv_timeout(Duration::from_millis(100));
            gears.starved(waited.elapsed());
            let item = match got {
                Ok(item) => item,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    if abort.is_set() {
                        return Err(stop(seal));
                    }
                    continue;
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) if abort.is_set() => return Err(stop(seal)),
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    gears.finish();
                    break;
                }
            };
            if abort.is_set() {
                return Err(stop(seal));
            }
            self.lane.check(self.peer())?;
            let path = || String::from_utf8_lossy(&item.path).into_owned();
            let mut control = Vec::new();
            if announced.insert(item.file_id) {
                let frame = Frame::Announce { file_id: item.file_id, mode: 0o640, path: item.path.to_vec() };
                net::encode_frame(&frame, &mut control, seal.as_mut());
                self.record(Replay::Frame(frame), 0);
            }
            match item.what {
                ItemKind::Announce => {
                    if !control.is_empty()
                        && let Err(e) = backend::write_parts(&*self.lane.link(), &[&control])
                    {
                        self.recover(e, seal, &path())?;
                    }
                }
                ItemKind::Mark { offset, len, checksum, flag } => {
                    let header = out.block(item.file_id, offset, len, checksum)?;
                    if self.resumable() {
                        let frame = Replay::Mark { file_id: item.file_id, seq: header.seq, offset, len, checksum, flag };
                        self.lane.record(frame, 0);
                    }
                    let counter = if flag == wire::data_flags::REF { &self.session.reused } else { &self.session.zeros };
                    counter.fetch_add(u64::from(len), std::sync::atomic::Ordering::Relaxed);
                    let link = self.lane.link();
                    let sent = (|| {
                        if !control.is_empty() {
                            backend::write_parts(&*link, &[&control])?;
                        }
                        self.send_memory(&link, header, flag, &mut [], None, seal)
                    })();
                    match sent {
                        Ok((wire, _)) => self.progress.add_wire(wire),
                        Err(e) => self.recover(e, seal, &path())?,
                    }
                    self.progress.add(u64::from(len));
                }
                ItemKind::End { size, data_bytes, digest } => {
                    let frame = Frame::FileEnd { file_id: item.file_id, size, data_bytes, digest };
                    net::encode_frame(&frame, &mut control, seal.as_mut());
                    self.record(Replay::Frame(frame), 0);
                    if let Err(e) = backend::write_parts(&*self.lane.link(), &[&control]) {
                        self.recover(e, seal, &path())?;
                    }
                }
                ItemKind::Data { offset, mut data, checksum } => {
                    let len = data.len() as u32;
                    let header = out.block(item.file_id, offset, len, checksum)?;
                    let mut filtered = match &self.cfg.filter {
                        Some(cmd) => Some(
                            crate::codec::external::run_filter(cmd, &data, wire::MAX_PAYLOAD as usize)
                                .map_err(|e| Error::io(format!("filtering a block of {}", path()), e))?,
                        ),
                        None => None,
                    };
                    if filtered.as_ref().is_some_and(|f| f.is_empty() || f.len() > wire::MAX_PAYLOAD as usize) {
                        return Err(Error::Config(format!("the filter turned a block of {} into an unusable size", path())));
                    }
                    let encoded = if filtered.is_some() { None } else { encoder.as_mut().and_then(|e| e.encode(&data)) };
                    // A resumable session keeps the block until the receiver
                    // processed it, within the replay budget: a full budget
                    // holds this stream, and so the producer, back.
                    let mut kept = None;
                    if self.resumable() {
                        self.reserve(u64::from(len), seal, &stop)?;
                        // Sealing encrypts a raw block in place: keep a copy.
                        let raw_sealed = encoded.is_none() && filtered.is_none() && seal.is_some();
                        let k = Arc::new(if raw_sealed { data.clone() } else { std::mem::take(&mut data) });
                        let frame = Replay::Bytes { file_id: item.file_id, seq: header.seq, offset, data: Arc::clone(&k), checksum };
                        self.lane.record(frame, u64::from(len));
                        kept = Some(k);
                    }
                    let link = self.lane.link();
                    let sent = match kept.filter(|_| data.is_empty() && encoded.is_none() && filtered.is_none()) {
                        // Raw and unsealed: written straight from the kept
                        // copy, timed with the throttle as every other send is.
                        Some(kept) => {
                            let prefix = header.encode_prefix(len, 0);
                            let started = Instant::now();
                            self.throttle(len as usize);
                            backend::write_parts(&*link, &[&control, &prefix, &kept]).map(|()| (u64::from(len), started.elapsed()))
                        }
                        None => (|| {
                            if !control.is_empty() {
                                backend::write_parts(&*link, &[&control])?;
                            }
                            let (flags, payload) = match (encoded, filtered.as_mut()) {
                                (_, Some(f)) => (wire::data_flags::EXTERNAL, &mut f[..]),
                                (Some((flag, packed)), None) => (flag, packed),
                                (None, None) => (0, &mut data[..]),
                            };
                            self.send_memory(&link, header, flags, payload, None, seal)
                        })(),
                    };
                    match sent {
                        Ok((wire, took)) => {
                            if let Some(e) = encoder.as_mut() {
                                e.record_send(len as usize, wire as usize, took);
                            }
                            self.progress.add_wire(wire);
                        }
                        Err(e) => self.recover(e, seal, &path())?,
                    }
                    self.progress.add(u64::from(len));
                }
            }
        }
        self.end_stream(&out, seal)?;
        Ok(out.totals())
    }

    /// Tells the receiver this sender gives up and why (ABORT): a
    /// resumable receiver would otherwise wait for the streams to come
    /// back. Echoes of another stream's failure are not told.
    /// A sender stopped by a signal says so instead.
    /// This stream's turn ([`Gears::turn`]): a parked stream sends a
    /// KEEPALIVE now and then (a broken connection is taken over as
    /// anywhere else) until it may take work again.
    fn turn(&self, seal: &mut Option<Sealer>) -> Result<Turn> {
        self.session.gears.turn(self.index(), &self.session.abort, || {
            self.lane.check(self.peer())?;
            match self.write_frame(&Frame::Keepalive, seal) {
                Ok(()) => Ok(()),
                Err(e) => self.recover(e, seal, "a KEEPALIVE"),
            }
        })
    }

    fn give_up(&self, e: &Error, seal: &mut Option<Sealer>) {
        let reason = match self.session.stopped.get() {
            Some(why) => why.clone(),
            None if !matches!(e, Error::Aborted(_)) => e.to_string(),
            None => return,
        };
        let _ = self.write_frame(&Frame::Abort { reason }, seal);
        self.session.said[self.index()].store(true, std::sync::atomic::Ordering::Release);
    }

    /// Takes `bytes` of the replay budget, waiting for acknowledgements
    /// (and reconnecting, if the connection breaks meanwhile).
    fn reserve(&self, bytes: u64, seal: &mut Option<Sealer>, stop: &dyn Fn(&mut Option<Sealer>) -> Error) -> Result<()> {
        let r = self.session.resume.as_ref().expect("resumable");
        let abort = &self.session.abort;
        loop {
            let until = Instant::now() + self.cfg.idle_timeout.max(Duration::from_secs(1));
            if r.budget.acquire(bytes, until, &|| abort.is_set() || self.lane.broken().is_some()) {
                return Ok(());
            }
            if abort.is_set() {
                return Err(stop(seal));
            }
            self.lane.check(self.peer())?;
            match self.lane.broken() {
                Some(why) => self.resume_after(seal, &why)?,
                None => {
                    return Err(Error::broken(
                        self.peer(),
                        format!(
                            "stream {}: the replay buffer stayed full ({} bytes) for {:?}: the receiver acknowledged nothing (idle timeout)",
                            self.lane.index,
                            r.budget.used(),
                            self.cfg.idle_timeout
                        ),
                    ));
                }
            }
        }
    }

    fn throttle(&self, bytes: usize) {
        if let Some(t) = self.throttle {
            t.acquire(bytes as u64);
        }
    }

    /// Sends a DATA frame whose payload is in memory (compressed when
    /// `flags` says so, sealed when the session seals), followed by
    /// `trailer` in the same write; returns its wire size and how long the
    /// link took (throttle waits included: a rate-limited link is a slow
    /// link, which `--compress auto` must see).
    fn send_memory(
        &self,
        link: &Link,
        header: DataHeader,
        flags: u8,
        payload: &mut [u8],
        trailer: Option<&Frame>,
        seal: &mut Option<Sealer>,
    ) -> std::io::Result<(u64, Duration)> {
        let tag_len = if seal.is_some() { TAG_LEN } else { 0 };
        let sealed = if seal.is_some() { wire::SEALED } else { 0 };
        let prefix = header.encode_prefix((payload.len() + tag_len) as u32, flags | sealed);
        let tag = seal.as_mut().map(|s| s.seal(&prefix, payload));
        // The trailer is encoded (and sealed) after the DATA frame, in stream order.
        let mut tail = Vec::new();
        if let Some(f) = trailer {
            net::encode_frame(f, &mut tail, seal.as_mut());
        }
        let started = Instant::now();
        self.throttle(payload.len() + tag_len);
        let tag: &[u8] = tag.as_ref().map_or(&[], |t| &t[..]);
        backend::write_parts(link, &[&prefix, payload, tag, &tail])?;
        Ok(((payload.len() + tag_len) as u64, started.elapsed()))
    }

    fn send_err(&self, e: std::io::Error, path: &str) -> Error {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Error::io(format!("sending {path}"), e)
        } else if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) {
            Error::peer(
                self.peer(),
                format!("stream {} accepted nothing for {:?} while sending {path} (idle timeout)", self.index(), self.cfg.idle_timeout),
            )
        } else {
            Error::peer(self.peer(), format!("stream {} failed while sending {path}: {e}", self.index()))
        }
    }
}

/// After the stream threads: END on stream 0, then the verdict. In a
/// resumable session a broken stream 0 is reconnected (`resend`) and the
/// wait goes on: the receiver sends its verdict again on the new
/// connection.
fn finish(
    session: &Session,
    entries: u64,
    results: Vec<Result<(u64, u64)>>,
    resend: &dyn Fn(&Lane, &mut Option<Sealer>) -> Result<()>,
) -> Result<u64> {
    let (peer, verdict, wait) = (session.peer.as_str(), &session.verdict, session.verdict_wait);
    let per_stream = match pipeline::collect(results) {
        Ok(v) => v,
        // A failure of this side's own source (a file that changed, a
        // read error) is the root cause; the receiver only saw its echo.
        Err(e @ (Error::Config(_) | Error::Io { .. })) => return Err(e),
        // If the receiver said why it hung up, that is the better message.
        Err(e) => {
            return Err(match next_verdict(verdict, Duration::from_secs(2)) {
                Ok(Some(Ok((false, reason)))) => {
                    // Keep the local side of the story too.
                    if !matches!(e, Error::Aborted(_)) {
                        tracing::warn!("this sender's own error: {e}");
                    }
                    Error::ReceiverFailed(reason)
                }
                _ => e,
            });
        }
    };
    let (frames, bytes) = per_stream.iter().fold((0, 0), |(f, b), (sf, sb)| (f + sf, b + sb));
    let lane = &session.lanes[0];
    let mut seal = lock(&session.sealers[0]);
    let end = Frame::End { entries, data_bytes: bytes, frames };
    if session.resume.is_some() {
        lane.record(Replay::Frame(end.clone()), 0);
    }
    let mut buf = Vec::with_capacity(64);
    net::encode_frame(&end, &mut buf, seal.as_mut());
    if let Err(e) = std::io::Write::write_all(&mut &*lane.link(), &buf) {
        if session.resume.is_none() {
            return Err(Error::peer(peer, format!("sending END failed: {e}")));
        }
        resend(lane, &mut seal)?;
    }
    loop {
        match next_verdict(verdict, wait) {
            Ok(Some(Ok((true, _)))) => {
                if session.resume.is_some() {
                    // The receiver keeps its verdict for a reconnection
                    // until it hears this.
                    let mut buf = Vec::with_capacity(32);
                    net::encode_frame(&Frame::Bye, &mut buf, seal.as_mut());
                    let _ = std::io::Write::write_all(&mut &*lane.link(), &buf);
                }
                return Ok(bytes);
            }
            Ok(Some(Ok((false, reason)))) => return Err(Error::ReceiverFailed(reason)),
            Ok(Some(Err(e))) => return Err(e),
            // (A stale report of an earlier connection is ignored.)
            Ok(None) if session.resume.is_some() => {
                if lane.broken().is_some() {
                    resend(lane, &mut seal)?;
                }
            }
            Ok(None) | Err(RecvTimeoutError::Disconnected) => return Err(Error::peer(peer, "closed the connection without a verdict")),
            Err(RecvTimeoutError::Timeout) => {
                return Err(Error::peer(
                    peer,
                    format!(
                        "sent no verdict and no sign of life for {wait:?} after the end of the data (is the receiver hung, or its host down?); giving up"
                    ),
                ));
            }
        }
    }
}

/// Waits for the verdict; each KEEPALIVE restarts the wait of `silence`.
/// `None`: stream 0's connection broke first.
fn next_verdict(heard: &Rx<Heard>, silence: Duration) -> std::result::Result<Option<Result<(bool, String)>>, RecvTimeoutError> {
    loop {
        match heard.recv_timeout(silence)? {
            // A resuming receiver tells its HAVE list again after a
            // reconnection until it sees a frame that follows the list;
            // this sender had it already.
            Heard::Alive | Heard::Have { .. } => {}
            Heard::Verdict(v) => return Ok(Some(v)),
            Heard::Broken => return Ok(None),
        }
    }
}

/// Most ranges a resumed receiver may say it holds.
const MAX_HELD_RANGES: usize = 1 << 22;

/// A resumed receiver's HAVE list, checked against the manifest: per file
/// id, sorted ranges, each within one data extent, none overlapping.
///
/// A connection that breaks meanwhile is taken over (`reconnect`, protocol
/// 6): the receiver tells the whole list again, so what arrived of it is
/// dropped.
fn await_held(session: &Session, entries: &[Entry], reconnect: &dyn Fn() -> Result<()>) -> Result<Vec<(u32, Vec<Extent>)>> {
    let peer = session.peer.as_str();
    let mut held: std::collections::BTreeMap<u32, Vec<Extent>> = std::collections::BTreeMap::new();
    let mut count = 0usize;
    loop {
        let (last, ranges) = match session.verdict.recv_timeout(session.verdict_wait) {
            Ok(Heard::Have { last, ranges }) => (last, ranges),
            Ok(Heard::Verdict(Ok((false, reason)))) => return Err(Error::ReceiverFailed(reason)),
            Ok(Heard::Verdict(Err(e))) => return Err(e),
            Ok(Heard::Alive | Heard::Verdict(_)) => return Err(Error::peer(peer, "sent no HAVE list after the manifest")),
            // A break of an earlier connection, which sending the manifest
            // already repaired.
            Ok(Heard::Broken) if session.lanes[0].broken().is_none() => continue,
            Ok(Heard::Broken) if session.resume.is_some() && session.version >= wire::since::MANIFEST_RESUMES => {
                reconnect()?;
                held.clear();
                count = 0;
                continue;
            }
            Ok(Heard::Broken) | Err(RecvTimeoutError::Disconnected) => {
                return Err(Error::peer(peer, "closed the connection before saying what it already holds"));
            }
            Err(RecvTimeoutError::Timeout) => {
                return Err(Error::peer(peer, format!("did not say what it already holds within {:?}", session.verdict_wait)));
            }
        };
        count += ranges.len();
        if count > MAX_HELD_RANGES {
            return Err(Error::peer(peer, format!("said it holds more than {MAX_HELD_RANGES} ranges")));
        }
        for (id, x) in ranges {
            let entry = entries
                .get(id as usize)
                .filter(|e| e.kind == crate::manifest::EntryKind::File)
                .ok_or_else(|| Error::peer(peer, format!("said it holds data of entry {id}, which is not a file of this manifest")))?;
            if !entry.extents.iter().any(|e| e.offset <= x.offset && x.offset + x.len <= e.offset + e.len) {
                return Err(Error::peer(
                    peer,
                    format!("said it holds {}+{} of {}, outside the file's data", x.offset, x.len, entry.display_path()),
                ));
            }
            held.entry(id).or_default().push(x);
        }
        if last {
            break;
        }
    }
    let mut out = Vec::with_capacity(held.len());
    for (id, mut ranges) in held {
        ranges.sort_unstable_by_key(|x| x.offset);
        if ranges.windows(2).any(|w| w[0].offset + w[0].len > w[1].offset) {
            return Err(Error::peer(peer, format!("said it holds overlapping ranges of {}", entries[id as usize].display_path())));
        }
        out.push((id, ranges));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adaptive_compression_is_off_for_a_receiver_on_this_host_only() {
        let auto = SendConfig { compress: Compression::Auto, ..SendConfig::default() };
        assert_eq!(for_peer(&auto, "127.0.0.1:4444").unwrap().compress, Compression::None);
        assert_eq!(for_peer(&auto, "[::1]:4444").unwrap().compress, Compression::None);
        assert_eq!(for_peer(&auto, "10.77.0.2:4444").unwrap().compress, Compression::Auto);
        let lz4 = SendConfig { compress: Compression::Lz4, ..SendConfig::default() };
        assert_eq!(for_peer(&lz4, "127.0.0.1:4444").unwrap().compress, Compression::Lz4, "an explicit codec is kept");
    }
}
