//! A sender stream's connection: the handshake (HELLO, or REJOIN for a
//! stream that lost its connection), the current link, the thread that
//! reads what the receiver says on it (ACK, KEEPALIVE, VERDICT), and the
//! frames kept until the receiver acknowledges them.
//!
//! What to send again, and how, is the sender's business (`send.rs`); this
//! module only knows connections and counts.

use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender as Tx;

use crate::codec::seal::{Binding, Direction, SealKey, Sealer};
use crate::net::{self, Link, Token};
use crate::pipeline::Abort;
use crate::resume::{Budget, RejoinKey, ReplayLog};
use crate::wire::{self, Frame, Hello, MAGIC, Rejoin, caps};
use crate::{Error, Result};

/// What the receiver said on stream 0.
pub(crate) enum Heard {
    /// KEEPALIVE: still verifying or syncing.
    Alive,
    Verdict(Result<(bool, String)>),
    /// Stream 0's connection broke (resumable sessions): reconnect it.
    Broken,
    /// HAVE: ranges a resumed receiver already holds.
    Have {
        last: bool,
        ranges: Vec<(u32, crate::manifest::Extent)>,
    },
}

/// A frame a stream may have to send again.
#[derive(Debug, Clone)]
pub(crate) enum Replay {
    /// A block of a tree source, read again from its file (and checked
    /// against the checksum it had).
    Block {
        file_id: u32,
        seq: u32,
        offset: u64,
        len: u32,
        checksum: u64,
    },
    /// A block of a streamed source, with its bytes.
    Bytes {
        file_id: u32,
        seq: u32,
        offset: u64,
        data: Arc<Vec<u8>>,
        checksum: u64,
    },
    /// A piece of a streamed source that travels without payload (a
    /// reference to the receiver's old copy, or zeros): sent again as it
    /// was, since the old copy a receiver reads is not changed by it.
    Mark {
        file_id: u32,
        seq: u32,
        offset: u64,
        len: u32,
        checksum: u64,
        flag: u8,
    },
    /// A MANIFEST frame of a tree source: its entries (by index), encoded
    /// again.
    Entries {
        from: u32,
        to: u32,
    },
    Frame(Frame),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[derive(Default)]
struct State {
    log: ReplayLog<Replay>,
    /// The connection generation whose reader saw it break, and why.
    broken: Option<(u32, String)>,
    /// The receiver misbehaved (an impossible ACK, a foreign frame).
    fatal: Option<String>,
}

/// One stream of a session, across its connections.
pub(crate) struct Lane {
    pub index: u16,
    link: Mutex<Arc<Link>>,
    generation: AtomicU32,
    state: Mutex<State>,
    changed: Condvar,
}

impl Lane {
    pub fn new(index: u16, link: Link) -> Self {
        Self { index, link: Mutex::new(Arc::new(link)), generation: AtomicU32::new(0), state: Mutex::default(), changed: Condvar::new() }
    }

    /// The current connection.
    pub fn link(&self) -> Arc<Link> {
        Arc::clone(&lock(&self.link))
    }

    pub fn generation(&self) -> u32 {
        self.generation.load(Ordering::Acquire)
    }

    /// Keeps `frame` until the receiver acknowledges it.
    pub fn record(&self, frame: Replay, held: u64) {
        lock(&self.state).log.push(frame, held);
    }

    /// The frames not yet acknowledged, in order.
    pub fn pending(&self) -> Vec<Replay> {
        lock(&self.state).log.pending().cloned().collect()
    }

    /// Applies the receiver's count after a reconnection; returns the
    /// bytes it freed.
    pub fn resumed(&self, frames: u64) -> std::result::Result<u64, crate::resume::AckError> {
        self.ack(frames)
    }

    /// Applies an acknowledgement; returns the bytes it freed.
    fn ack(&self, frames: u64) -> std::result::Result<u64, crate::resume::AckError> {
        let mut s = lock(&self.state);
        let freed = s.log.ack(frames);
        self.changed.notify_all();
        freed
    }

    /// Records what a reader saw; returns whether a break was recorded
    /// (only one of the current connection counts).
    fn mark(&self, generation: u32, broken: Option<String>, fatal: Option<String>) -> bool {
        let mut s = lock(&self.state);
        let current = broken.is_some() && self.generation() == generation;
        if current {
            s.broken = broken.map(|b| (generation, b));
        }
        if fatal.is_some() {
            s.fatal = fatal;
        }
        self.changed.notify_all();
        current
    }

