//! Who may join a session: the accept loop's admission of strangers and
//! the examination of each new connection (TLS, magic, HELLO or REJOIN,
//! token), before the session sees it.
//!
//! Unauthenticated connections are bounded by [`crate::admission`]: one
//! absolute deadline each, caps per source and in all, the oldest evicted
//! when full; nothing a peer declares is allocated before its token is
//! checked.

use std::collections::HashMap;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver as Rx, Sender as Tx, unbounded};

use crate::admission::{self, Admission, LogDecision, LogLimit, Ticket};
use crate::net::{self, Link, Token};
use crate::wire::{self, Frame, Hello, Kind, MAGIC, caps};

/// A connection whose token checked out.
pub(crate) struct Joined {
    pub sock: Link,
    pub peer: String,
    pub hello: Hello,
    pub ticket: Ticket,
    /// A REJOIN's connection generation and proof.
    pub rejoin: Option<(u32, [u8; 32])>,
}

/// What an examining thread reports to the accept loop.
pub(crate) enum Examined {
    Joined(Box<Joined>),
    Refused(Ticket),
}

/// Refusals of unauthenticated peers, logged at a bounded rate.
#[derive(Debug, Default)]
pub(crate) struct RefusalLog(Mutex<LogLimit>);

impl RefusalLog {
    pub fn refuse(&self, peer: &str, reason: &str) {
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
pub(crate) struct PendingSockets(pub HashMap<Ticket, TcpStream>);

impl PendingSockets {
    pub fn cut(&mut self, t: Ticket) {
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

/// The accept loop's state: who is pending, the caps, and what the
/// examining threads found. One serves a session's assembly, then (in a
/// resumable session) the acceptor of REJOINs.
pub(crate) struct Gate {
    admission: Admission,
    pending: PendingSockets,
    tx: Tx<Examined>,
    rx: Rx<Examined>,
    pub log: Arc<RefusalLog>,
    rules: Arc<Rules>,
}

impl Gate {
    pub fn new(admission: Admission, rules: Rules) -> Self {
        let (tx, rx) = unbounded();
        Self { admission, pending: PendingSockets::default(), tx, rx, log: Arc::default(), rules: Arc::new(rules) }
    }

    /// Connections that passed their token check since the last call; they
    /// leave the pending table before anything can evict them.
    pub fn joined(&mut self) -> Vec<Joined> {
        let mut out = Vec::new();
        while let Ok(x) = self.rx.try_recv() {
            let t = match &x {
                Examined::Refused(t) => *t,
                Examined::Joined(j) => j.ticket,
            };
            self.admission.done(t);
            self.pending.0.remove(&t);
            if let Examined::Joined(j) = x {
                out.push(*j);
            }
        }
        out
    }

    /// Admits what waits on `listener` (non-blocking) within the caps, the
    /// oldest stranger evicted to make room, and cuts expired handshakes.
    pub fn accept(&mut self, listener: &std::net::TcpListener) {
        loop {
            match listener.accept() {
                Ok((sock, addr)) => admit(sock, addr, &mut self.admission, &mut self.pending, &self.rules, &self.log, &self.tx),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    self.log.refuse("listener", &format!("accept failed: {e}"));
                    break;
                }
            }
        }
        for t in self.admission.expired(Instant::now()) {
            self.pending.cut(t);
        }
    }

    /// Cuts every pending stranger.
    pub fn close(&mut self) {
        for t in self.admission.drain() {
            self.pending.cut(t);
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
pub(crate) struct Rules {
    pub token: Token,
    pub sealed: bool,
    pub unfilter: bool,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub deadline: Duration,
}

pub(crate) fn reject(j: &Joined, reason: &str) {
    tracing::warn!(peer = %j.peer, "refused a connection: {reason}");
    let _ = net::write_frame(&j.sock, &j.peer, &Frame::Reject { reason: reason.into() }, None);
}

/// Checks one new connection's magic, HELLO (or REJOIN) and token; returns it when it
/// may join. Refusals are logged (rate-limited) and the connection dropped;
/// the session never sees them. Before the token is checked nothing is
/// allocated from a length the peer declared: the only frame read is a
/// HELLO of exactly [`wire::HELLO_LEN`] bytes (or a REJOIN of exactly
/// [`wire::REJOIN_LEN`]). The accept loop cuts the
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
    // A HELLO, or a REJOIN of a running session: both fixed sizes, read
    // into a fixed buffer.
    let h = match wire::FrameHeader::decode(header) {
        Ok(h) if h.flags == 0 && (h.kind, h.len) == (Kind::Hello, wire::HELLO_LEN) => h,
        Ok(h) if h.flags == 0 && (h.kind, h.len) == (Kind::Rejoin, wire::REJOIN_LEN) => h,
        Ok(h) => return refuse(Some(&sock), &format!("sent {:?} ({} bytes) instead of a HELLO", h.kind, h.len)),
        Err(e) => return refuse(Some(&sock), &format!("bad HELLO: {e}")),
    };
    let mut body = [0u8; wire::REJOIN_LEN as usize];
    let body = &mut body[..h.len as usize];
    if let Err(e) = std::io::Read::read_exact(&mut &sock, body) {
        return refuse(None, &format!("incomplete HELLO ({e})"));
    }
    let (hello, rejoin) = match Frame::decode(h, body) {
        Ok(Frame::Hello(h)) => (h, None),
        Ok(Frame::Rejoin(r)) => (r.hello, Some((r.generation, r.proof))),
        Ok(_) => return None,
        Err(e) => return refuse(Some(&sock), &format!("bad HELLO: {e}")),
    };
    if !rules.token.matches(&hello.token) {
        return refuse(Some(&sock), "invalid session token (use the token this receiver printed)");
    }
    if let Some(reason) = hello_refusal(&hello, rules.sealed, rules.unfilter) {
        return refuse(Some(&sock), &reason);
    }
    Some(Joined { sock, peer, hello, ticket, rejoin })
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
