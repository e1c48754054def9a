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

use std::collections::HashMap;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::pipeline::{self, Abort};
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender as Tx, bounded, unbounded};

use crate::admission::{self, Admission, LogDecision, LogLimit, Ticket};
use crate::backend::{self, IoMode, StreamIo};
use crate::catalog::{Announced, Catalog};
use crate::codec::Decoder;
use crate::codec::seal::{Binding, Direction, SealKey, Sealer, SessionKey};
use crate::net::tls::TlsOptions;
use crate::net::{self, Link, Token};
use crate::plan::{Entry, EntryKind, Progress as FileProgress, RecvTally};
use crate::progress::Progress;
use crate::sink::{Sink, SinkOptions};
use crate::wire::{self, Frame, Hello, Kind, MAGIC, caps, data_flags};
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
    cfg: ReceiveConfig,
    cancel: Arc<AtomicBool>,
}

struct Joined {
    sock: Link,
    peer: String,
    hello: Hello,
    ticket: Ticket,
}

/// What an examining thread reports to the accept loop.
enum Examined {
    Joined(Box<Joined>),
    Refused(Ticket),
}

/// Refusals of unauthenticated peers, logged at a bounded rate.
#[derive(Debug, Default)]
struct RefusalLog(Mutex<LogLimit>);

impl RefusalLog {
    fn refuse(&self, peer: &str, reason: &str) {
        let d = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).decide(Instant::now());
        if let LogDecision::Log { suppressed } = d {
            if suppressed > 0 {
                tracing::warn!("{suppressed} more connection(s) were refused in the last {:?} (not logged)", admission::LOG_WINDOW);
            }
            tracing::warn!(peer = %peer, "refused a connection: {}", crate::error::printable(reason));
        }
    }
}

/// Sockets of pending handshakes, cut when evicted, expired, or when the
/// session no longer needs the listener.
#[derive(Default)]
struct PendingSockets(HashMap<Ticket, TcpStream>);

