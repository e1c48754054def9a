//! The receiver's session: listen, authenticate streams, take the manifest,
//! write blocks where they belong, verify every file, sync, and answer with
//! a verdict.
//!
//! States, in order: `Assemble` (accept connections; each HELLO is checked
//! on its own thread so garbage or slow peers cannot stall the session) →
//! `Manifest` (stream 0) → `Data` (one thread per stream) → `End` →
//! `Verify` → `Sync` → `Verdict`. A connection with bad magic, a wrong token
//! or a foreign session is dropped and logged without touching the session.

use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::pipeline::{self, Abort};
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender as Tx, bounded};

use crate::backend::{self, IoMode, StreamIo};
use crate::catalog::{Announced, Catalog};
use crate::codec::Decoder;
use crate::codec::seal::{Direction, SealKey, Sealer, SessionKey};
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
    /// Time a new connection has to present its HELLO.
    pub handshake_timeout: Duration,
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
}

impl Default for ReceiveConfig {
    fn default() -> Self {
        Self {
            io: IoMode::Auto,
            sink: SinkOptions::default(),
            handshake_timeout: Duration::from_secs(10),
            assemble_timeout: Duration::from_secs(30),
            first_connect_timeout: None,
            idle_timeout: Duration::from_secs(120),
            sockopt: net::SockOpts::default(),
            seal_key: None,
            unfilter: None,
            tls: TlsOptions::default(),
            progress: None,
        }
    }
}

/// A bound listener with its one-time token, ready to receive one session.
#[derive(Debug)]
pub struct Receiver {
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    token: Token,
    cfg: ReceiveConfig,
    cancel: Arc<AtomicBool>,
}

/// Most handshakes examined at once; further connections wait in the backlog.
const MAX_PENDING_HANDSHAKES: usize = 64;

struct Joined {
    sock: Link,
    peer: String,
    hello: Hello,
}

impl Receiver {
    /// Binds `addr` and mints a fresh session token.
    pub fn bind(addr: &str, cfg: ReceiveConfig) -> Result<Self> {
        let targets = net::resolve_with(addr, &cfg.sockopt)?;
        let listener = TcpListener::bind(&targets[..])
            .map_err(|e| Error::Config(format!("cannot listen on {addr}: {e} (is the port in use, or the address not local?)")))?;
        cfg.sockopt.apply(&listener).map_err(|e| Error::io(format!("applying socket options to {addr}"), e))?;
        // Certificate problems surface now, before anyone connects.
        let tls = if cfg.tls.enabled() { Some(cfg.tls.server_config()?) } else { None };
        Ok(Self { listener, tls, token: Token::generate()?, cfg, cancel: Arc::new(AtomicBool::new(false)) })
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
        let started = Instant::now();
        let method = backend::select(self.cfg.io, false)?;
        tracing::info!(backend = %method, dest = %dest.display(), "receiving");
        let streams = self.assemble()?;
        let peer = streams[0].peer.clone();
        let session = self.cfg.seal_key.as_ref().map(|k| k.session(&streams[0].hello.session_salt));
        let verdict = Verdict {
            link: &streams[0].sock,
            peer: &peer,
            sealer: std::sync::Mutex::new(session.as_ref().map(|k| Sealer::new(k.clone(), Direction::ToSender, 0))),
            sent: AtomicBool::new(false),
        };
        let result = receive_session(&streams, &self.cfg, method, dest, session.as_ref(), &verdict);
        match &result {
            Ok(_) => verdict.send(true, "")?,
            Err(e) => {
                tracing::debug!("session failed: {e}");
                let _ = verdict.send(false, &e.to_string());
                linger(&streams);
            }
        }
        let (entries, files, bytes, wire_bytes) = result?;
        Ok(Summary { entries, files, bytes, wire_bytes, elapsed: started.elapsed() })
    }

