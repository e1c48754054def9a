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

use crossbeam_channel::{Receiver as Rx, bounded};

use crate::backend::{self, IoMode, StreamIo};
use crate::codec::seal::{Direction, SealKey, Sealer, TAG_LEN};
use crate::codec::{Compression, Encoder};
use crate::net::tls::TlsOptions;
use crate::net::{self, Link, Token};
use crate::pipeline::{self, Abort};
use crate::plan::{Block, Schedule, SendTally};
use crate::progress::Progress;
use crate::source::{self, SourceTree};
use crate::throttle::Throttle;
use crate::wire::{self, DataHeader, Frame, Hello, MAGIC};
use crate::{Error, Result, Summary};

/// How to send.
#[derive(Debug, Clone)]
pub struct SendConfig {
    /// Parallel TCP connections.
    pub streams: u16,
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
    /// TLS (the sender is the client).
    pub tls: TlsOptions,
    /// Shared byte counters, if the caller wants to report progress.
    pub progress: Option<Arc<Progress>>,
}

/// Default stream count: the number of CPUs, at least 2.
pub fn default_streams() -> u16 {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, usize::from(wire::MAX_STREAMS)) as u16)
}

impl Default for SendConfig {
    fn default() -> Self {
        Self {
            streams: default_streams(),
            io: IoMode::Auto,
            block_size: crate::DEFAULT_BLOCK_SIZE,
            connect_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            sockopt: net::SockOpts::default(),
            compress: Compression::None,
            rate_limit: None,
            seal_key: None,
            tls: TlsOptions::default(),
            progress: None,
        }
    }
}

/// Sends `roots` to the receiver at `addr`, authenticating with `token`.
/// Returns only after the receiver has verified and synced everything.
pub fn send(addr: &str, token: &Token, roots: &[PathBuf], cfg: &SendConfig) -> Result<Summary> {
    let started = Instant::now();
    if cfg.streams == 0 || cfg.streams > wire::MAX_STREAMS {
        return Err(Error::Config(format!("--streams must be between 1 and {}", wire::MAX_STREAMS)));
    }
    if cfg.block_size < 4096 || cfg.block_size > wire::MAX_PAYLOAD {
        return Err(Error::Config(format!("--block-size must be between 4 KiB and {} MiB", wire::MAX_PAYLOAD >> 20)));
    }
    if cfg.rate_limit == Some(0) {
        return Err(Error::Config("--rate-limit must be positive".into()));
    }
    let mut method = backend::select(cfg.io, true)?;
    if (cfg.compress != Compression::None || cfg.seal_key.is_some() || cfg.tls.enabled()) && method != backend::Method::Copy {
        tracing::info!("compression, sealing or TLS transforms every block; using the copy path instead of {method}");
        method = backend::Method::Copy;
    }
    tracing::info!(backend = %method, streams = cfg.streams, compress = %cfg.compress, sealed = cfg.seal_key.is_some(), "sending");
    let tree = source::scan(roots)?;
    let progress = cfg.progress.clone().unwrap_or_default();
    progress.set_total(tree.data_bytes());
    let throttle = cfg.rate_limit.map(Throttle::new);

    // Certificate problems surface before any connection is made.
    let tls = if cfg.tls.enabled() { Some((cfg.tls.client_config()?, cfg.tls.server_name(addr)?)) } else { None };
    let salt: [u8; 16] = net::random_bytes().map_err(|e| Error::io("reading /dev/urandom", e))?;
    let mut socks = Vec::with_capacity(usize::from(cfg.streams));
    for i in 0..cfg.streams {
        socks.push(Arc::new(handshake(addr, token, salt, i, cfg, tls.as_ref())?));
    }
    let peer = net::peer_name(socks[0].tcp());
    // One sealer per stream and direction; stream 0's serves the manifest,
    // its stream thread and END in turn.
    let session = cfg.seal_key.as_ref().map(|k| k.session(&salt));
    let sealers: Vec<std::sync::Mutex<Option<Sealer>>> =
        (0..cfg.streams).map(|i| std::sync::Mutex::new(session.clone().map(|k| Sealer::new(k, Direction::ToReceiver, i)))).collect();
    let mut verdict_opener = session.map(|k| Sealer::new(k, Direction::ToSender, 0));
    send_manifest(&socks[0], &peer, &tree, lock(&sealers[0]).as_mut())?;

    // The receiver speaks on stream 0 only: its verdict, possibly early.
    // A failed verdict stops the streams at once, instead of letting them
    // send the rest into a receiver that has given up.
    let abort = Arc::new(Abort::default());
    let (verdict_tx, verdict_rx) = bounded(1);
    let (control, all) = (Arc::clone(&socks[0]), socks.clone());
    let (control_peer, stop) = (peer.clone(), Arc::clone(&abort));
    let listener = std::thread::Builder::new()
        .name("sluice-verdict".into())
        .spawn(move || {
            let _ = control.tcp().set_read_timeout(None);
            let v = match net::read_frame(&*control, &control_peer, "before its verdict", verdict_opener.as_mut()) {
                Ok(Frame::Verdict { ok, reason }) => Ok((ok, reason)),
                Ok(other) => Err(Error::peer(&control_peer, format!("sent {:?} instead of a verdict", other.kind()))),
                Err(e) => Err(e),
            };
            if matches!(v, Ok((false, _))) && stop.trip() {
                for s in &all {
                    s.shutdown(Shutdown::Write);
                }
            }
            let _ = verdict_tx.send(v);
        })
        .map_err(|e| Error::io("spawning a thread", e))?;

    let schedule = Schedule::new(&tree.entries, cfg.block_size);
    let tally = SendTally::new(&tree.entries, cfg.block_size);
    let results = pipeline::run_streams(
        &socks,
        &abort,
        |index, sock| {
            let ctx = StreamCtx {
                sock: sock.as_ref(),
                peer: &peer,
                tree: &tree,
                schedule: &schedule,
                tally: &tally,
                abort: &abort,
                cfg,
                index,
                throttle: throttle.as_ref(),
                progress: &progress,
            };
            ctx.run(method, lock(&sealers[index]).as_mut())
        },
        // Wake writers blocked on a slow receiver; keep the read side open
        // so the receiver's verdict can still arrive.
        |_| {
            for s in &socks {
                s.shutdown(Shutdown::Write);
            }
        },
    );

    let outcome = finish(&socks, &peer, &tree, results, &verdict_rx, lock(&sealers[0]).as_mut());
    if outcome.is_err() {
        for s in &socks {
            s.shutdown(Shutdown::Both);
        }
    }
    let _ = listener.join();
    let bytes = outcome?;
    let files = tree.entries.iter().filter(|e| e.kind == crate::plan::EntryKind::File).count() as u64;
    let wire_bytes = progress.snapshot().wire;
    Ok(Summary { entries: tree.entries.len() as u64, files, bytes, wire_bytes, elapsed: started.elapsed() })
}

