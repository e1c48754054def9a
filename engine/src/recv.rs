//! The receiver's session: listen, authenticate streams, take the manifest,
//! write blocks where they belong, verify every file, sync, and answer with
//! a verdict.
//!
//! States, in order: `Assemble` (accept connections; each HELLO is checked
//! on its own thread so garbage or slow peers cannot stall the session) →
//! `Manifest` (stream 0) → `Data` (one thread per stream) → `End` →
//! `Verify` → `Sync` → `Verdict`. A connection with bad magic, a wrong token
//! or a foreign session is dropped and logged (rate-limited) without
//! touching the session. Unauthenticated connections are bounded by
//! [`crate::admission`]: one absolute deadline each, caps per source and in
//! all, the oldest evicted when full; nothing a peer declares is allocated
//! before its token is checked. Once every stream has joined, the listener
//! closes and every pending stranger is cut. While it verifies and syncs
//! after END, the receiver sends KEEPALIVE frames so the sender can bound
//! its wait for the verdict.

use std::fs::File;
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::pipeline::{self, Abort};
use std::time::{Duration, Instant};

use crossbeam_channel::bounded;

use crate::admission::{self, Admission};
use crate::backend::{self, IoMode, Payload, StreamIo};
use crate::catalog::{Announced, Catalog};
use crate::codec::Decoder;
use crate::codec::seal::{Binding, Direction, SealKey, Sealer, SessionKey};
pub use crate::gate::hello_refusal;
use crate::gate::{Gate, Joined, Rules, reject};
use crate::journal;
use crate::manifest::Entry;
use crate::net::tls::TlsOptions;
use crate::net::{self, Link, Token};
use crate::plan::{Completion, RecvTally};
use crate::progress::Progress;
use crate::proto::{Arrived, Event, Inbound, Intake, ManifestTable, Processed, check_end};
use crate::resume::RejoinKey;
use crate::sink::{Sink, SinkOptions};
use crate::slot::{self, Resumption, Slot};
use crate::wire::{self, Frame, Kind, caps, data_flags};
use crate::{Error, Result, Summary};

/// How to receive.
#[derive(Debug, Clone)]
pub struct ReceiveConfig {
    pub io: IoMode,
    pub sink: SinkOptions,
    /// Time a new connection has, from its accept, for TLS, magic and
    /// HELLO together (an absolute deadline, not an idle timeout).
    pub handshake_timeout: Duration,
    /// Most pending (unauthenticated) handshakes from one source address.
    pub max_pending_per_source: usize,
    /// Most pending handshakes in all.
    pub max_pending: usize,
    /// Most manifest entries (or announced files) one session may carry;
    /// bounds the receiver's memory whatever a peer sends.
    pub max_entries: u64,
    /// Time all streams of a session have to connect once the first did.
    pub assemble_timeout: Duration,
    /// Time the first sender has to connect at all (`None`: wait forever).
    pub first_connect_timeout: Option<Duration>,
    /// Longest silence tolerated on a stream mid-session.
    pub idle_timeout: Duration,
    /// Socket options for the listener and every stream.
    pub sockopt: net::SockOpts,
    /// Require sealed sessions with this key (`--encrypt-key-file`).
    pub seal_key: Option<SealKey>,
    /// The command that undoes a sender's external filter (`sh -c`, block
    /// on stdin, original on stdout); sessions that filter need it.
    pub unfilter: Option<String>,
    /// TLS (the receiver is the server).
    pub tls: TlsOptions,
    pub progress: Option<Arc<Progress>>,
    /// Examines what a session delivered before the verdict: an `Err`
    /// (its reason) fails the session on both ends.
    pub vet: Option<Vet>,
    /// How long a broken stream waits for the sender to reconnect (0: not
    /// at all; the session fails at the first break).
    pub resume_window: Duration,
    /// Whether the receiver journals verified, durable ranges so that a
    /// restarted receiver can continue (tree sessions only).
    pub journal: Journaling,
    /// The old copy a delta transfer compares against (granted to a
    /// sender that asks, unless resuming).
    pub delta: Option<crate::delta::Base>,
}

/// The receiver's journal (see [`crate::journal`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Journaling {
    /// No journal (SST, `copy`: a restart begins anew anyway).
    #[default]
    Off,
    /// Journal a fresh session, so that it can be resumed.
    Write,
    /// Continue the interrupted session whose journal the destination
    /// holds (`sluice recv --resume`), and journal on.
    Resume,
}

/// The function of a [`Vet`]: `Err` carries the reason of a refusal.
pub type VetFn = dyn Fn(&Path) -> std::result::Result<(), String> + Send + Sync;

/// A check of a received destination, run before the verdict is sent.
#[derive(Clone)]
pub struct Vet(pub Arc<VetFn>);

impl std::fmt::Debug for Vet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vet(..)")
    }
}

impl Default for ReceiveConfig {
    fn default() -> Self {
        Self {
            io: IoMode::Auto,
            sink: SinkOptions::default(),
            handshake_timeout: Duration::from_secs(10),
            max_pending_per_source: admission::PER_SOURCE,
            max_pending: admission::TOTAL,
            max_entries: DEFAULT_MAX_ENTRIES,
            assemble_timeout: Duration::from_secs(30),
            first_connect_timeout: None,
            idle_timeout: Duration::from_secs(120),
            sockopt: net::SockOpts::default(),
            seal_key: None,
            unfilter: None,
            tls: TlsOptions::default(),
            progress: None,
            vet: None,
            resume_window: crate::resume::DEFAULT_WINDOW,
            journal: Journaling::Off,
            delta: None,
        }
    }
}

/// Default cap on manifest entries or announced files per session: at
/// about 250 bytes of receiver memory each, a hostile manifest stays well
/// under 256 MiB of RSS (SECURITY.md F12); a datadir of 500,000 files (a
/// quarter of a million tables) still fits.
pub const DEFAULT_MAX_ENTRIES: u64 = 1 << 19;

/// Accept backlog of the listener (the kernel caps it at somaxconn).
const LISTEN_BACKLOG: i32 = 1024;

/// How often the receiver tells a waiting sender it is still verifying or
/// syncing.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);

/// A bound listener with its one-time token, ready to receive one session.
#[derive(Debug)]
pub struct Receiver {
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    token: Token,
    /// This receiver's session nonce (sent in every WELCOME; an input of
    /// the sealing key).
    nonce: [u8; 16],
    /// The session secret a reconnecting stream proves it knows.
    secret: [u8; 16],
    cfg: ReceiveConfig,
    cancel: Arc<AtomicBool>,
}