    /// Declares the current connection (`generation`) broken for `why`
    /// though it has not failed (it stalled); true if it was the current
    /// one and not already broken.
    pub fn stalled(&self, generation: u32, why: String) -> bool {
        self.broken().is_none() && self.mark(generation, Some(why), None)
    }

    /// Why the current connection broke, if its reader saw it break.
    pub fn broken(&self) -> Option<String> {
        let s = lock(&self.state);
        s.broken.as_ref().filter(|(g, _)| *g == self.generation()).map(|(_, why)| why.clone())
    }

    /// Waits until every recorded frame is acknowledged (`Ok(None)`), the
    /// current connection broke (`Ok(Some(why))`), or `wait` passed with no
    /// acknowledgement at all (an error naming the stream).
    pub fn settle(&self, peer: &str, wait: Duration, abort: &Abort) -> Result<Option<String>> {
        let mut s = lock(&self.state);
        let mut last = (s.log.acked(), Instant::now());
        loop {
            if let Some(why) = &s.fatal {
                return Err(Error::peer(peer, why.clone()));
            }
            if s.log.settled() {
                return Ok(None);
            }
            if let Some((g, why)) = &s.broken {
                if *g == self.generation() {
                    return Ok(Some(why.clone()));
                }
            }
            if abort.is_set() {
                return Err(Abort::error());
            }
            if s.log.acked() != last.0 {
                last = (s.log.acked(), Instant::now());
            } else if last.1.elapsed() > wait {
                return Err(Error::broken(peer, format!("stream {} acknowledged nothing for {wait:?} (idle timeout)", self.index)));
            }
            s = self.changed.wait_timeout(s, Duration::from_millis(100)).unwrap_or_else(std::sync::PoisonError::into_inner).0;
        }
    }

    /// Fails with the receiver's misbehaviour, if its reader saw any.
    pub fn check(&self, peer: &str) -> Result<()> {
        match &lock(&self.state).fatal {
            Some(why) => Err(Error::peer(peer, why.clone())),
            None => Ok(()),
        }
    }