    /// Accepts connections until every stream of one session has joined.
    fn assemble(&self) -> Result<Vec<Joined>> {
        self.listener.set_nonblocking(true).map_err(|e| Error::io("configuring the listener", e))?;
        let (tx, rx) = bounded::<Joined>(MAX_PENDING_HANDSHAKES);
        let pending = Arc::new(AtomicUsize::new(0));
        let mut slots: Vec<Option<Joined>> = Vec::new();
        let mut salt = None;
        let mut session_caps = 0;
        let mut deadline = None;
        let first_deadline = self.cfg.first_connect_timeout.map(|t| (t, Instant::now() + t));
        loop {
            match self.listener.accept() {
                Ok((sock, addr)) => {
                    if pending.load(Ordering::Acquire) >= MAX_PENDING_HANDSHAKES {
                        tracing::warn!(%addr, "too many pending handshakes; dropping connection");
                    } else {
                        pending.fetch_add(1, Ordering::AcqRel);
                        let (tx, pending, token, t) = (tx.clone(), Arc::clone(&pending), self.token.clone(), self.cfg.handshake_timeout);
                        let sealed = self.cfg.seal_key.is_some();
                        let unfilter = self.cfg.unfilter.is_some();
                        let tls = self.tls.clone();
                        std::thread::spawn(move || {
                            examine(sock, addr, &token, t, (sealed, unfilter), tls, &tx);
                            pending.fetch_sub(1, Ordering::AcqRel);
                        });
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => tracing::warn!("accept failed: {e}"),
            }
            while let Ok(j) = rx.try_recv() {
                let h = &j.hello;
                match salt {
                    None => {
                        salt = Some(h.session_salt);
                        session_caps = h.capabilities;
                        slots.resize_with(usize::from(h.stream_count), || None);
                        deadline = Some(Instant::now() + self.cfg.assemble_timeout);
                        tracing::info!(peer = %j.peer, streams = h.stream_count, "session started");
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
                let welcome = Frame::Welcome { version: wire::PROTOCOL_VERSION.min(h.max_version), capabilities: h.capabilities };
                if let Err(e) = net::write_frame(&j.sock, &j.peer, &welcome, None) {
                    tracing::warn!("{e}");
                    continue;
                }
                slots[i] = Some(j);
            }
            if self.cancel.load(Ordering::Acquire) {
                return Err(Error::Aborted("cancelled while waiting for the sender".into()));
            }
            if !slots.is_empty() && slots.iter().all(Option::is_some) {
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

/// The receiver's verdict on stream 0, sent at most once: early by the
/// first failing stream, or at the end of the session.
struct Verdict<'a> {
    link: &'a Link,
    peer: &'a str,
    sealer: std::sync::Mutex<Option<Sealer>>,
    sent: AtomicBool,
}

impl Verdict<'_> {
    fn send(&self, ok: bool, reason: &str) -> Result<()> {
        if self.sent.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let mut sealer = self.sealer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        net::write_frame(self.link, self.peer, &Frame::Verdict { ok, reason: reason.into() }, sealer.as_mut())
    }
}

fn reject(j: &Joined, reason: &str) {
    tracing::warn!(peer = %j.peer, "refused a connection: {reason}");
    let _ = net::write_frame(&j.sock, &j.peer, &Frame::Reject { reason: reason.into() }, None);
}

/// Checks one new connection's magic, HELLO and token. Failures are logged
/// and the connection dropped; the session never sees them.
fn examine(
    tcp: TcpStream,
    addr: SocketAddr,
    token: &Token,
    timeout: Duration,
    (sealed, unfilter): (bool, bool),
    tls: Option<Arc<rustls::ServerConfig>>,
    tx: &Tx<Joined>,
) {
    let peer = addr.to_string();
    let refuse = |sock: &Link, reason: &str, answer: bool| {
        tracing::warn!(peer = %peer, "refused a connection: {reason}");
        if answer {
            let _ = net::write_frame(sock, &peer, &Frame::Reject { reason: reason.into() }, None);
        }
    };
    if tcp.set_nonblocking(false).and_then(|()| net::configure(&tcp, timeout)).is_err() {
        return;
    }
    let sock = match tls {
        None => Link::plain(tcp),
        Some(cfg) => {
            let conn = match rustls::ServerConnection::new(cfg) {
                Ok(c) => rustls::Connection::Server(c),
                Err(e) => {
                    tracing::warn!(peer = %peer, "refused a connection: TLS setup failed: {e}");
                    return;
                }
            };
            match Link::tls(tcp, conn) {
                Ok(link) => link,
                Err(e) => {
                    tracing::warn!(peer = %peer, "refused a connection: TLS handshake failed: {}", net::tls::explain(&e, false));
                    return;
                }
            }
        }
    };
    let mut magic = [0u8; 8];
    if let Err(e) = std::io::Read::read_exact(&mut &sock, &mut magic) {
        return refuse(&sock, &format!("no greeting ({e})"), false);
    }
    if magic != MAGIC {
        return refuse(&sock, &format!("not a sluice sender (first bytes {:?})", String::from_utf8_lossy(&magic)), false);
    }
    let hello = match net::read_frame(&sock, &peer, "during the handshake", None) {
        Ok(Frame::Hello(h)) => h,
        Ok(f) => return refuse(&sock, &format!("sent {:?} instead of HELLO", f.kind()), true),
        Err(e) => return refuse(&sock, &format!("bad HELLO: {e}"), true),
    };
    if !token.matches(&hello.token) {
        return refuse(&sock, "invalid session token (use the token printed by this `sluice recv`)", true);
    }
    if hello.max_version < wire::MIN_PROTOCOL_VERSION || hello.min_version > wire::PROTOCOL_VERSION {
        return refuse(&sock, &format!("protocol versions {}..={} are not supported", hello.min_version, hello.max_version), true);
    }
    if hello.capabilities & !caps::SUPPORTED != 0 {
        return refuse(&sock, &format!("capabilities {:#x} are not supported by this receiver", hello.capabilities), true);
    }
    match (sealed, hello.capabilities & caps::SEAL_AES256GCM != 0) {
        (true, false) => {
            return refuse(&sock, "this receiver requires sealed transfers: give the sender the same --encrypt-key-file", true);
        }
        (false, true) => return refuse(&sock, "the sender seals its data but this receiver has no --encrypt-key-file", true),
        _ => {}
    }
    if hello.capabilities & (caps::COMPRESS_LZ4 | caps::COMPRESS_ZSTD) != 0 && hello.max_version < wire::since::COMPRESSION {
        return refuse(&sock, "compression needs protocol version 2", true);
    }
    if hello.capabilities & caps::EXTERNAL_FILTER != 0 && !unfilter {
        return refuse(
            &sock,
            "the sender filters its data through an external command and this receiver has no command to undo it (SST: set decompressor in [sst])",
            true,
        );
    }
    if hello.capabilities & caps::STREAMED != 0 && hello.max_version < wire::since::STREAMED {
        return refuse(&sock, "streamed sessions need protocol version 3", true);
    }
    let _ = tx.send(Joined { sock, peer, hello });
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
    let (entries, data_bytes) = read_manifest(s0, peer, lock(0).as_mut())?;
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
    let catalog = Catalog::new(&sink);
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
    sink.finish()?;
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
    Streamed(Arc<Announced>),
}

impl Target<'_> {
    fn dest(&self) -> &crate::sink::DestFile {
        match self {
            Self::Manifest(_, f) => f,
            Self::Streamed(a) => &a.dest,
        }
    }

    fn path(&self) -> &[u8] {
        match self {
            Self::Manifest(e, _) => &e.path,
            Self::Streamed(a) => &a.path,
        }
    }

    fn display_path(&self) -> String {
        String::from_utf8_lossy(self.path()).into_owned()
    }
}

/// Reads MANIFEST frames up to MANIFEST_END and checks ids, uniqueness and
/// that every entry's parent is a directory of the manifest.
fn read_manifest(sock: &Link, peer: &str, mut seal: Option<&mut Sealer>) -> Result<(Vec<Entry>, u64)> {
    let mut entries: Vec<Entry> = Vec::new();
    let bad = |reason: String| Error::peer(peer, format!("sent a bad manifest: {reason}"));
    loop {
        match net::read_frame(sock, peer, "while sending the manifest", seal.as_deref_mut())? {
            Frame::Manifest(batch) => {
                for e in batch {
                    if e.id as usize != entries.len() {
                        return Err(bad(format!("entry id {} out of sequence", e.id)));
                    }
                    if entries.len() as u64 >= wire::MAX_ENTRIES {
                        return Err(bad("too many entries".into()));
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
                    (Target::Streamed(f), Files::Streamed(catalog)) => catalog.record_block(f, d.file_id, d.offset, len, sum)?,
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
                Ok(Target::Streamed(f))
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