impl PendingSockets {
    fn cut(&mut self, t: Ticket) {
        if let Some(s) = self.0.remove(&t) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for PendingSockets {
    fn drop(&mut self) {
        for (_, s) in self.0.drain() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
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
        let nonce = net::random_bytes().map_err(|e| Error::io("reading /dev/urandom for a session nonce", e))?;
        Ok(Self { listener, tls, token: Token::generate()?, nonce, cfg, cancel: Arc::new(AtomicBool::new(false)) })
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
        let nonce = net::random_bytes().map_err(|e| Error::io("reading /dev/urandom for a session nonce", e))?;
        Ok((summary, Self { listener, tls, token, nonce, cfg: next, cancel: Arc::new(AtomicBool::new(false)) }))
    }

    fn session(self, dest: &Path, keep: bool) -> Result<(Summary, Option<TcpListener>)> {
        let started = Instant::now();
        let method = backend::select(self.cfg.io, false)?;
        tracing::info!(backend = %method, dest = %dest.display(), "receiving");
        let streams = self.assemble()?;
        // The token is spent: no further connection is answered (unless
        // the caller keeps the listener for a next session).
        let Self { listener, token, nonce, cfg, .. } = self;
        let listener = keep.then_some(listener);
        let peer = streams[0].peer.clone();
        let h0 = &streams[0].hello;
        let session = cfg.seal_key.as_ref().map(|k| {
            k.session(&Binding {
                sender_salt: &h0.session_salt,
                receiver_nonce: &nonce,
                token: token.as_bytes(),
                capabilities: h0.capabilities,
                streams: h0.stream_count,
            })
        });
        let verdict = Verdict {
            link: &streams[0].sock,
            peer: &peer,
            sealer: Mutex::new(VerdictState::Pending(session.as_ref().map(|k| Sealer::new(k.clone(), Direction::ToSender, 0)))),
        };
        let mut result = receive_session(&streams, &cfg, method, dest, session.as_ref(), &verdict);
        if let (Ok(_), Some(vet)) = (&result, &cfg.vet) {
            if let Err(reason) = (vet.0)(dest) {
                result = Err(Error::Refused(reason));
            }
        }
        match &result {
            Ok(_) => verdict.send(true, "")?,
            Err(e) => {
                tracing::debug!("session failed: {e}");
                let _ = verdict.send(false, &e.to_string());
                linger(&streams);
            }
        }
        let (entries, files, bytes, wire_bytes) = result?;
        Ok((Summary { entries, files, bytes, wire_bytes, elapsed: started.elapsed() }, listener))
    }

    /// Accepts connections until every stream of one session has joined.
    fn assemble(&self) -> Result<Vec<Joined>> {
        self.listener.set_nonblocking(true).map_err(|e| Error::io("configuring the listener", e))?;
        let (tx, rx) = unbounded::<Examined>();
        let log = Arc::new(RefusalLog::default());
        let mut admission = Admission::new(self.cfg.max_pending_per_source, self.cfg.max_pending, self.cfg.handshake_timeout);
        let mut pending = PendingSockets::default();
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
        let rules = Arc::new(rules);
        loop {
            // What the examining threads found, first: a sender that passed
            // its token check leaves the pending table before anything can
            // evict it.
            while let Ok(x) = rx.try_recv() {
                let j = match x {
                    Examined::Refused(t) => {
                        admission.done(t);
                        pending.0.remove(&t);
                        continue;
                    }
                    Examined::Joined(j) => *j,
                };
                admission.done(j.ticket);
                pending.0.remove(&j.ticket);
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
                let welcome =
                    Frame::Welcome { version: wire::PROTOCOL_VERSION.min(h.max_version), capabilities: h.capabilities, nonce: self.nonce };
                if let Err(e) = net::write_frame(&j.sock, &j.peer, &welcome, None) {
                    tracing::warn!("{e}");
                    continue;
                }
                slots[i] = Some(j);
            }
            // New connections: admitted within the caps, the oldest
            // stranger evicted to make room.
            loop {
                match self.listener.accept() {
                    Ok((sock, addr)) => admit(sock, addr, &mut admission, &mut pending, &rules, &log, &tx),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        log.refuse("listener", &format!("accept failed: {e}"));
                        break;
                    }
                }
            }
            for t in admission.expired(Instant::now()) {
                pending.cut(t);
            }
            if self.cancel.load(Ordering::Acquire) {
                return Err(Error::Aborted("cancelled while waiting for the sender".into()));
            }
            if !slots.is_empty() && slots.iter().all(Option::is_some) {
                for t in admission.drain() {
                    pending.cut(t);
                }
                return Ok(slots.into_iter().map(|s| s.expect("checked above")).collect());
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

/// Admits one accepted connection and starts examining it.
#[allow(clippy::too_many_arguments)]
fn admit(
    sock: TcpStream,
    addr: SocketAddr,
    admission: &mut Admission,
    pending: &mut PendingSockets,
    rules: &Arc<Rules>,
    log: &Arc<RefusalLog>,
    tx: &Tx<Examined>,
) {
    let (ticket, evict) = admission.admit(addr.ip(), Instant::now());
    for t in evict {
        pending.cut(t);
    }
    let Ok(handle) = sock.try_clone() else {
        admission.done(ticket);
        return;
    };
    pending.0.insert(ticket, handle);
    let (rules, thread_log, tx) = (Arc::clone(rules), Arc::clone(log), tx.clone());
    let spawned = std::thread::Builder::new().name("sluice-handshake".into()).stack_size(256 << 10).spawn(move || {
        let outcome = examine(sock, addr, ticket, &rules, &thread_log);
        let _ = tx.send(outcome.map_or(Examined::Refused(ticket), |j| Examined::Joined(Box::new(j))));
    });
    if let Err(e) = spawned {
        // Out of threads or memory: drop this connection, keep serving.
        log.refuse(&addr.to_string(), &format!("cannot start a handshake thread: {e}"));
        admission.done(ticket);
        pending.cut(ticket);
    }
}

/// What a connection must satisfy to join.
struct Rules {
    token: Token,
    sealed: bool,
    unfilter: bool,
    tls: Option<Arc<rustls::ServerConfig>>,
    deadline: Duration,
}

/// After a failed session: stop writing, then read and discard what the
/// sender still sends until it hangs up (at most 2 s; the verdict makes it
/// hang up at once). Closing a socket with unread data would send RST,
/// which can destroy the verdict before the sender has read it.
fn linger(streams: &[Joined]) {
    for j in streams {
        j.sock.shutdown(Shutdown::Write);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut sink = vec![0u8; 64 << 10];
    for j in streams {
        let tcp = j.sock.tcp();
        let _ = tcp.set_read_timeout(Some(Duration::from_millis(100)));
        while Instant::now() < deadline {
            match std::io::Read::read(&mut &*tcp, &mut sink) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
        }
        j.sock.shutdown(Shutdown::Both);
    }
}

/// The receiver's frames on stream 0: KEEPALIVEs while it verifies and
/// syncs, then the verdict, sent at most once: early by the first failing
/// stream, or at the end of the session. `sealer` is `None` once the
/// verdict went out.
struct Verdict<'a> {
    link: &'a Link,
    peer: &'a str,
    sealer: Mutex<VerdictState>,
}

/// Whether the verdict went out yet, and the sealer of stream 0's frames
/// to the sender (`None` in an unsealed session).
enum VerdictState {
    Pending(Option<Sealer>),
    Sent,
}

impl Verdict<'_> {
    fn send(&self, ok: bool, reason: &str) -> Result<()> {
        let mut slot = self.sealer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let VerdictState::Pending(mut sealer) = std::mem::replace(&mut *slot, VerdictState::Sent) else { return Ok(()) };
        net::write_frame(self.link, self.peer, &Frame::Verdict { ok, reason: reason.into() }, sealer.as_mut())
    }

    /// Tells the sender this receiver is still at work (no-op after the
    /// verdict).
    fn keepalive(&self) {
        let mut slot = self.sealer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let VerdictState::Pending(sealer) = &mut *slot {
            let _ = net::write_frame(self.link, self.peer, &Frame::Keepalive, sealer.as_mut());
        }
    }

    /// Runs `work`, sending a KEEPALIVE every [`KEEPALIVE_INTERVAL`] until
    /// it returns.
    fn keeping_alive<T>(&self, work: impl FnOnce() -> T) -> T {
        let (stop, stopped) = bounded::<()>(0);
        std::thread::scope(|s| {
            s.spawn(|| {
                while let Err(crossbeam_channel::RecvTimeoutError::Timeout) = stopped.recv_timeout(KEEPALIVE_INTERVAL) {
                    self.keepalive();
                }
            });
            let out = work();
            drop(stop);
            out
        })
    }
}

fn reject(j: &Joined, reason: &str) {
    tracing::warn!(peer = %j.peer, "refused a connection: {reason}");
    let _ = net::write_frame(&j.sock, &j.peer, &Frame::Reject { reason: reason.into() }, None);
}

/// Checks one new connection's magic, HELLO and token; returns it when it
/// may join. Refusals are logged (rate-limited) and the connection dropped;
/// the session never sees them. Before the token is checked nothing is
/// allocated from a length the peer declared: the only frame read is a
/// HELLO of exactly [`wire::HELLO_LEN`] bytes. The accept loop cuts the
/// socket when the absolute handshake deadline passes.
fn examine(tcp: TcpStream, addr: SocketAddr, ticket: Ticket, rules: &Rules, log: &RefusalLog) -> Option<Joined> {
    let peer = addr.to_string();
    let refuse = |sock: Option<&Link>, reason: &str| {
        log.refuse(&peer, reason);
        if let Some(sock) = sock {
            let _ = net::write_frame(sock, &peer, &Frame::Reject { reason: reason.into() }, None);
        }
        None
    };
    // Each read is also bounded by the whole deadline (the accept loop
    // enforces it across reads).
    if tcp.set_nonblocking(false).and_then(|()| net::configure(&tcp, rules.deadline)).is_err() {
        return None;
    }
    let sock = match &rules.tls {
        None => Link::plain(tcp),
        Some(_) if first_byte(&tcp) == Some(MAGIC[0]) => {
            // A plain sluice sender at a TLS receiver: say so in plain
            // framing, so it fails at once instead of retrying.
            return refuse(Some(&Link::plain(tcp)), "this receiver requires TLS: turn TLS on at the sender");
        }
        Some(cfg) => {
            let conn = match rustls::ServerConnection::new(Arc::clone(cfg)) {
                Ok(c) => rustls::Connection::Server(c),
                Err(e) => return refuse(None, &format!("TLS setup failed: {e}")),
            };
            match Link::tls(tcp, conn) {
                Ok(link) => link,
                Err(e) => return refuse(None, &format!("TLS handshake failed: {}", net::tls::explain(&e, false))),
            }
        }
    };
    let mut first = [0u8; 8 + wire::FRAME_HEADER_LEN];
    if let Err(e) = std::io::Read::read_exact(&mut &sock, &mut first) {
        return refuse(None, &format!("no greeting ({e})"));
    }
    if first[..8] != MAGIC {
        // A TLS ClientHello to a plain receiver: answer in our framing, so
        // the TLS sender fails at once with a protocol error instead of
        // retrying what looks like a cut connection.
        let tls_hello = rules.tls.is_none() && first[0] == 0x16 && first[1] == 0x03;
        let answer = tls_hello.then_some(&sock);
        return refuse(
            answer,
            &format!(
                "not a sluice sender (first bytes {:?}); a TLS sender needs a receiver with TLS on",
                String::from_utf8_lossy(&first[..8])
            ),
        );
    }
    let header: &[u8; wire::FRAME_HEADER_LEN] = first[8..].try_into().expect("8 + FRAME_HEADER_LEN bytes");
    match wire::FrameHeader::decode(header) {
        Ok(h) if h.kind == Kind::Hello && h.flags == 0 && h.len == wire::HELLO_LEN => {}
        Ok(h) => return refuse(Some(&sock), &format!("sent {:?} ({} bytes) instead of a HELLO", h.kind, h.len)),
        Err(e) => return refuse(Some(&sock), &format!("bad HELLO: {e}")),
    }
    let mut body = [0u8; wire::HELLO_LEN as usize];
    if let Err(e) = std::io::Read::read_exact(&mut &sock, &mut body) {
        return refuse(None, &format!("incomplete HELLO ({e})"));
    }
    let h = wire::FrameHeader { kind: Kind::Hello, flags: 0, len: wire::HELLO_LEN };
    let hello = match Frame::decode(h, &body) {
        Ok(Frame::Hello(h)) => h,
        Ok(_) => return None,
        Err(e) => return refuse(Some(&sock), &format!("bad HELLO: {e}")),
    };
    if !rules.token.matches(&hello.token) {
        return refuse(Some(&sock), "invalid session token (use the token this receiver printed)");
    }
    if let Some(reason) = hello_refusal(&hello, rules.sealed, rules.unfilter) {
        return refuse(Some(&sock), &reason);
    }
    Some(Joined { sock, peer, hello, ticket })
}

/// The first byte waiting on `tcp`, without consuming it.
fn first_byte(tcp: &TcpStream) -> Option<u8> {
    let mut b = [0u8; 1];
    matches!(tcp.peek(&mut b), Ok(1)).then_some(b[0])
}

/// Why an authenticated HELLO cannot join, if it cannot.
pub fn hello_refusal(hello: &Hello, sealed: bool, unfilter: bool) -> Option<String> {
    if hello.max_version < wire::MIN_PROTOCOL_VERSION || hello.min_version > wire::PROTOCOL_VERSION {
        return Some(format!(
            "the sender speaks protocol versions {}..={} and this receiver {}..={}: run the same sluice release on both ends",
            hello.min_version,
            hello.max_version,
            wire::MIN_PROTOCOL_VERSION,
            wire::PROTOCOL_VERSION
        ));
    }
    if hello.capabilities & !caps::SUPPORTED != 0 {
        return Some(format!("capabilities {:#x} are not supported by this receiver", hello.capabilities));
    }
    match (sealed, hello.capabilities & caps::SEAL_AES256GCM != 0) {
        (true, false) => return Some("this receiver requires sealed transfers: give the sender the same sealing key".into()),
        (false, true) => return Some("the sender seals its data but this receiver has no sealing key".into()),
        _ => {}
    }
    if hello.capabilities & caps::EXTERNAL_FILTER != 0 && !unfilter {
        return Some(
            "the sender filters its data through an external command and this receiver has no command to undo it (SST: set decompressor in [sst])"
                .into(),
        );
    }
    None
}

/// Manifest, data, end, verification and sync; returns (entries, files, bytes).
fn receive_session(
    streams: &[Joined],
    cfg: &ReceiveConfig,
    method: backend::Method,
    dest: &Path,
    session: Option<&SessionKey>,
    verdict: &Verdict<'_>,
) -> Result<(u64, u64, u64, u64)> {
    for j in streams {
        net::configure(j.sock.tcp(), cfg.idle_timeout).map_err(|e| Error::io("configuring a socket", e))?;
        cfg.sockopt.apply(j.sock.tcp()).map_err(|e| Error::io("applying socket options", e))?;
    }
    let (s0, peer) = (&streams[0].sock, streams[0].peer.as_str());
    // One opener per stream; stream 0's serves the manifest, its stream
    // thread and END in turn.
    let openers: Vec<std::sync::Mutex<Option<Sealer>>> = (0..streams.len())
        .map(|i| std::sync::Mutex::new(session.map(|k| Sealer::new(k.clone(), Direction::ToReceiver, i as u16))))
        .collect();
    let lock = |i: usize| openers[i].lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let (entries, data_bytes) = read_manifest(s0, peer, lock(0).as_mut(), cfg.max_entries)?;
    let streamed = streams[0].hello.capabilities & caps::STREAMED != 0;
    if streamed && !entries.is_empty() {
        return Err(Error::peer(peer, "sent a manifest in a streamed session"));
    }
    let progress = cfg.progress.clone().unwrap_or_default();
    progress.set_total(data_bytes);
    // Compressed, sealed or TLS blocks go through user memory anyway.
    let plain = streams[0].hello.capabilities & !caps::STREAMED == 0 && !streams[0].sock.is_tls();
    let method = if plain { method } else { backend::Method::Copy };
    let entries = Arc::new(entries);
    let sink_opts = SinkOptions { direct_io: cfg.sink.direct_io && method == backend::Method::Copy, ..cfg.sink };
    let sink = Sink::create(dest, Arc::clone(&entries), sink_opts)?;
    let tally = RecvTally::new(&entries);
    let catalog = Catalog::with_limits(&sink, crate::catalog::MAX_OPEN_FILES, cfg.max_entries);
    let files = if streamed { Files::Streamed(&catalog) } else { Files::Manifest { entries: &entries, tally: &tally } };
    let abort = Abort::default();
    let results = pipeline::run_streams(
        streams,
        &abort,
        |i, j| {
            StreamCtx { j, unfilter: cfg.unfilter.clone(), files: &files, sink: &sink, abort: &abort, progress: &progress, method }
                .run(lock(i).as_mut())
        },
        // Tell the sender at once: it stops its streams, and the other
        // threads here see them end. (No shutdown(Read): closing unread
        // sockets would reset them and could destroy this verdict.)
        |e| {
            let _ = verdict.send(false, &e.to_string());
        },
    );
    let per_stream = pipeline::collect(results)?;
    let frames: u64 = per_stream.iter().map(|r| r.0).sum();
    let bytes: u64 = per_stream.iter().map(|r| r.1).sum();
    let leftover0 = per_stream.into_iter().next().map(|r| r.2).unwrap_or_default();
    let (count, expected_bytes) = if streamed { catalog.check_complete()? } else { (entries.len() as u64, data_bytes) };
    // Stream 0's reader may have read END ahead together with STREAM_END.
    match net::read_frame(std::io::Read::chain(&leftover0[..], s0), peer, "before END", lock(0).as_mut())? {
        Frame::End { entries: n, data_bytes: b, frames: f } => {
            if n != count || b != bytes || f != frames || b != expected_bytes {
                return Err(Error::peer(
                    peer,
                    format!(
                        "END totals ({n} entries, {b} bytes, {f} frames) disagree with what arrived ({count} entries, {bytes} bytes of {expected_bytes} announced, {frames} frames)"
                    ),
                ));
            }
        }
        other => return Err(Error::peer(peer, format!("sent {:?} where END was expected", other.kind()))),
    }
    if let Some((id, got, want)) = tally.incomplete().first() {
        return Err(Error::Verify {
            path: entries[*id as usize].display_path(),
            reason: format!("{got} of {want} data bytes arrived and verified"),
        });
    }
    // Syncing may take long on a large datadir: keep the sender's wait
    // for the verdict alive meanwhile.
    verdict.keeping_alive(|| sink.finish())?;
    let files = if streamed { count } else { u64::from(tally.regular_files()) };
    Ok((count, files, bytes, progress.snapshot().wire))
}

/// Where a session's files are described: its manifest, or (streamed) the
/// announcements that arrive with the data.
enum Files<'a> {
    Manifest { entries: &'a [Entry], tally: &'a RecvTally },
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

/// Reads MANIFEST frames up to MANIFEST_END and checks ids, uniqueness and
/// that every entry's parent is a directory of the manifest.
fn read_manifest(sock: &Link, peer: &str, mut seal: Option<&mut Sealer>, max_entries: u64) -> Result<(Vec<Entry>, u64)> {
    let mut entries: Vec<Entry> = Vec::new();
    let bad = |reason: String| Error::peer(peer, format!("sent a bad manifest: {reason}"));
    loop {
        match net::read_frame(sock, peer, "while sending the manifest", seal.as_deref_mut())? {
            Frame::Manifest(batch) => {
                for e in batch {
                    if e.id as usize != entries.len() {
                        return Err(bad(format!("entry id {} out of sequence", e.id)));
                    }
                    if entries.len() as u64 >= max_entries.min(wire::MAX_ENTRIES) {
                        return Err(bad(format!(
                            "more than {max_entries} entries (the receiver's limit; raise it on the receiver for a larger tree)"
                        )));
                    }
                    entries.push(e);
                }
            }
            Frame::ManifestEnd { entries: n, data_bytes } => {
                if n != entries.len() as u64 {
                    return Err(bad(format!("announced {n} entries but listed {}", entries.len())));
                }
                let sum: u64 = entries.iter().map(Entry::data_bytes).sum();
                if sum != data_bytes {
                    return Err(bad(format!("announced {data_bytes} data bytes but the extents add up to {sum}")));
                }
                let mut dirs = std::collections::HashSet::new();
                let mut all = std::collections::HashSet::new();
                for e in &entries {
                    if !all.insert(e.path.as_slice()) {
                        return Err(bad(format!("path {} listed twice", e.display_path())));
                    }
                    if let Some(i) = e.path.iter().rposition(|&b| b == b'/') {
                        if !dirs.contains(&e.path[..i]) {
                            return Err(bad(format!("{} comes before (or without) its parent directory", e.display_path())));
                        }
                    }
                    if e.kind == EntryKind::Dir {
                        dirs.insert(e.path.as_slice());
                    }
                }
                return Ok((entries, data_bytes));
            }
            other => return Err(Error::peer(peer, format!("sent {:?} inside the manifest", other.kind()))),
        }
    }
}

struct StreamCtx<'a> {
    j: &'a Joined,
    unfilter: Option<String>,
    files: &'a Files<'a>,
    sink: &'a Sink,
    abort: &'a Abort,
    progress: &'a Progress,
    method: backend::Method,
}

impl StreamCtx<'_> {
    /// Handles DATA and FILE_DONE frames until STREAM_END; returns (frames,
    /// bytes, bytes read ahead past STREAM_END).
    fn run(&self, mut seal: Option<&mut Sealer>) -> Result<(u64, u64, Vec<u8>)> {
        let (sock, peer) = (&self.j.sock, self.j.peer.as_str());
        let index = self.j.hello.stream_index;
        let mut io = StreamIo::new(self.method, wire::MAX_PAYLOAD).map_err(|e| Error::io("setting up receive I/O", e))?;
        let mut inbound = io.inbound(sock);
        let mut decoder = Decoder::with_external(self.unfilter.clone());
        let granted = self.j.hello.capabilities;
        let mut next_seq = 0u32;
        let (mut frames, mut bytes) = (0u64, 0u64);
        let what = format!("on stream {index} before its end");
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
                let target = self.target(d.file_id, d.offset, len, peer)?;
                if d.seq != next_seq {
                    return Err(Error::peer(
                        peer,
                        format!("stream {index} sent block {} where block {next_seq} was due (replayed or lost)", d.seq),
                    ));
                }
                next_seq = next_seq.wrapping_add(1);
                let flag = h.flags & data_flags::COMPRESSED;
                let needed = match flag {
                    data_flags::LZ4 => caps::COMPRESS_LZ4,
                    data_flags::ZSTD => caps::COMPRESS_ZSTD,
                    data_flags::EXTERNAL => caps::EXTERNAL_FILTER,
                    _ => 0,
                };
                if granted & needed != needed {
                    return Err(Error::peer(peer, "sent a compressed block without negotiating compression"));
                }
                net::check_sealing(peer, h, seal.is_some())?;
                let file = target.dest();
                let received = if flag == 0 && seal.is_none() {
                    io.receive(&mut inbound, &file.file, file.direct.as_ref(), d.offset, len)
                } else {
                    // The associated data: this frame's header and DATA header, re-encoded
                    // (decoding checked that the reserved fields are zero, so it is exact).
                    let aad = d.encode_prefix(wire_len, h.flags);
                    let open = seal.as_deref_mut().map(|s| (s, &aad[..]));
                    io.receive_transformed(
                        &mut inbound,
                        &file.file,
                        file.direct.as_ref(),
                        d.offset,
                        wire_len,
                        len,
                        flag,
                        &mut decoder,
                        open,
                    )
                };
                let sum = received.map_err(|e| match e.kind() {
                    std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::TimedOut => {
                        Error::peer(peer, format!("stream {index} broke while receiving {}: {e}", target.display_path()))
                    }
                    std::io::ErrorKind::InvalidData => {
                        Error::Verify { path: target.display_path(), reason: format!("block at offset {}: {e}", d.offset) }
                    }
                    _ => self.sink.write_error_at(target.path(), d.offset, &e),
                })?;
                if sum != d.checksum {
                    return Err(Error::Verify {
                        path: target.display_path(),
                        reason: format!("checksum mismatch in the block at offset {} ({len} bytes)", d.offset),
                    });
                }
                frames += 1;
                bytes += u64::from(len);
                self.progress.add(u64::from(len));
                self.progress.add_wire(u64::from(wire_len));
                match (&target, self.files) {
                    (Target::Manifest(entry, _), Files::Manifest { tally, .. }) => {
                        self.settle(entry, tally.record_block(d.file_id, d.offset, len, sum))?;
                    }
                    (Target::Streamed(f, _), Files::Streamed(catalog)) => catalog.record_block(f, d.file_id, d.offset, len, sum)?,
                    _ => unreachable!("a target comes from its session's file table"),
                }
                continue;
            }
            match (net::read_body(&mut inbound, peer, h, seal.as_deref_mut())?, self.files) {
                (Frame::FileDone { file_id, digest }, Files::Manifest { entries, tally }) => {
                    let entry = entries
                        .get(file_id as usize)
                        .filter(|e| e.kind == EntryKind::File && !e.extents.is_empty())
                        .ok_or_else(|| Error::peer(peer, format!("sent FILE_DONE for file id {file_id}, which carries no data")))?;
                    self.settle(entry, tally.record_done(file_id, digest))?;
                }
                (Frame::Announce { file_id, mode, path }, Files::Streamed(catalog)) => catalog.announce(file_id, mode, &path)?,
                (Frame::FileEnd { file_id, size, data_bytes, digest }, Files::Streamed(catalog)) => {
                    let f = catalog.get(file_id, peer)?;
                    catalog.record_end(&f, size, data_bytes, digest)?;
                }
                (Frame::Abort { reason }, Files::Streamed(_)) => return Err(Error::SenderFailed(reason)),
                (Frame::StreamEnd { frames: f, bytes: b }, _) => {
                    if (f, b) != (frames, bytes) {
                        return Err(Error::peer(
                            peer,
                            format!("stream {index} ended claiming {f} frames / {b} bytes, but {frames} / {bytes} arrived"),
                        ));
                    }
                    return Ok((frames, bytes, inbound.into_leftover()));
                }
                (other, _) => return Err(Error::peer(peer, format!("sent {:?} in the middle of the data", other.kind()))),
            }
        }
    }

    /// The file a DATA frame of `len` bytes at `offset` writes into, its
    /// range checked.
    fn target(&self, id: u32, offset: u64, len: u32, peer: &str) -> Result<Target<'_>> {
        match self.files {
            Files::Manifest { entries, .. } => {
                let entry = entries.get(id as usize).ok_or_else(|| Error::peer(peer, format!("sent data for unknown file id {id}")))?;
                RecvTally::check_range(entry, offset, len)
                    .map_err(|e| Error::Verify { path: entry.display_path(), reason: e.to_string() })?;
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

    fn settle(&self, entry: &Entry, state: Result<FileProgress, crate::plan::TallyError>) -> Result<()> {
        match state.map_err(|e| Error::Verify { path: entry.display_path(), reason: e.to_string() })? {
            FileProgress::Complete => self.sink.finish_file(entry.id),
            FileProgress::Pending => Ok(()),
        }
    }
}