    /// Puts a new connection in place of the broken one.
    fn replace(&self, link: Arc<Link>, generation: u32) {
        // The generation first: the old connection's reader, woken by the
        // shutdown below, must not report the new one broken.
        let mut s = lock(&self.state);
        self.generation.store(generation, Ordering::Release);
        s.broken = None;
        drop(s);
        let old = std::mem::replace(&mut *lock(&self.link), link);
        old.shutdown(Shutdown::Both);
    }
}

/// Starts the thread that reads what the receiver sends on `lane`'s
/// connection `generation`: ACKs (resumable sessions) and, on stream 0
/// (`zero`: where its news and a delta's fingerprints go), KEEPALIVEs,
/// HAVE, PRINTS and the verdict. A failed verdict trips `abort` and stops
/// every lane's writes at once.
pub(crate) fn spawn_reader(
    lanes: &Arc<Vec<Arc<Lane>>>,
    index: usize,
    mut opener: Option<Sealer>,
    peer: String,
    zero: Option<(Tx<Heard>, Prints)>,
    resume: Option<Arc<Resumer>>,
    abort: Arc<Abort>,
) -> Result<std::thread::JoinHandle<()>> {
    let (verdict, prints) = zero.map_or((None, None), |(v, p)| (Some(v), Some(p)));
    let lanes = Arc::clone(lanes);
    let lane = Arc::clone(&lanes[index]);
    let (link, generation) = (lane.link(), lane.generation());
    std::thread::Builder::new()
        .name(format!("sluice-ack-{index}"))
        .spawn(move || {
            let _ = link.tcp().set_read_timeout(None);
            // Fingerprints come on this connection until it ends; the
            // receiver sends them again on a new one.
            if let Some(book) = prints.as_ref().and_then(|p| p.get()) {
                book.reopen(generation);
            }
            let _closed = prints.as_ref().map(|p| CloseOnDrop(Arc::clone(p), generation));
            loop {
                let frame = net::read_frame(&*link, &peer, "on its way back", opener.as_mut());
                match frame {
                    Ok(Frame::Ack { frames }) if resume.is_some() => match lane.ack(frames) {
                        Ok(freed) => resume.as_ref().expect("checked").budget.release(freed),
                        Err(e) => {
                            lane.mark(generation, None, Some(format!("stream {index}: {e}")));
                            return;
                        }
                    },
                    Ok(Frame::Keepalive) if verdict.is_some() => {
                        let _ = verdict.as_ref().expect("checked").send(Heard::Alive);
                    }
                    Ok(Frame::Have { last, ranges }) if verdict.is_some() => {
                        let _ = verdict.as_ref().expect("checked").send(Heard::Have { last, ranges });
                    }
                    Ok(Frame::Prints { file_id, last, first_page, hashes }) if prints.is_some() => {
                        let added = match prints.as_ref().expect("checked").get() {
                            Some(book) => book.add(generation, file_id, last, first_page, hashes),
                            None => Err("sent fingerprints before the manifest".into()),
                        };
                        if let Err(why) = added {
                            lane.mark(generation, None, Some(why.clone()));
                            if let Some(v) = &verdict {
                                let _ = v.send(Heard::Verdict(Err(Error::peer(&peer, why))));
                            }
                            return;
                        }
                    }
                    Ok(Frame::Verdict { ok, reason }) if verdict.is_some() => {
                        if !ok && abort.trip() {
                            for l in lanes.iter() {
                                l.link().shutdown(Shutdown::Write);
                            }
                        }
                        let _ = verdict.as_ref().expect("checked").send(Heard::Verdict(Ok((ok, reason))));
                        return;
                    }
                    Ok(other) => {
                        let why = format!("sent {:?} on stream {index}, which this sender does not expect", other.kind());
                        lane.mark(generation, None, Some(why.clone()));
                        if let Some(v) = &verdict {
                            let _ = v.send(Heard::Verdict(Err(Error::peer(&peer, why))));
                        }
                        return;
                    }
                    // A resumable session: the writer (or the verdict wait)
                    // reconnects; a receiver that is gone refuses that.
                    Err(e @ (Error::Broken { .. } | Error::Peer { .. })) if resume.is_some() => {
                        if lane.mark(generation, Some(e.to_string()), None) {
                            tracing::debug!(stream = index, "connection {generation} broke: {e}");
                            if let Some(v) = &verdict {
                                let _ = v.send(Heard::Broken);
                            }
                        }
                        return;
                    }
                    Err(e) => {
                        lane.mark(generation, None, Some(e.to_string()));
                        if let Some(v) = &verdict {
                            let _ = v.send(Heard::Verdict(Err(e)));
                        }
                        return;
                    }
                }
            }
        })
        .map_err(|e| Error::io("spawning a thread", e))
}

/// Where stream 0's reader puts a delta receiver's fingerprints (set once
/// the manifest is known).
pub(crate) type Prints = Arc<std::sync::OnceLock<Arc<crate::delta::Book>>>;

/// Closes the book for its connection when the reader that fills it ends.
struct CloseOnDrop(Prints, u32);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        if let Some(book) = self.0.get() {
            book.close_connection(self.1);
        }
    }
}

/// A new connection, the receiver's count of processed frames, and the
/// connection's sealers (to the receiver, from it).
type Rejoined = (Link, u64, (Option<Sealer>, Option<Sealer>));

/// What a resumable session needs to reconnect a stream.
pub(crate) struct Resumer {
    pub addr: String,
    pub hail: Hail,
    pub nonce: [u8; 16],
    pub key: RejoinKey,
    pub seal: Option<SealKey>,
    pub window: Duration,
    pub budget: Budget,
}