/// The capability bits this configuration needs from the receiver.
fn capabilities(cfg: &SendConfig) -> u64 {
    cfg.compress.capabilities() | if cfg.seal_key.is_some() { wire::caps::SEAL_AES256GCM } else { 0 }
}

/// Locks a stream's sealer slot (a poisoned lock only means a stream thread
/// panicked, which fails the session anyway).
fn lock(m: &std::sync::Mutex<Option<Sealer>>) -> std::sync::MutexGuard<'_, Option<Sealer>> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn handshake(
    addr: &str,
    token: &Token,
    salt: [u8; 16],
    index: u16,
    cfg: &SendConfig,
    tls: Option<&(Arc<rustls::ClientConfig>, rustls::pki_types::ServerName<'static>)>,
) -> Result<Link> {
    let tcp = net::connect(addr, cfg.connect_timeout, &cfg.sockopt)?;
    net::configure(&tcp, cfg.idle_timeout).map_err(|e| Error::io("configuring the socket", e))?;
    let peer = net::peer_name(&tcp);
    let sock = match tls {
        None => Link::plain(tcp),
        Some((config, name)) => {
            let conn = rustls::ClientConnection::new(Arc::clone(config), name.clone())
                .map_err(|e| Error::peer(&peer, format!("TLS setup failed: {e}")))?;
            Link::tls(tcp, rustls::Connection::Client(conn))
                .map_err(|e| Error::peer(&peer, format!("TLS handshake failed: {}", net::tls::explain(&e, true))))?
        }
    };
    let mut buf = MAGIC.to_vec();
    Frame::Hello(Hello {
        min_version: wire::MIN_PROTOCOL_VERSION,
        max_version: wire::PROTOCOL_VERSION,
        stream_index: index,
        stream_count: cfg.streams,
        capabilities: capabilities(cfg),
        token: *token.as_bytes(),
        session_salt: salt,
    })
    .encode(&mut buf);
    std::io::Write::write_all(&mut &sock, &buf).map_err(|e| Error::peer(&peer, format!("sending HELLO failed: {e}")))?;
    match net::read_frame(&sock, &peer, "during the handshake", None) {
        Ok(Frame::Welcome { version, capabilities }) => {
            let wanted = self::capabilities(cfg);
            if !(wire::MIN_PROTOCOL_VERSION..=wire::PROTOCOL_VERSION).contains(&version) || capabilities != wanted {
                return Err(Error::peer(
                    &peer,
                    format!("chose protocol {version} with capabilities {capabilities:#x}, which this build did not offer"),
                ));
            }
            Ok(sock)
        }
        Ok(Frame::Reject { reason }) => Err(Error::Rejected(reason)),
        Ok(other) => Err(Error::peer(&peer, format!("answered HELLO with {:?}", other.kind()))),
        Err(Error::Peer { .. }) if !sock.is_tls() => Err(Error::Rejected(format!(
            "{peer} closed the connection during the handshake (wrong token, a receiver that requires TLS (--tls-mode), or its session already started?)"
        ))),
        Err(Error::Wire { .. }) if !sock.is_tls() => {
            Err(Error::Rejected(format!("{peer} answered in a foreign protocol: does it require TLS (--tls-mode)?")))
        }
        // Over TLS the error already says what the receiver objected to.
        Err(e) if sock.is_tls() => Err(e),
        Err(e) => Err(e),
    }
}