impl Receiver {
    /// Binds `addr` and mints a fresh session token.
    pub fn bind(addr: &str, cfg: ReceiveConfig) -> Result<Self> {
        let targets = net::resolve_with(addr, &cfg.sockopt)?;
        let listener = TcpListener::bind(&targets[..])
            .map_err(|e| Error::Config(format!("cannot listen on {addr}: {e} (is the port in use, or the address not local?)")))?;
        cfg.sockopt.apply(&listener).map_err(|e| Error::io(format!("applying socket options to {addr}"), e))?;
        // A deep accept queue: a burst of strangers must not fill it, or a
        // real sender's SYN would wait for the kernel's 1 s retry.
        crate::backend::sys::listen_backlog(&listener, LISTEN_BACKLOG).map_err(|e| Error::io(format!("listening on {addr}"), e))?;
        // Certificate problems surface now, before anyone connects.
        let tls = if cfg.tls.enabled() { Some(cfg.tls.server_config()?) } else { None };
        let (nonce, secret) = fresh_randomness()?;
        Ok(Self { listener, tls, token: Token::generate()?, nonce, secret, cfg, cancel: Arc::new(AtomicBool::new(false)) })
    }

    /// A flag that, once set, makes [`run`](Self::run) give up waiting for a
    /// sender (used when the local sender of `sluice copy` fails early).
    pub fn cancel_handle(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.cancel)
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener.local_addr().map_err(|e| Error::io("reading the listening address", e))
    }

    pub fn token(&self) -> &Token {
        &self.token
    }

    /// Receives one session into `dest`. Returns only after every file is
    /// verified and synced; on error the destination keeps its
    /// `.sluice-incomplete` marker.
    pub fn run(self, dest: &Path) -> Result<Summary> {
        self.session(dest, false).map(|(s, _)| s)
    }

    /// Grants no delta transfer after all (a caller that learnt from a
    /// first session that comparing would not pay).
    #[must_use]
    pub fn without_delta(mut self) -> Self {
        self.cfg.delta = None;
        self
    }

    /// Receives one session into `dest`, like [`run`](Self::run), and
    /// returns a receiver for the next session on the same listener with the
    /// same token (a fresh nonce) and `next`'s configuration. Connections
    /// that arrive meanwhile wait in the listen queue. For a short first
    /// session (an announcement) that decides how the second runs.
    pub fn run_then(self, dest: &Path, next: ReceiveConfig) -> Result<(Summary, Self)> {
        let token = self.token.clone();
        let (summary, listener) = self.session(dest, true)?;
        let listener = listener.expect("the listener was kept");
        let tls = if next.tls.enabled() { Some(next.tls.server_config()?) } else { None };
        let (nonce, secret) = fresh_randomness()?;
        Ok((summary, Self { listener, tls, token, nonce, secret, cfg: next, cancel: Arc::new(AtomicBool::new(false)) }))
    }

    fn session(self, dest: &Path, keep: bool) -> Result<(Summary, Option<TcpListener>)> {
        let started = Instant::now();
        let method = backend::select(self.cfg.io, false)?;
        tracing::info!(backend = %method, dest = %dest.display(), "receiving");
        // A session whose listener goes on to the next one (an
        // announcement) does not resume: its listener must stay free.
        let resume_ok = !keep && !self.cfg.resume_window.is_zero();
        let (streams, gate) = self.assemble(resume_ok)?;
        let Self { listener, token, nonce, secret, cfg, .. } = self;
        let h0 = streams[0].hello.clone();
        let granted = grant(h0.capabilities, resume_ok, cfg.journal, cfg.delta.as_ref());
        let session = cfg.seal_key.as_ref().map(|k| {
            k.session(&Binding {
                sender_salt: &h0.session_salt,
                receiver_nonce: &nonce,
                token: token.as_bytes(),
                capabilities: granted,
                streams: h0.stream_count,
            })
        });
        let slots: Arc<Vec<Arc<Slot>>> = Arc::new(
            streams
                .into_iter()
                .map(|j| {
                    let i = j.hello.stream_index;
                    Arc::new(Slot::new(i, j.sock, j.peer, session.as_ref().map(|k| Sealer::new(k.clone(), Direction::ToSender, i))))
                })
                .collect(),
        );
        // A resumable session keeps the listener open for REJOINs until
        // its end; otherwise the token is spent and no further connection
        // is answered (unless the caller keeps the listener for a next
        // session).
        let resumption = (granted & caps::RESUME != 0).then(|| {
            let material = cfg.seal_key.as_ref().map(|k| k.material("sluice rejoin"));
            Arc::new(Resumption {
                key: RejoinKey::derive(&secret, &h0.session_salt, &nonce, token.as_bytes(), material.as_ref()),
                seal: cfg.seal_key.clone(),
                salt: h0.session_salt,
                nonce,
                secret,
                token: *token.as_bytes(),
                granted,
                streams: h0.stream_count,
                window: cfg.resume_window,
            })
        });
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = match &resumption {
            Some(res) => {
                let l = listener.try_clone().map_err(|e| Error::io("sharing the listener", e))?;
                Some(slot::spawn_acceptor(l, gate, Arc::clone(&slots), Arc::clone(res), Arc::clone(&stop))?)
            }
            None => None,
        };
        let listener = keep.then_some(listener);
        let verdict = Verdict { slot: &slots[0] };
        let version = wire::PROTOCOL_VERSION.min(h0.max_version);
        let mut result = receive_session(&slots, &cfg, method, dest, (session.as_ref(), granted, version), resumption.as_deref(), &verdict);
        if let (Ok(_), Some(vet)) = (&result, &cfg.vet) {
            if let Err(reason) = (vet.0)(dest) {
                result = Err(Error::Refused(reason));
            }
        }
        let sent = match &result {
            Ok(_) => verdict.send(true, ""),
            Err(e) => {
                tracing::debug!("session failed: {e}");
                let _ = verdict.send(false, &e.to_string());
                linger(&slots);
                Ok(())
            }
        };
        if let (Ok(_), Some(res)) = (&result, &resumption) {
            // Wait for the sender to hang up: if the verdict is lost with
            // a broken connection, the sender reconnects stream 0 and the
            // acceptor tells it again.
            slots[0].await_bye(res.window.min(Duration::from_secs(60)));
        } else {
            sent?;
        }
        stop.store(true, Ordering::Release);
        if let Some(a) = acceptor {
            let _ = a.join();
        }
        let (entries, files, bytes, wire_bytes, held, reused, zeros) = result?;
        Ok((
            Summary {
                entries,
                files,
                bytes,
                wire_bytes,
                resent: 0,
                held,
                reused,
                zeros,
                protocol: version,
                peak_streams: slots.len() as u16,
                elapsed: started.elapsed(),
            },
            listener,
        ))
    }

    /// Accepts connections until every stream of one session has joined.
    fn assemble(&self, resume_ok: bool) -> Result<(Vec<Joined>, Gate)> {
        self.listener.set_nonblocking(true).map_err(|e| Error::io("configuring the listener", e))?;
        let mut slots: Vec<Option<Joined>> = Vec::new();
        let mut salt = None;
        let mut session_caps = 0;
        let mut deadline = None;
        let first_deadline = self.cfg.first_connect_timeout.map(|t| (t, Instant::now() + t));
        let rules = Rules {
            token: self.token.clone(),
            sealed: self.cfg.seal_key.is_some(),
            unfilter: self.cfg.unfilter.is_some(),
            tls: self.tls.clone(),
            deadline: self.cfg.handshake_timeout,
        };
        let admission = Admission::new(self.cfg.max_pending_per_source, self.cfg.max_pending, self.cfg.handshake_timeout);
        let mut gate = Gate::new(admission, rules);
        loop {
            // What the examining threads found, first.
            for j in gate.joined() {
                let h = &j.hello;
                match salt {
                    None => {
                        salt = Some(h.session_salt);
                        session_caps = h.capabilities;
                        slots.resize_with(usize::from(h.stream_count), || None);
                        deadline = Some(Instant::now() + self.cfg.assemble_timeout);
                        let yes = |b: bool| if b { "yes" } else { "no" };
                        tracing::info!(
                            peer = %j.peer,
                            streams = h.stream_count,
                            "session started (TLS: {}, sealed: {})",
                            yes(j.sock.is_tls()),
                            yes(h.capabilities & caps::SEAL_AES256GCM != 0)
                        );
                    }
                    Some(s) if s != h.session_salt || usize::from(h.stream_count) != slots.len() || h.capabilities != session_caps => {
                        reject(&j, "a different session is already in progress on this receiver");
                        continue;
                    }
                    Some(_) => {}
                }
                let i = usize::from(h.stream_index);
                if slots[i].is_some() {
                    reject(&j, "stream index joined twice");
                    continue;
                }
                if j.rejoin.is_some() {
                    reject(&j, "there is no running session to reconnect to");
                    continue;
                }
                let welcome = Frame::Welcome {
                    version: wire::PROTOCOL_VERSION.min(h.max_version),
                    capabilities: grant(h.capabilities, resume_ok, self.cfg.journal, self.cfg.delta.as_ref()),
                    nonce: self.nonce,
                    secret: self.secret,
                };
                if let Err(e) = net::write_frame(&j.sock, &j.peer, &welcome, None) {
                    tracing::warn!("{e}");
                    continue;
                }
                slots[i] = Some(j);
            }
            // New connections: admitted within the caps, the oldest
            // stranger evicted to make room.
            gate.accept(&self.listener);
            if self.cancel.load(Ordering::Acquire) {
                return Err(Error::Aborted("cancelled while waiting for the sender".into()));
            }
            if !slots.is_empty() && slots.iter().all(Option::is_some) {
                gate.close();
                return Ok((slots.into_iter().map(|s| s.expect("checked above")).collect(), gate));
            }
            if let Some((t, _)) = first_deadline.filter(|(_, d)| salt.is_none() && Instant::now() > *d) {
                return Err(Error::Aborted(format!("no sender connected within {t:?}")));
            }
            if deadline.is_some_and(|d| Instant::now() > d) {
                let joined = slots.iter().filter(|s| s.is_some()).count();
                return Err(Error::Aborted(format!(
                    "only {joined} of {} streams connected within {:?}; the sender gave up or was stopped",
                    slots.len(),
                    self.cfg.assemble_timeout
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// The capabilities granted to a sender that asked for `requested`: all
/// of them, but RESUME only when this session may resume and HAVE only
/// when it continues an interrupted one.
fn grant(requested: u64, resume_ok: bool, journal: Journaling, delta: Option<&crate::delta::Base>) -> u64 {
    let mut granted = requested;
    if !resume_ok {
        granted &= !caps::RESUME;
    }
    if journal != Journaling::Resume {
        granted &= !caps::HAVE;
    }
    // A resuming receiver's destination holds what it journaled, not an
    // old copy to compare with; a streamed session's files are created
    // afresh, so its old copy must be another directory.
    let usable = match delta {
        None => false,
        Some(crate::delta::Base::InPlace) => requested & caps::STREAMED == 0,
        Some(crate::delta::Base::Dir(_)) => true,
    };
    if !usable || journal == Journaling::Resume {
        granted &= !caps::DELTA;
    }
    granted
}

/// A session nonce and a session secret.
fn fresh_randomness() -> Result<([u8; 16], [u8; 16])> {
    let r = |what| net::random_bytes().map_err(|e| Error::io(format!("reading /dev/urandom for a session {what}"), e));
    Ok((r("nonce")?, r("secret")?))
}

/// After a failed session: stop writing, then read and discard what the
/// sender still sends until it hangs up (at most 2 s; the verdict makes it
/// hang up at once). Closing a socket with unread data would send RST,
/// which can destroy the verdict before the sender has read it.
fn linger(slots: &[Arc<Slot>]) {
    let links: Vec<_> = slots.iter().map(|s| s.link()).collect();
    for l in &links {
        l.shutdown(Shutdown::Write);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut sink = vec![0u8; 64 << 10];
    for l in &links {
        let tcp = l.tcp();
        let _ = tcp.set_read_timeout(Some(Duration::from_millis(100)));
        while Instant::now() < deadline {
            match std::io::Read::read(&mut &*tcp, &mut sink) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
        }
        l.shutdown(Shutdown::Both);
    }
}

/// The receiver's frames on stream 0: KEEPALIVEs while it verifies and
/// syncs, then the verdict, sent at most once: early by the first failing
/// stream, or at the end of the session.
struct Verdict<'a> {
    slot: &'a Slot,
}

impl Verdict<'_> {
    fn send(&self, ok: bool, reason: &str) -> Result<()> {
        self.slot.verdict(ok, reason)
    }

    /// Runs `work`, sending a KEEPALIVE every [`KEEPALIVE_INTERVAL`] until
    /// it returns.
    fn keeping_alive<T>(&self, work: impl FnOnce() -> T) -> T {
        let (stop, stopped) = bounded::<()>(0);
        std::thread::scope(|s| {
            s.spawn(|| {
                while let Err(crossbeam_channel::RecvTimeoutError::Timeout) = stopped.recv_timeout(KEEPALIVE_INTERVAL) {
                    self.slot.keepalive();
                }
            });
            let out = work();
            drop(stop);
            out
        })
    }
}

/// Manifest, data, end, verification and sync; returns (entries, files,
/// bytes, wire bytes, bytes held from an interrupted session).
fn receive_session(
    slots: &[Arc<Slot>],
    cfg: &ReceiveConfig,
    method: backend::Method,
    dest: &Path,
    (session, granted, version): (Option<&SessionKey>, u64, u16),
    resumption: Option<&Resumption>,
    verdict: &Verdict<'_>,
) -> Result<(u64, u64, u64, u64, u64, u64, u64)> {
    for s in slots {
        let link = s.link();
        net::configure(link.tcp(), cfg.idle_timeout).map_err(|e| Error::io("configuring a socket", e))?;
        cfg.sockopt.apply(link.tcp()).map_err(|e| Error::io("applying socket options", e))?;
    }
    let (s0, peer) = (slots[0].link(), slots[0].peer.as_str());
    // One opener per stream; stream 0's serves the manifest, then its
    // stream thread (which reads END too).
    let openers: Vec<std::sync::Mutex<Option<Sealer>>> =
        (0..slots.len()).map(|i| std::sync::Mutex::new(session.map(|k| Sealer::new(k.clone(), Direction::ToReceiver, i as u16)))).collect();
    let lock = |i: usize| openers[i].lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let progress = cfg.progress.clone().unwrap_or_default();
    let abort = Abort::default();
    let inbounds: Vec<std::sync::Mutex<Option<Inbound>>> = slots
        .iter()
        .map(|s| std::sync::Mutex::new(Some(Inbound::new(s.index, &s.peer, granted, session.is_some()).speaking(version))))
        .collect();
    let rejoin = resumption.filter(|_| version >= wire::since::MANIFEST_RESUMES).map(|r| (r, &abort, &*progress, cfg.idle_timeout));
    let (entries, data_bytes) = {
        let mut t0 = inbounds[0].lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        read_manifest(&slots[0], &mut lock(0), cfg.max_entries, t0.as_mut().expect("not taken yet"), rejoin)?
    };
    let caps0 = granted;
    let streamed = caps0 & caps::STREAMED != 0;
    if streamed && !entries.is_empty() {
        return Err(Error::peer(peer, "sent a manifest in a streamed session"));
    }
    if streamed && cfg.journal == Journaling::Resume {
        return Err(Error::Refused(format!(
            "the receiver continues an interrupted transfer into {}, but this is a streamed backup, which cannot be rewound: receive it again from the start, without --resume",
            dest.display()
        )));
    }
    // Compressed, sealed or TLS blocks go through user memory anyway.
    let plain = caps0 & !(caps::STREAMED | caps::RESUME | caps::HAVE | caps::DELTA) == 0 && !s0.is_tls();
    let method = if plain { method } else { backend::Method::Copy };
    let entries = Arc::new(entries);
    let mut sink_opts = SinkOptions { direct_io: cfg.sink.direct_io && method == backend::Method::Copy, ..cfg.sink };
    if cfg.delta == Some(crate::delta::Base::InPlace) && caps0 & caps::DELTA == 0 && !streamed {
        // Told to update the destination, by a sender that sends it all.
        tracing::info!("the sender did not ask for a delta: everything travels, and replaces the old copy in {}", dest.display());
        sink_opts.overwrite = true;
    }
    let mut sink = Sink::prepare(dest, Arc::clone(&entries), sink_opts)?;
    let tally = RecvTally::new(&entries);
    let resuming = caps0 & caps::HAVE != 0;
    let carried = if resuming { Some(carry_over(&sink, &entries, &tally, &slots[0], dest)?) } else { None };
    let held: u64 = carried.as_ref().map_or(0, journal::Carry::bytes);
    progress.set_total(data_bytes - held);
    // The journal names every entry before any is created.
    let journal = match cfg.journal {
        Journaling::Off => None,
        _ if streamed => None,
        _ => Some(journal::Journal::start(sink.root(), &entries, carried.as_ref()).map_err(|e| Error::Destination {
            path: dest.join(crate::manifest::JOURNAL_FILE).display().to_string(),
            reason: format!("cannot write the journal: {e}"),
        })?),
    };
    sink.make_dirs()?;
    if let Some(c) = &carried {
        sink.resume(c.held.iter().map(|(id, _)| *id));
    }
    // A delta transfer: the old copy to fingerprint and to take references
    // from (the destination itself, whose files are then updated in place).
    let mut base = if caps0 & caps::DELTA != 0 { open_base(cfg.delta.as_ref(), &mut sink) } else { None };
    if let Some(b) = base.as_mut().filter(|b| !b.in_place && !streamed) {
        b.standins = crate::standin::find(&b.root, &entries);
        if !b.standins.is_empty() {
            tracing::info!(
                "delta: {} new files have no old copy at their own path; each is compared with an old file of its directory \
                 and kind that the new tree no longer names (a renamed table, say)",
                b.standins.len()
            );
        }
    }
    let base = base;
    let reused = AtomicU64::new(0);
    let zeros = AtomicU64::new(0);
    let streams_done = AtomicBool::new(false);
    let journal_failed = std::sync::OnceLock::<String>::new();
    let catalog = Catalog::with_limits(&sink, crate::catalog::MAX_OPEN_FILES, cfg.max_entries);
    // (Unbounded: one entry per announced file, which the catalog bounds.)
    let walks = (base.is_some() && streamed).then(crossbeam_channel::unbounded::<(u32, Vec<u8>)>);
    let table = ManifestTable { entries: &entries, tally: &tally };
    let files = if streamed { Files::Streamed(&catalog) } else { Files::Manifest(table) };
    let (stop_journal, journal_stopped) = bounded::<()>(0);
    let results = std::thread::scope(|scope| {
        if let Some(j) = &journal {
            let (stopped, failed, abort) = (&journal_stopped, &journal_failed, &abort);
            scope.spawn(move || journal_rounds(j, stopped, failed, abort));
        }
        match (&base, &walks) {
            (Some(b), Some((_, rx))) => {
                let (catalog, slots, abort, done) = (&catalog, slots, &abort, &streams_done);
                scope.spawn(move || serve_announced(&b.root, rx, catalog, slots, abort, done));
            }
            (Some(b), None) => {
                let (entries, slots, abort, progress, done, tally) = (&entries, slots, &abort, &*progress, &streams_done, &tally);
                scope.spawn(move || serve_prints(b, entries, tally, slots, abort, progress, done));
            }
            _ => {}
        }
        let results = pipeline::run_streams(
            slots,
            &abort,
            |i, slot| {
                let ctx = StreamCtx {
                    slot,
                    inbound: &inbounds[i],
                    resuming,
                    unfilter: cfg.unfilter.clone(),
                    files: &files,
                    sink: &sink,
                    abort: &abort,
                    progress: &progress,
                    method,
                    resumption,
                    idle: cfg.idle_timeout,
                    journal: journal.as_ref(),
                    base: base.as_ref(),
                    reused: &reused,
                    zeros: &zeros,
                    walks: walks.as_ref().map(|(tx, _)| tx),
                };
                let seal = lock(i).take();
                let (r, opener) = ctx.run(seal);
                slot.finish(opener, resumption);
                r
            },
            // Tell the sender at once: it stops its streams, and the other
            // threads here see them end. (No shutdown(Read): closing unread
            // sockets would reset them and could destroy this verdict.)
            |e| {
                let _ = verdict.send(false, &e.to_string());
            },
        );
        drop(stop_journal);
        streams_done.store(true, Ordering::Release);
        results
    });
    if let Some(j) = &journal {
        // What arrived before a failure counts for the next attempt too.
        if let Err(e) = j.checkpoint() {
            let _ = journal_failed.set(e.to_string());
        }
    }
    if let Some(e) = journal_failed.get() {
        return Err(Error::Destination { path: dest.display().to_string(), reason: format!("syncing the received data failed: {e}") });
    }
    let per_stream = pipeline::collect(results)?;
    let frames: u64 = per_stream.iter().map(|r| r.0).sum();
    let bytes: u64 = per_stream.iter().map(|r| r.1).sum();
    let end = per_stream.first().and_then(|r| r.2);
    let (count, expected_bytes) = if streamed { catalog.check_complete()? } else { (entries.len() as u64, data_bytes - held) };
    check_end(peer, end, Arrived { entries: count, bytes, frames, expected_bytes })?;
    table.check_complete()?;
    // Syncing may take long on a large datadir: keep the sender's wait
    // for the verdict alive meanwhile.
    verdict.keeping_alive(|| sink.finish())?;
    let files = if streamed { count } else { u64::from(tally.regular_files()) };
    let (reused, zeros) = (reused.into_inner(), zeros.into_inner());
    if base.is_some() {
        tracing::info!(
            "delta: {:.1} MiB of {:.1} MiB taken from the old copy, {:.1} MiB were zeros, {:.1} MiB travelled",
            reused as f64 / 1_048_576.0,
            bytes as f64 / 1_048_576.0,
            zeros as f64 / 1_048_576.0,
            bytes.saturating_sub(reused + zeros) as f64 / 1_048_576.0
        );
    }
    Ok((count, files, bytes, progress.snapshot().wire, held, reused, zeros))
}

/// A delta receiver's old copy: the directory its fingerprints and
/// references come from.
struct OldCopy {
    root: File,
    in_place: bool,
    /// Old files that stand in for new ones it lacks (renamed tables).
    standins: crate::standin::Standins,
}

/// Opens the old copy of a granted delta transfer (`None` on failure: the
/// sender then gets no fingerprints and sends everything). In place, the
/// sink is told to keep the destination's files.
fn open_base(base: Option<&crate::delta::Base>, sink: &mut Sink) -> Option<OldCopy> {
    match base? {
        crate::delta::Base::InPlace => {
            sink.update_in_place();
            match sink.root().try_clone() {
                Ok(root) => Some(OldCopy { root, in_place: true, standins: crate::standin::Standins::default() }),
                Err(e) => {
                    tracing::warn!("delta: cannot share the destination's descriptor ({e}); sending everything");
                    None
                }
            }
        }
        crate::delta::Base::Dir(dir) => {
            match std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW).open(dir) {
                Ok(root) => Some(OldCopy { root, in_place: false, standins: crate::standin::Standins::default() }),
                Err(e) => {
                    tracing::warn!("delta: cannot open the old copy {} ({e}); sending everything", dir.display());
                    None
                }
            }
        }
    }
}

/// The receiver's fingerprint walk (see [`crate::delta::serve`]): PRINTS
/// on stream 0, at most [`crate::delta::LEAD`] bytes ahead of the data
/// that arrived, until the streams end or the session fails. When stream
/// 0 reconnects (fingerprints in flight may be lost with the connection)
/// the walk starts again on the new connection, over the files not yet
/// complete here, each from its first page; the sender takes them anew.
fn serve_prints(
    base: &OldCopy,
    entries: &[Entry],
    tally: &RecvTally,
    slots: &[Arc<Slot>],
    abort: &Abort,
    progress: &Progress,
    done: &AtomicBool,
) {
    let (s0, slots_count) = (&slots[0], slots.len());
    let started = Instant::now();
    let order = crate::plan::Schedule::order(entries);
    let mut total = crate::delta::Served::default();
    let mut walks = 0;
    loop {
        let generation = s0.told_on();
        let ended = || abort.is_set() || done.load(Ordering::Acquire);
        let moved = || s0.told_on() != generation;
        let pace = |at: u64| loop {
            if ended() || moved() {
                return false;
            }
            if progress.snapshot().done + crate::delta::LEAD >= at {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let send = |f: Frame| !ended() && s0.tell_on(generation, &f).unwrap_or(false);
        // Again after a reconnection: not the files complete here, and each
        // other from a little before what arrived of it (blocks arrive in
        // the sender's order, give or take one block per stream in flight;
        // one that needs a page not walked again is sent as data).
        let margin = slots_count as u64 * u64::from(wire::MAX_PAYLOAD);
        let from = |id: u32| match walks {
            0 => Some(0),
            _ if tally.is_complete(id) => None,
            _ => Some(tally.received(id).saturating_sub(margin)),
        };
        let served = crate::delta::serve(&base.root, &base.standins, entries, &order, from, pace, send);
        (total.files, total.pages, total.complete) = (total.files + served.files, total.pages + served.pages, served.complete);
        walks += 1;
        // Until the streams end: if stream 0 reconnects (fingerprints in
        // flight, even those of a finished walk, are lost with the old
        // connection, and the sender takes them afresh), walk again.
        while !ended() && !moved() {
            std::thread::sleep(Duration::from_millis(20));
        }
        if ended() {
            break;
        }
        tracing::info!("delta: stream 0 reconnected; fingerprinting the files not yet complete again");
    }
    let mut note = if walks > 1 { format!(" ({walks} walks: stream 0 reconnected)") } else { String::new() };
    if !total.complete {
        note += " (stopped early)";
    }
    log_fingerprinted(total, started, &note);
}

/// The receiver's fingerprint walk in a streamed session (see
/// [`crate::delta::Walks`]): each file the sender announces is
/// fingerprinted in turns, each at most [`crate::delta::FILE_LEAD`] ahead
/// of what arrived of it, until the streams end or the session fails.
/// When stream 0 reconnects, the files not complete are walked again on
/// the new connection from a little before what arrived of each.
fn serve_announced(
    root: &File,
    announced: &crossbeam_channel::Receiver<(u32, Vec<u8>)>,
    catalog: &Catalog<'_>,
    slots: &[Arc<Slot>],
    abort: &Abort,
    done: &AtomicBool,
) {
    let s0 = &slots[0];
    let started = Instant::now();
    let margin = slots.len() as u64 * u64::from(wire::MAX_PAYLOAD);
    let mut walks = crate::delta::Walks::default();
    let mut generation = s0.told_on();
    let mut reconnections = 0;
    let ended = || abort.is_set() || done.load(Ordering::Acquire);
    while !ended() {
        while let Ok((id, path)) = announced.try_recv() {
            walks.add(id, path);
        }
        if s0.told_on() != generation {
            generation = s0.told_on();
            reconnections += 1;
            tracing::info!("delta: stream 0 reconnected; fingerprinting the files not yet complete again");
            walks.restart(|id| catalog.arrived(id).map(|got| got.saturating_sub(margin)));
        }
        let send = |f: Frame| !ended() && s0.tell_on(generation, &f).unwrap_or(false);
        match walks.turn(root, |id| catalog.arrived(id), send) {
            Some(true) => {}
            // Nothing to do now: wait for an announcement or for data.
            Some(false) | None => {
                if let Ok((id, path)) = announced.recv_timeout(Duration::from_millis(if walks.is_idle() { 20 } else { 2 })) {
                    walks.add(id, path);
                }
            }
        }
    }
    let note = if reconnections > 0 { format!(" ({reconnections} reconnections of stream 0)") } else { String::new() };
    log_fingerprinted(walks.served(), started, &note);
}

/// Says what a receiver's walk over its old copy fingerprinted.
fn log_fingerprinted(served: crate::delta::Served, started: Instant, note: &str) {
    tracing::info!(
        "delta: fingerprinted {} old files ({:.1} MiB) in {:.2} s{note}",
        served.files,
        (served.pages * wire::PRINT_PAGE) as f64 / 1_048_576.0,
        started.elapsed().as_secs_f64(),
    );
}

/// A resumed session's start: what the destination's journal holds of
/// this manifest is credited and told to the sender (HAVE frames on
/// stream 0); what interrupted sessions created that the source no longer
/// has is removed.
/// Returns what is carried over.
fn carry_over(sink: &Sink, entries: &[Entry], tally: &RecvTally, s0: &Slot, dest: &Path) -> Result<journal::Carry> {
    let bad = |reason: String| Error::Destination { path: dest.display().to_string(), reason };
    // Sink::prepare wrote the marker, so only a journal can be missing.
    let journal::Found::Held(held) = journal::find(sink.root()).map_err(|e| bad(format!("cannot read the journal: {e}")))? else {
        return Err(bad("holds no journal of an interrupted transfer: receive again without --resume".into()));
    };
    if held.torn {
        tracing::info!("the journal ends in a record torn by the interruption; what came before it counts");
    }
    let c = held.carry(entries);
    let removed = journal::remove_stale(sink.root(), &c.stale);
    for (id, ranges) in &c.held {
        tally.credit(*id, ranges.iter().map(|x| x.len).sum());
    }
    let bytes = c.bytes();
    tracing::info!(
        "resuming: {:.1} MiB in {} files are verified and durable from the interrupted transfer; {} changed at the source since and are received again; {removed} no longer at the source were removed",
        bytes as f64 / 1_048_576.0,
        c.held.len(),
        c.changed
    );
    let ranges: Vec<(u32, crate::manifest::Extent)> = c.held.iter().flat_map(|(id, r)| r.iter().map(move |x| (*id, *x))).collect();
    let mut chunks = ranges.chunks(wire::HAVE_RANGES_PER_FRAME).peekable();
    let mut frames = Vec::new();
    if chunks.peek().is_none() {
        frames.push(Frame::Have { last: true, ranges: Vec::new() });
    }
    while let Some(chunk) = chunks.next() {
        frames.push(Frame::Have { last: chunks.peek().is_none(), ranges: chunk.to_vec() });
    }
    s0.tell_have(frames);
    Ok(c)
}

/// The journal's rounds: every [`journal::CHECKPOINT_INTERVAL`] until
/// `stopped` closes, what was verified is synced and journaled. A failed
/// sync fails the session (a later `syncfs` would not report it again).
fn journal_rounds(j: &journal::Journal, stopped: &crossbeam_channel::Receiver<()>, failed: &std::sync::OnceLock<String>, abort: &Abort) {
    while let Err(crossbeam_channel::RecvTimeoutError::Timeout) = stopped.recv_timeout(journal::CHECKPOINT_INTERVAL) {
        if let Err(e) = j.checkpoint() {
            let _ = failed.set(e.to_string());
            abort.trip();
            return;
        }
    }
}

/// Where a session's files are described: its manifest, or (streamed) the
/// announcements that arrive with the data.
enum Files<'a> {
    Manifest(ManifestTable<'a>),
    Streamed(&'a Catalog<'a>),
}

/// The file a DATA frame writes into.
enum Target<'a> {
    Manifest(&'a Entry, Arc<crate::sink::DestFile>),
    Streamed(Arc<Announced>, Arc<crate::sink::DestFile>),
}

impl Target<'_> {
    fn dest(&self) -> &crate::sink::DestFile {
        match self {
            Self::Manifest(_, f) | Self::Streamed(_, f) => f,
        }
    }

    fn path(&self) -> &[u8] {
        match self {
            Self::Manifest(e, _) => &e.path,
            Self::Streamed(a, _) => &a.path,
        }
    }

    fn display_path(&self) -> String {
        String::from_utf8_lossy(self.path()).into_owned()
    }
}

/// Waits for the sender to take stream `slot` over with a new connection
/// after `failure` broke it: one resume window from the break, however
/// many reconnections die before they are answered (an outage kills them
/// as they come). Returns the opener of the new connection.
fn await_sender(
    slot: &Slot,
    res: &Resumption,
    failure: &Error,
    abort: &Abort,
    progress: &Progress,
    idle: Duration,
) -> Result<Option<Sealer>> {
    let index = slot.index;
    tracing::warn!(stream = index, "stream {index} broke ({failure}); waiting up to {:?} for the sender to reconnect", res.window);
    let deadline = Instant::now() + res.window;
    let mut failure = failure.to_string();
    loop {
        let waiting = progress.resuming();
        let rejoined = slot.await_rejoin(deadline, abort);
        drop(waiting);
        let Some((j, generation)) = rejoined else {
            if abort.is_set() {
                return Err(Abort::error());
            }
            return Err(Error::broken(
                &slot.peer,
                format!("stream {index} broke ({failure}) and the sender did not reconnect within the resume window of {:?}", res.window),
            ));
        };
        net::configure(j.sock.tcp(), idle).map_err(|e| Error::io("configuring a socket", e))?;
        match slot.answer(j, generation, res) {
            Ok(opener) => return Ok(opener),
            // The new connection died too: wait for the next.
            Err(e) => {
                tracing::warn!(stream = index, "stream {index}: reconnection {generation} broke before it was answered ({e})");
                failure = e.to_string();
            }
        }
    }
}

/// Opens (sealed) and decodes (compressed, per the DATA flag `flag`) a
/// payload the backend read, leaving the block of `raw_len` bytes in its
/// block buffer. Input that fails to open or decode is `InvalidData`.
fn unwrap_payload(
    payload: Payload<'_>,
    flag: u8,
    raw_len: u32,
    decoder: &mut Decoder,
    open: Option<(&mut Sealer, &[u8])>,
) -> std::io::Result<()> {
    let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    let unseal = |sealed: &mut [u8]| match open {
        Some((sealer, aad)) => sealer.open(aad, sealed).map_err(|e| invalid(e.to_string())),
        None => Ok(sealed.len()),
    };
    match payload {
        Payload::InPlace(sealed) => {
            let plain = unseal(sealed)?;
            if plain != raw_len as usize {
                return Err(invalid(format!("block of {plain} bytes, {raw_len} announced")));
            }
            Ok(())
        }
        Payload::Apart { wire, block } => {
            let plain = unseal(wire)?;
            decoder.decode(flag, &wire[..plain], block).map_err(invalid)
        }
    }
}

/// Reads MANIFEST frames up to MANIFEST_END on stream 0; [`Intake`]
/// checks them. From protocol 6 on, a resumable session counts them as
/// processed frames of stream 0 (`t`), and a connection that breaks is
/// taken over by a new one (`rejoin`) that goes on where it stopped.
fn read_manifest(
    s0: &Slot,
    seal: &mut Option<Sealer>,
    max_entries: u64,
    t: &mut Inbound,
    rejoin: Option<(&Resumption, &Abort, &Progress, Duration)>,
) -> Result<(Vec<Entry>, u64)> {
    let mut intake = Intake::new(&s0.peer, max_entries);
    loop {
        let link = s0.link();
        let frame = match net::read_frame(&*link, &s0.peer, "while sending the manifest", seal.as_mut()) {
            Ok(frame) => frame,
            Err(e @ Error::Broken { .. }) if rejoin.is_some_and(|(_, abort, ..)| !abort.is_set()) => {
                let (res, abort, progress, idle) = rejoin.expect("checked above");
                *seal = await_sender(s0, res, &e, abort, progress, idle)?;
                t.rejoined(Instant::now());
                continue;
            }
            Err(e) => return Err(e),
        };
        let manifest = intake.take(frame)?;
        if rejoin.is_some() {
            if let Some(p) = t.counted(Instant::now()) {
                s0.processed(p.frames, p.tell);
            }
        }
        if let Some(m) = manifest {
            return Ok(m);
        }
    }
}

struct StreamCtx<'a> {
    slot: &'a Slot,
    /// This stream's state (stream 0's has counted the manifest), taken by
    /// its thread.
    inbound: &'a std::sync::Mutex<Option<Inbound>>,
    /// A resuming receiver (it sent HAVE).
    resuming: bool,
    unfilter: Option<String>,
    files: &'a Files<'a>,
    sink: &'a Sink,
    abort: &'a Abort,
    progress: &'a Progress,
    method: backend::Method,
    resumption: Option<&'a Resumption>,
    idle: Duration,
    journal: Option<&'a journal::Journal>,
    /// A delta transfer's old copy, where references are read.
    base: Option<&'a OldCopy>,
    /// Data bytes taken from the old copy (references), and written as
    /// zeros, all streams.
    reused: &'a AtomicU64,
    zeros: &'a AtomicU64,
    /// A streamed delta session: where newly announced files go to be
    /// fingerprinted.
    walks: Option<&'a crossbeam_channel::Sender<(u32, Vec<u8>)>>,
}

/// What a stream carried: DATA frames, data bytes, and (stream 0) END's
/// totals (entries, data bytes, frames).
type Streamed = (u64, u64, Option<(u64, u64, u64)>);

impl StreamCtx<'_> {
    /// Handles the frames of this stream until STREAM_END (stream 0: until
    /// END), across reconnections in a resumable session; returns (frames,
    /// bytes, stream 0's END totals).
    fn run(&self, mut seal: Option<Sealer>) -> (Result<Streamed>, Option<Sealer>) {
        let r = self.run_all(&mut seal);
        (r, seal)
    }

    fn run_all(&self, seal: &mut Option<Sealer>) -> Result<Streamed> {
        let mut t =
            self.inbound.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take().expect("each stream's state is taken once");
        loop {
            let link = self.slot.link();
            let failure = match self.run_on(&link, seal, &mut t) {
                Ok(end) => {
                    let (frames, bytes) = t.totals();
                    return Ok((frames, bytes, end));
                }
                Err(e @ Error::Broken { .. }) if self.resumption.is_some() && !self.abort.is_set() => e,
                Err(e) => return Err(e),
            };
            let res = self.resumption.expect("checked above");
            *seal = await_sender(self.slot, res, &failure, self.abort, self.progress, self.idle)?;
            t.rejoined(Instant::now());
        }
    }

    /// One frame processed: in a resumable session, recorded for the
    /// sender and told now and then.
    fn processed(&self, p: Option<Processed>) {
        if self.slot.index == 0 && self.resuming {
            self.slot.have_arrived();
        }
        if let Some(p) = p {
            self.slot.processed(p.frames, p.tell);
        }
    }

    /// Reads and handles frames from `link` until this stream's end (`Ok`)
    /// or a failure.
    fn run_on(&self, link: &Link, seal: &mut Option<Sealer>, t: &mut Inbound) -> Result<Option<(u64, u64, u64)>> {
        let (sock, peer) = (link, self.slot.peer.as_str());
        let index = self.slot.index;
        let mut io = StreamIo::new(self.method, wire::MAX_PAYLOAD).map_err(|e| Error::io("setting up receive I/O", e))?;
        let mut inbound = io.inbound(sock);
        let mut decoder = Decoder::with_external(self.unfilter.clone());
        let what = format!("on stream {index} before its end");
        // The old file references last came from (one descriptor per stream).
        let mut old: Option<(u32, File)> = None;
        let mut reread = Vec::new();
        loop {
            if self.abort.is_set() {
                return Err(Abort::error());
            }
            let h = match net::read_header(&mut inbound, peer, &what) {
                Err(_) if self.abort.is_set() => return Err(Abort::error()),
                r => r?,
            };
            if h.kind == Kind::Data {
                let (d, wire_len) = net::read_data_header(&mut inbound, peer, h)?;
                let len = d.raw_len;
                t.data(h, &d)?;
                let target = self.target(d.file_id, d.offset, len, peer)?;
                let flag = h.flags & data_flags::COMPRESSED;
                let file = target.dest();
                let reference = h.flags & data_flags::REF != 0;
                let zero = h.flags & data_flags::ZERO != 0;
                let received = if reference || zero {
                    self.reference(&mut inbound, h, &d, wire_len, &target, seal, &mut old, &mut reread)
                } else if flag == 0 && seal.is_none() {
                    io.receive(&mut inbound, &file.file, file.direct.as_ref(), d.offset, len)
                } else {
                    // The associated data: this frame's header and DATA header, re-encoded
                    // (decoding checked that the reserved fields are zero, so it is exact).
                    let aad = d.encode_prefix(wire_len, h.flags);
                    let open = seal.as_mut().map(|s| (s, &aad[..]));
                    io.read_payload(&mut inbound, wire_len, len, flag == 0)
                        .and_then(|payload| unwrap_payload(payload, flag, len, &mut decoder, open))
                        .and_then(|()| io.write_block(&file.file, file.direct.as_ref(), d.offset, len))
                };
                let sum = received.map_err(|e| match e.kind() {
                    _ if net::is_break(&e) => {
                        Error::broken(peer, format!("stream {index} broke while receiving {}: {e}", target.display_path()))
                    }
                    std::io::ErrorKind::UnexpectedEof => {
                        Error::broken(peer, format!("stream {index} closed while receiving {}: {e}", target.display_path()))
                    }
                    std::io::ErrorKind::InvalidData => {
                        Error::Verify { path: target.display_path(), reason: format!("block at offset {}: {e}", d.offset) }
                    }
                    _ => self.sink.write_error_at(target.path(), d.offset, &e),
                })?;
                if reference && sum != d.checksum {
                    return Err(Error::Verify {
                        path: target.display_path(),
                        reason: format!(
                            "the old copy's {len} bytes at offset {} are not the ones the sender compared with: it changed during the transfer; run it again",
                            d.offset
                        ),
                    });
                }
                let processed = t.verified(&d, sum, Instant::now(), || target.display_path())?;
                if reference {
                    self.reused.fetch_add(u64::from(len), Ordering::Relaxed);
                } else if zero {
                    self.zeros.fetch_add(u64::from(len), Ordering::Relaxed);
                }
                self.progress.add(u64::from(len));
                self.progress.add_wire(u64::from(wire_len));
                match (&target, self.files) {
                    (Target::Manifest(entry, _), Files::Manifest(table)) => {
                        if let Some(j) = self.journal {
                            j.record(d.file_id, d.offset, u64::from(len));
                        }
                        self.settle(entry, table.block(entry, d.offset, len, sum)?)?;
                    }
                    (Target::Streamed(f, _), Files::Streamed(catalog)) => catalog.record_block(f, d.file_id, d.offset, len, sum)?,
                    _ => unreachable!("a target comes from its session's file table"),
                }
                self.processed(processed);
                continue;
            }
            let frame = net::read_body(&mut inbound, peer, h, seal.as_mut())?;
            let (event, processed) = t.control(frame, Instant::now())?;
            match (event, self.files) {
                (Event::End { entries, data_bytes, frames }, _) => {
                    self.processed(processed);
                    return Ok(Some((entries, data_bytes, frames)));
                }
                (Event::Parked, _) => continue,
                (Event::StreamEnded { last }, _) => {
                    self.processed(processed);
                    if last {
                        return Ok(None);
                    }
                    continue;
                }
                (Event::FileDone { file_id, digest }, Files::Manifest(table)) => {
                    let (entry, state) = table.done(file_id, digest, peer)?;
                    self.settle(entry, state)?;
                }
                (Event::Announce { file_id, mode, path }, Files::Streamed(catalog)) => {
                    if catalog.announce(file_id, mode, &path)?
                        && let Some(walks) = self.walks
                    {
                        let _ = walks.send((file_id, path));
                    }
                }
                (Event::FileEnd { file_id, size, data_bytes, digest }, Files::Streamed(catalog)) => {
                    let f = catalog.get(file_id, peer)?;
                    catalog.record_end(&f, size, data_bytes, digest)?;
                }
                (Event::FileDone { .. }, _) => return Err(Error::peer(peer, "sent FileDone in a streamed session")),
                (Event::Announce { .. } | Event::FileEnd { .. }, _) => {
                    return Err(Error::peer(peer, "sent Announce or FileEnd in a session with a manifest"));
                }
            }
            self.processed(processed);
        }
    }

    /// A reference (DATA flagged REF) or zeros (ZERO): its seal checked,
    /// the range taken from the old copy (copied, unless the destination
    /// is the old copy) or written with zeros, and the checksum of what
    /// the destination now holds there.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        &self,
        inbound: &mut backend::Inbound<'_>,
        h: wire::FrameHeader,
        d: &wire::DataHeader,
        wire_len: u32,
        target: &Target<'_>,
        seal: &mut Option<Sealer>,
        old: &mut Option<(u32, File)>,
        buf: &mut Vec<u8>,
    ) -> std::io::Result<u64> {
        let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        if wire_len > 0 {
            // Sealed: an empty payload and its tag, which authenticates the headers.
            let mut tag = vec![0u8; wire_len as usize];
            std::io::Read::read_exact(inbound, &mut tag)?;
            let aad = d.encode_prefix(wire_len, h.flags);
            let Some(s) = seal.as_mut() else { return Err(invalid("a reference with a payload".into())) };
            if s.open(&aad, &mut tag).map_err(|e| invalid(e.to_string()))? != 0 {
                return Err(invalid("a reference with a payload".into()));
            }
        }
        let (len, dest) = (d.raw_len as usize, &target.dest().file);
        if h.flags & data_flags::ZERO != 0 {
            buf.clear();
            buf.resize(len, 0);
            std::os::unix::fs::FileExt::write_all_at(dest, buf, d.offset)?;
            return Ok(crate::digest::checksum(buf));
        }
        let Some(base) = self.base else { return Err(invalid("a reference, but this receiver has no old copy".into())) };
        if !base.in_place {
            if old.as_ref().is_none_or(|(id, _)| *id != d.file_id) {
                *old = None;
                let f = crate::fingerprint::open(&base.root, base.standins.old_path(d.file_id, target.path()))
                    .map_err(|e| invalid(format!("a reference to the old copy, which cannot be opened: {e}")))?;
                *old = Some((d.file_id, f));
            }
            let src = &old.as_ref().expect("opened above").1;
            let mut done = 0;
            while done < len {
                let at = d.offset + done as u64;
                match backend::sys::copy_file_range(src, at, dest, at, len - done) {
                    Ok(0) => return Err(invalid(format!("a reference beyond the old copy's end ({at})"))),
                    Ok(n) => done += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        buf.resize(len, 0);
        std::os::unix::fs::FileExt::read_exact_at(dest, buf, d.offset).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof { invalid("a reference beyond the old copy's end".into()) } else { e }
        })?;
        Ok(crate::digest::checksum(buf))
    }

    /// The file a DATA frame of `len` bytes at `offset` writes into, its
    /// range checked.
    fn target(&self, id: u32, offset: u64, len: u32, peer: &str) -> Result<Target<'_>> {
        match self.files {
            Files::Manifest(table) => {
                let entry = table.target(id, offset, len, peer)?;
                Ok(Target::Manifest(entry, self.sink.file(id)?))
            }
            Files::Streamed(catalog) => {
                let f = catalog.get(id, peer)?;
                Catalog::check_range(&f, offset, len)?;
                let dest = catalog.open(&f)?;
                Ok(Target::Streamed(f, dest))
            }
        }
    }

    fn settle(&self, entry: &Entry, state: Completion) -> Result<()> {
        match state {
            Completion::Complete => self.sink.finish_file(entry.id),
            Completion::Pending => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::Base;

    #[test]
    fn delta_is_granted_only_with_an_old_copy_a_streamed_session_can_use() {
        let dir = Base::Dir(std::path::PathBuf::from("/old"));
        let tree = caps::DELTA | caps::RESUME;
        let streamed = tree | caps::STREAMED;
        let delta = |requested: u64, journal: Journaling, base: Option<&Base>| grant(requested, true, journal, base) & caps::DELTA != 0;
        assert!(delta(tree, Journaling::Off, Some(&Base::InPlace)));
        assert!(delta(tree, Journaling::Off, Some(&dir)));
        assert!(delta(streamed, Journaling::Off, Some(&dir)), "a streamed backup compares with another directory");
        assert!(!delta(streamed, Journaling::Off, Some(&Base::InPlace)), "a streamed session creates its files afresh");
        assert!(!delta(tree, Journaling::Off, None), "no old copy");
        assert!(!delta(tree, Journaling::Resume, Some(&Base::InPlace)), "a resuming destination holds what it journaled");
        assert!(!delta(caps::RESUME, Journaling::Off, Some(&dir)), "not asked");
    }
}