impl Resumer {
    fn binding(&self) -> Binding<'_> {
        Binding {
            sender_salt: &self.hail.salt,
            receiver_nonce: &self.nonce,
            token: self.hail.token.as_bytes(),
            capabilities: self.hail.caps,
            streams: self.hail.streams,
        }
    }

    /// The sealers (to the receiver, from it) of `stream`'s connection
    /// `generation`.
    pub fn sealers(&self, stream: u16, generation: u32) -> (Option<Sealer>, Option<Sealer>) {
        match &self.seal {
            None => (None, None),
            Some(k) => {
                let key = k.session_at(&self.binding(), stream, generation);
                (Some(Sealer::new(key.clone(), Direction::ToReceiver, stream)), Some(Sealer::new(key, Direction::ToSender, stream)))
            }
        }
    }

    /// Gives `lane` a new connection: connects, REJOINs with the next
    /// generation and reads the receiver's count of processed frames.
    /// Returns that count and the sealers of the new connection (the
    /// writer's; the reader's goes to the new reader thread, which the
    /// caller starts). Retries until `deadline`; a receiver that refuses
    /// the connection (its process is gone) or REJECTs ends it at once.
    pub fn reconnect(&self, lane: &Lane, deadline: Instant, why: &str, abort: &Abort) -> Result<(u64, Option<Sealer>, Option<Sealer>)> {
        let mut pause = Duration::from_millis(100);
        let mut attempts = 0u32;
        loop {
            if abort.is_set() {
                return Err(Abort::error());
            }
            attempts += 1;
            let generation = lane.generation() + attempts;
            let left = deadline.saturating_duration_since(Instant::now());
            let failure = match self.try_once(lane.index, generation, left) {
                Ok((link, frames, sealers)) => {
                    lane.replace(Arc::new(link), generation);
                    return Ok((frames, sealers.0, sealers.1));
                }
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Closed(e)) => e.to_string(),
            };
            if Instant::now() + pause >= deadline {
                // (An attempt that cannot connect waits at most 2 s, then
                // the pause: a link that comes back is found within about
                // a second or two.)
                return Err(Error::Broken {
                    peer: self.addr.clone(),
                    reason: format!(
                        "stream {} lost its connection ({why}) and could not reconnect within the resume window of {:?} ({attempts} attempts; the last: {failure})",
                        lane.index, self.window
                    ),
                });
            }
            tracing::debug!(stream = lane.index, "reconnecting failed ({failure}); retrying");
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    fn try_once(&self, index: u16, generation: u32, left: Duration) -> std::result::Result<Rejoined, Attempt> {
        let targets = net::resolve_with(&self.addr, &self.hail.sockopt).map_err(Attempt::Fatal)?;
        let mut last = None;
        let mut tcp = None;
        for t in &targets {
            match TcpStream::connect_timeout(t, left.clamp(Duration::from_millis(100), Duration::from_secs(2))) {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let Some(tcp) = tcp else {
            let e = last.expect("at least one address");
            if e.kind() == std::io::ErrorKind::ConnectionRefused {
                return Err(Attempt::Fatal(Error::peer(
                    &self.addr,
                    format!("refused the reconnection of stream {index}: the receiver is no longer running (it failed or was stopped)"),
                )));
            }
            return Err(Attempt::Closed(e));
        };
        self.hail.sockopt.apply(&tcp).map_err(|e| Attempt::Closed(std::io::Error::other(e)))?;
        net::configure(&tcp, self.hail.idle).map_err(Attempt::Closed)?;
        let peer = net::peer_name(&tcp);
        let proof = self.key.proof(index, generation);
        let (link, welcome) = attempt(tcp, &peer, &self.hail, index, Some((generation, proof)))?;
        if welcome.nonce != self.nonce {
            return Err(Attempt::Fatal(Error::peer(&peer, "answered a reconnection with another session's nonce (a different receiver?)")));
        }
        let (writer, mut opener) = self.sealers(index, generation);
        let frames = match net::read_frame(&link, &peer, "after a reconnection", opener.as_mut()) {
            Ok(Frame::Ack { frames }) => frames,
            Ok(other) => return Err(Attempt::Fatal(Error::peer(&peer, format!("answered a reconnection with {:?}", other.kind())))),
            Err(Error::Broken { reason, .. } | Error::Peer { reason, .. }) => return Err(Attempt::Closed(std::io::Error::other(reason))),
            Err(e) => return Err(Attempt::Fatal(e)),
        };
        Ok((link, frames, (writer, opener)))
    }
}

/// What a stream says in its HELLO or REJOIN, and how it connects.
#[derive(Clone)]
pub(crate) struct Hail {
    pub token: Token,
    pub salt: [u8; 16],
    pub streams: u16,
    /// The capabilities requested.
    pub caps: u64,
    pub connect_timeout: Duration,
    pub idle: Duration,
    pub sockopt: net::SockOpts,
    pub tls: Option<(Arc<rustls::ClientConfig>, rustls::pki_types::ServerName<'static>)>,
}

/// WELCOME's fields.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Welcome {
    /// The protocol version the receiver chose.
    pub version: u16,
    pub nonce: [u8; 16],
    pub secret: [u8; 16],
    pub caps: u64,
}

/// Connects stream `index` and handshakes it. A connection that the
/// receiver closes or resets before WELCOME (its admission evicted us to
/// make room, or it was still busy) is retried until `connect_timeout` has
/// passed; a REJECT is final.
pub(crate) fn handshake(addr: &str, h: &Hail, index: u16) -> Result<(Link, Welcome)> {
    let deadline = Instant::now() + h.connect_timeout;
    let mut pause = Duration::from_millis(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100));
        let tcp = net::connect(addr, left, &h.sockopt)?;
        net::configure(&tcp, h.idle).map_err(|e| Error::io("configuring the socket", e))?;
        let peer = net::peer_name(&tcp);
        match attempt(tcp, &peer, h, index, None) {
            Ok(done) => return Ok(done),
            Err(Attempt::Fatal(e)) => return Err(e),
            Err(Attempt::Closed(e)) if Instant::now() + pause >= deadline => {
                let tls_hint = if h.tls.is_some() { "" } else { ", or a receiver that requires TLS" };
                return Err(Error::Rejected(format!(
                    "{peer} kept closing the connection during the handshake for {:?} ({e}); wrong token{tls_hint}, or its session already started?",
                    h.connect_timeout
                )));
            }
            Err(Attempt::Closed(e)) => {
                tracing::debug!(peer = %peer, stream = index, "handshake cut ({e}); retrying");
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// How one handshake attempt failed.
pub(crate) enum Attempt {
    /// Closed or reset before WELCOME: worth another try.
    Closed(std::io::Error),
    Fatal(Error),
}

fn closed_early(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    matches!(e.kind(), UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe)
        && !e.get_ref().is_some_and(<dyn std::error::Error + Send + Sync>::is::<rustls::Error>)
}

fn attempt(
    tcp: TcpStream,
    peer: &str,
    h: &Hail,
    index: u16,
    rejoin: Option<(u32, [u8; 32])>,
) -> std::result::Result<(Link, Welcome), Attempt> {
    let sock = match &h.tls {
        None => Link::plain(tcp),
        Some((config, name)) => {
            let conn = rustls::ClientConnection::new(Arc::clone(config), name.clone())
                .map_err(|e| Attempt::Fatal(Error::peer(peer, format!("TLS setup failed: {e}"))))?;
            Link::tls(tcp, rustls::Connection::Client(conn)).map_err(|e| {
                if closed_early(&e) || net::is_break(&e) {
                    Attempt::Closed(e)
                } else {
                    Attempt::Fatal(Error::peer(peer, format!("TLS handshake failed: {}", net::tls::explain(&e, true))))
                }
            })?
        }
    };
    let mut buf = MAGIC.to_vec();
    let hello = Hello {
        min_version: wire::MIN_PROTOCOL_VERSION,
        max_version: wire::PROTOCOL_VERSION,
        stream_index: index,
        stream_count: h.streams,
        capabilities: h.caps,
        token: *h.token.as_bytes(),
        session_salt: h.salt,
    };
    match rejoin {
        None => Frame::Hello(hello),
        Some((generation, proof)) => Frame::Rejoin(Rejoin { hello, generation, proof }),
    }
    .encode(&mut buf);
    let retry = |e: std::io::Error, what: &str| {
        if closed_early(&e) || (rejoin.is_some() && net::is_break(&e)) {
            Attempt::Closed(e)
        } else {
            Attempt::Fatal(Error::peer(peer, format!("{what}: {e}")))
        }
    };
    std::io::Write::write_all(&mut &sock, &buf).map_err(|e| retry(e, "sending HELLO failed"))?;
    let mut hd = [0u8; wire::FRAME_HEADER_LEN];
    std::io::Read::read_exact(&mut &sock, &mut hd).map_err(|e| {
        if closed_early(&e) || (rejoin.is_some() && net::is_break(&e)) {
            Attempt::Closed(e)
        } else {
            Attempt::Fatal(net::read_err(peer, "during the handshake", &e))
        }
    })?;
    let fatal = Attempt::Fatal;
    let hd = match wire::FrameHeader::decode(&hd) {
        Ok(hd) => hd,
        Err(_) if !sock.is_tls() => {
            return Err(fatal(Error::Rejected(format!("{peer} answered in a foreign protocol: does it require TLS?"))));
        }
        Err(source) => return Err(fatal(Error::Wire { peer: peer.into(), source })),
    };
    match net::read_body(&sock, peer, hd, None).map_err(fatal)? {
        Frame::Welcome { version, capabilities, nonce, secret } => {
            // A receiver grants everything asked for, but may leave out
            // RESUME (its window is 0), HAVE (it is not resuming) and
            // DELTA (it has no old copy).
            let optional = caps::RESUME | caps::HAVE | caps::DELTA;
            let acceptable = capabilities & !h.caps == 0 && (h.caps & !capabilities) & !optional == 0;
            if !(wire::MIN_PROTOCOL_VERSION..=wire::PROTOCOL_VERSION).contains(&version) || !acceptable {
                return Err(fatal(Error::peer(
                    peer,
                    format!(
                        "chose protocol {version} with capabilities {capabilities:#x}, which this sender did not ask for ({:#x})",
                        h.caps
                    ),
                )));
            }
            Ok((sock, Welcome { version, nonce, secret, caps: capabilities }))
        }
        Frame::Reject { reason } if reason.contains("protocol version") => Err(fatal(Error::Rejected(format!(
            "{reason} (this sender speaks {}..={})",
            wire::MIN_PROTOCOL_VERSION,
            wire::PROTOCOL_VERSION
        )))),
        Frame::Reject { reason } => Err(fatal(Error::Rejected(reason))),
        other => Err(fatal(Error::peer(peer, format!("answered HELLO with {:?}", other.kind())))),
    }
}

/// Doublings of a connection's retransmission timeout, with data
/// outstanding, after which it counts as stalled: with Linux's 200 ms
/// minimum RTO, about 1.4 s of silence on a short path.
const STALL_RTOS: u8 = 3;

/// Watches a resumable session's connections for a stall: data
/// outstanding and the kernel retransmitting the same segment again and
/// again (a link down, a path dropping everything). TCP's own backoff
/// would try again only seconds after the path is back (the retransmission
/// timeout doubles up to 2 min); a stalled connection is given up instead
/// and the stream reconnects — each attempt sends a fresh SYN within a
/// second or two, so the transfer goes on soon after the path returns. A
/// receiver that is slow or stopped reading shows a zero window, not
/// retransmissions, and is left alone.
pub(crate) fn spawn_stall_watch(
    lanes: &Arc<Vec<Arc<Lane>>>,
    closing: &Arc<std::sync::atomic::AtomicBool>,
    abort: &Arc<Abort>,
) -> Result<std::thread::JoinHandle<()>> {
    let (lanes, closing, abort) = (Arc::clone(lanes), Arc::clone(closing), Arc::clone(abort));
    std::thread::Builder::new()
        .name("sluice-stall".into())
        .spawn(move || {
            while !closing.load(std::sync::atomic::Ordering::Acquire) && !abort.is_set() {
                std::thread::sleep(Duration::from_millis(250));
                for lane in lanes.iter() {
                    // The generation first: a connection replaced meanwhile
                    // then fails `stalled`'s check instead of being blamed.
                    let generation = lane.generation();
                    let link = lane.link();
                    let Ok((rtos, unacked)) = crate::backend::sys::tcp_backoff(link.tcp()) else { continue };
                    if rtos < STALL_RTOS || unacked == 0 {
                        continue;
                    }
                    let why = format!(
                        "the connection stalled: {unacked} segments unacknowledged, the retransmission timeout doubled {rtos} times in a row (is the path down?)"
                    );
                    if lane.stalled(generation, why.clone()) {
                        tracing::warn!(stream = lane.index, "stream {}: {why}; giving it up to reconnect", lane.index);
                        link.shutdown(Shutdown::Both);
                    }
                }
            }
        })
        .map_err(|e| Error::io("spawning a thread", e))
}