fn send_manifest(sock: &Link, peer: &str, tree: &SourceTree, mut seal: Option<&mut Sealer>) -> Result<()> {
    let budget = wire::MAX_MANIFEST_BODY as usize / 2;
    let mut batch = Vec::new();
    let mut size = 0;
    let mut buf = Vec::with_capacity(budget + 1024);
    for e in &tree.entries {
        let n = wire::entry_len(e);
        if size + n > budget && !batch.is_empty() {
            net::encode_frame(&Frame::Manifest(std::mem::take(&mut batch)), &mut buf, seal.as_deref_mut());
            size = 0;
        }
        batch.push(e.clone());
        size += n;
        if buf.len() > budget {
            std::io::Write::write_all(&mut &*sock, &buf).map_err(|err| Error::peer(peer, format!("sending the manifest failed: {err}")))?;
            buf.clear();
        }
    }
    if !batch.is_empty() {
        net::encode_frame(&Frame::Manifest(batch), &mut buf, seal.as_deref_mut());
    }
    net::encode_frame(&Frame::ManifestEnd { entries: tree.entries.len() as u64, data_bytes: tree.data_bytes() }, &mut buf, seal);
    std::io::Write::write_all(&mut &*sock, &buf).map_err(|err| Error::peer(peer, format!("sending the manifest failed: {err}")))
}

struct StreamCtx<'a> {
    sock: &'a Link,
    peer: &'a str,
    tree: &'a SourceTree,
    schedule: &'a Schedule,
    tally: &'a SendTally,
    abort: &'a Abort,
    cfg: &'a SendConfig,
    index: usize,
    throttle: Option<&'a Throttle>,
    progress: &'a Progress,
}

impl StreamCtx<'_> {
    /// Sends blocks until the queue is empty; returns (frames, bytes).
    fn run(&self, method: backend::Method, mut seal: Option<&mut Sealer>) -> Result<(u64, u64)> {
        let mut io = StreamIo::new(method, self.cfg.block_size).map_err(|e| Error::io(format!("setting up {method} I/O"), e))?;
        let mut encoder = match self.cfg.compress {
            Compression::None => None,
            mode => Some(Encoder::new(mode, self.cfg.block_size)?),
        };
        let mut open: Option<(u32, File)> = None;
        let (mut frames, mut bytes, mut seq) = (0u64, 0u64, 0u32);
        while let Some(b) = self.schedule.next_block() {
            if self.abort.is_set() {
                return Err(Abort::error());
            }
            if open.as_ref().is_none_or(|(id, _)| *id != b.file_id) {
                let path = &self.tree.paths[b.file_id as usize];
                let f = File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
                open = Some((b.file_id, f));
            }
            let file = &open.as_ref().expect("opened above").1;
            let wire = self.send_block(&mut io, encoder.as_mut(), seal.as_deref_mut(), file, &b, seq)?;
            seq = seq.checked_add(1).ok_or_else(|| Error::Config("more than 2^32 blocks on one stream; raise --block-size".into()))?;
            frames += 1;
            bytes += u64::from(b.len);
            self.progress.add(u64::from(b.len));
            self.progress.add_wire(wire);
        }
        net::write_frame(self.sock, self.peer, &Frame::StreamEnd { frames, bytes }, seal)?;
        Ok((frames, bytes))
    }

    /// Sends one block (compressed when that pays, sealed when the session
    /// seals); returns its wire size.
    fn send_block(
        &self,
        io: &mut StreamIo,
        mut encoder: Option<&mut Encoder>,
        mut seal: Option<&mut Sealer>,
        file: &File,
        b: &Block,
        seq: u32,
    ) -> Result<u64> {
        let path = || self.tree.paths[b.file_id as usize].display().to_string();
        let checksum = io.load(file, b.offset, b.len).map_err(|e| Error::io(format!("reading {}", path()), e))?;
        let digest = self.tally.record(b, checksum);
        let header = DataHeader { file_id: b.file_id, seq, offset: b.offset, raw_len: b.len, checksum };
        let send_err = |e: std::io::Error| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Error::io(format!("sending {}", path()), e)
            } else if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) {
                Error::peer(
                    self.peer,
                    format!(
                        "stream {} accepted nothing for {:?} while sending {} (idle timeout)",
                        self.index,
                        self.cfg.idle_timeout,
                        path()
                    ),
                )
            } else {
                Error::peer(self.peer, format!("stream {} failed while sending {}: {e}", self.index, path()))
            }
        };
        let throttle = |bytes: usize| {
            if let Some(t) = self.throttle {
                t.acquire(bytes as u64);
            }
        };
        // The FILE_DONE of a file's last block rides in the same write; it is
        // encoded (and sealed) after the DATA frame, in stream order.
        let trailer = |seal: Option<&mut Sealer>| {
            let mut t = Vec::new();
            if let Some(digest) = digest {
                net::encode_frame(&Frame::FileDone { file_id: b.file_id, digest }, &mut t, seal);
            }
            t
        };
        let encoded = encoder.as_mut().and_then(|e| e.encode(io.loaded(b.len)));
        let (wire, started) = if encoded.is_none() && seal.is_none() && !self.sock.is_tls() {
            // Untransformed: the backend may send straight from the file.
            let started = Instant::now();
            throttle(b.len as usize);
            let prefix = header.encode_prefix(b.len, 0);
            io.transmit(self.sock.tcp(), &prefix, file, b.offset, b.len, &trailer(None)).map_err(send_err)?;
            (b.len as usize, started)
        } else {
            let (flags, payload) = match encoded {
                Some((flag, packed)) => (flag, packed),
                None => (0, io.loaded_mut(b.len)),
            };
            let tag_len = if seal.is_some() { TAG_LEN } else { 0 };
            let sealed = if seal.is_some() { wire::SEALED } else { 0 };
            let prefix = header.encode_prefix((payload.len() + tag_len) as u32, flags | sealed);
            let tag = seal.as_deref_mut().map(|s| s.seal(&prefix, payload));
            let trailer = trailer(seal);
            let started = Instant::now();
            throttle(payload.len() + tag_len);
            let tag: &[u8] = tag.as_ref().map_or(&[], |t| &t[..]);
            backend::write_parts(self.sock, &[&prefix, payload, tag, &trailer]).map_err(send_err)?;
            (payload.len() + tag_len, started)
        };
        if let Some(e) = encoder {
            // Link speed for `--compress auto` (throttle waits included: a
            // rate-limited link is a slow link).
            e.record_send(wire, started.elapsed());
        }
        Ok(wire as u64)
    }
}

/// After the stream threads: END on stream 0, then the verdict.
fn finish(
    socks: &[Arc<Link>],
    peer: &str,
    tree: &SourceTree,
    results: Vec<Result<(u64, u64)>>,
    verdict: &Rx<Result<(bool, String)>>,
    seal: Option<&mut Sealer>,
) -> Result<u64> {
    let per_stream = match pipeline::collect(results) {
        Ok(v) => v,
        // If the receiver said why it hung up, that is the better message.
        Err(e) => {
            return Err(match verdict.recv_timeout(Duration::from_secs(2)) {
                Ok(Ok((false, reason))) => Error::ReceiverFailed(reason),
                _ => e,
            });
        }
    };
    let (frames, bytes) = per_stream.iter().fold((0, 0), |(f, b), (sf, sb)| (f + sf, b + sb));
    net::write_frame(&*socks[0], peer, &Frame::End { entries: tree.entries.len() as u64, data_bytes: bytes, frames }, seal)?;
    match verdict.recv() {
        Ok(Ok((true, _))) => Ok(bytes),
        Ok(Ok((false, reason))) => Err(Error::ReceiverFailed(reason)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Error::peer(peer, "closed the connection without a verdict")),
    }
}
