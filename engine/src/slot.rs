//! A receiver stream across its connections: the current link, the frames
//! this end sends back on it (ACK, KEEPALIVE, VERDICT), and, in a resumable
//! session, the connections that take over a broken one.
//!
//! A REJOIN is examined like a HELLO (token first, fixed size), then
//! checked against the running session (salt, stream count, capabilities,
//! a generation above the last, and the proof of the session secret) by the
//! [`spawn_acceptor`] thread, which keeps the listener open while the
//! session runs. The stream's own thread answers it (WELCOME, then ACK
//! with the frames it processed) and reads on; a stream that already ended
//! is answered by the acceptor, so a sender that lost the last ACK (or the
//! verdict) learns it all the same.

use std::net::{Shutdown, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::codec::seal::{Binding, Direction, SealKey, Sealer};
use crate::gate::{Gate, Joined};
use crate::net::{self, Link};
use crate::pipeline::Abort;
use crate::resume::RejoinKey;
use crate::wire::{self, Frame};
use crate::{Error, Result};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What a resumable session needs to accept and answer a REJOIN.
pub(crate) struct Resumption {
    pub key: RejoinKey,
    pub seal: Option<SealKey>,
    pub salt: [u8; 16],
    pub nonce: [u8; 16],
    pub secret: [u8; 16],
    pub token: [u8; 16],
    /// The capabilities granted: every REJOIN repeats them, and the
    /// sealing key is bound to them.
    pub granted: u64,
    pub streams: u16,
    pub window: Duration,
}

impl Resumption {
    /// The sealers (from the sender, to it) of `stream`'s connection
    /// `generation`.
    pub fn sealers(&self, stream: u16, generation: u32) -> (Option<Sealer>, Option<Sealer>) {
        let Some(k) = &self.seal else { return (None, None) };
        let b = Binding {
            sender_salt: &self.salt,
            receiver_nonce: &self.nonce,
            token: &self.token,
            capabilities: self.granted,
            streams: self.streams,
        };
        let key = k.session_at(&b, stream, generation);
        (Some(Sealer::new(key.clone(), Direction::ToReceiver, stream)), Some(Sealer::new(key, Direction::ToSender, stream)))
    }
}

struct Back {
    link: Arc<Link>,
    sealer: Option<Sealer>,
    /// The verdict, once decided (sent again after a late rejoin).
    verdict: Option<(bool, String)>,
    /// A resuming receiver's HAVE list (stream 0), sent again after a
    /// rejoin until the sender's first frame after it shows it arrived.
    have: Vec<Frame>,
    /// The connection `link` is (0 the first; a rejoin's generation).
    generation: u32,
}

#[derive(Default)]
struct Waiting {
    /// A connection that took this stream over, with its generation.
    pending: Option<(Joined, u32)>,
    /// The opener of the current connection once the stream's thread is
    /// done (stream 0 reads the sender's BYE with it).
    opener: Option<Sealer>,
    /// The stream's thread is done: the acceptor answers rejoins itself.
    finished: bool,
}

/// One stream of a receiving session.
pub(crate) struct Slot {
    pub index: u16,
    pub peer: String,
    link: Mutex<Arc<Link>>,
    back: Mutex<Back>,
    generation: AtomicU32,
    processed: AtomicU64,
    waiting: Mutex<Waiting>,
    arrived: Condvar,
}

impl Slot {
    pub fn new(index: u16, link: Link, peer: String, sealer: Option<Sealer>) -> Self {
        let link = Arc::new(link);
        Self {
            index,
            peer,
            back: Mutex::new(Back { link: Arc::clone(&link), sealer, verdict: None, have: Vec::new(), generation: 0 }),
            link: Mutex::new(link),
            generation: AtomicU32::new(0),
            processed: AtomicU64::new(0),
            waiting: Mutex::default(),
            arrived: Condvar::new(),
        }
    }

    pub fn link(&self) -> Arc<Link> {
        Arc::clone(&lock(&self.link))
    }

    /// Writes `frame` back to the sender on the current connection
    /// (failures show on the read side).
    fn send_back(&self, back: &mut Back, frame: &Frame) -> Result<()> {
        net::write_frame(&*back.link, &self.peer, frame, back.sealer.as_mut())
    }

    /// Records that `frames` frames were processed and, when `tell`,
    /// says so to the sender.
    pub fn processed(&self, frames: u64, tell: bool) {
        self.processed.store(frames, Ordering::Release);
        if tell {
            let mut back = lock(&self.back);
            let _ = self.send_back(&mut back, &Frame::Ack { frames });
        }
    }

    /// The connection what is told back goes on (see [`tell_on`](Self::tell_on)).
    pub fn told_on(&self) -> u32 {
        lock(&self.back).generation
    }

    /// Sends `frame` back if the current connection is still `generation`
    /// (a delta receiver's fingerprints, which the sender takes afresh on
    /// each connection); `Ok(false)` when another has taken over.
    pub fn tell_on(&self, generation: u32, frame: &Frame) -> Result<bool> {
        let mut back = lock(&self.back);
        if back.generation != generation {
            return Ok(false);
        }
        self.send_back(&mut back, frame).map(|()| true)
    }

    /// Sends a resuming receiver's HAVE list and keeps it to send again
    /// after a rejoin (failures show on the read side).
    pub fn tell_have(&self, frames: Vec<Frame>) {
        let mut back = lock(&self.back);
        for f in &frames {
            if self.send_back(&mut back, f).is_err() {
                break;
            }
        }
        back.have = frames;
    }

    /// The sender has the HAVE list (it sent a frame that follows it).
    pub fn have_arrived(&self) {
        let mut back = lock(&self.back);
        if !back.have.is_empty() {
            back.have = Vec::new();
        }
    }

    /// Sends the verdict (once: later calls do nothing).
    pub fn verdict(&self, ok: bool, reason: &str) -> Result<()> {
        let mut back = lock(&self.back);
        if back.verdict.is_some() {
            return Ok(());
        }
        back.verdict = Some((ok, reason.to_string()));
        self.send_back(&mut back, &Frame::Verdict { ok, reason: reason.into() })
    }

    /// KEEPALIVE, until the verdict is out.
    pub fn keepalive(&self) {
        let mut back = lock(&self.back);
        if back.verdict.is_none() {
            let _ = self.send_back(&mut back, &Frame::Keepalive);
        }
    }

    pub fn generation(&self) -> u32 {
        self.generation.load(Ordering::Acquire)
    }

    /// Waits for a connection that takes this stream over, until
    /// `deadline` or `abort`.
    pub fn await_rejoin(&self, deadline: Instant, abort: &Abort) -> Option<(Joined, u32)> {
        let mut w = lock(&self.waiting);
        loop {
            if let Some(p) = w.pending.take() {
                return Some(p);
            }
            let now = Instant::now();
            if now >= deadline || abort.is_set() {
                return None;
            }
            let wait = (deadline - now).min(Duration::from_millis(100));
            w = self.arrived.wait_timeout(w, wait).unwrap_or_else(std::sync::PoisonError::into_inner).0;
        }
    }

    /// Takes `j` (generation `generation`) as this stream's connection:
    /// WELCOME, the new sealers, ACK with the frames processed, and the
    /// verdict again if it was decided. Returns the opener of the frames
    /// that will arrive on it.
    pub fn answer(&self, j: Joined, generation: u32, res: &Resumption) -> Result<Option<Sealer>> {
        let welcome = Frame::Welcome {
            version: wire::PROTOCOL_VERSION.min(j.hello.max_version),
            capabilities: res.granted,
            nonce: res.nonce,
            secret: res.secret,
        };
        net::write_frame(&j.sock, &j.peer, &welcome, None)?;
        let (opener, sealer) = res.sealers(self.index, generation);
        let link = Arc::new(j.sock);
        let old = std::mem::replace(&mut *lock(&self.link), Arc::clone(&link));
        old.shutdown(Shutdown::Both);
        let mut back = lock(&self.back);
        back.link = link;
        back.sealer = sealer;
        back.generation = generation;
        let frames = self.processed.load(Ordering::Acquire);
        self.send_back(&mut back, &Frame::Ack { frames })?;
        for f in back.have.clone() {
            self.send_back(&mut back, &f)?;
        }
        if let Some((ok, reason)) = back.verdict.clone() {
            self.send_back(&mut back, &Frame::Verdict { ok, reason })?;
        }
        tracing::info!(
            stream = self.index,
            "stream {} reconnected (connection {generation}); it had processed {frames} frames",
            self.index
        );
        Ok(opener)
    }

    /// This stream's thread is done (`opener`: the one of its current
    /// connection); a waiting rejoin is answered now and later ones by
    /// the acceptor.
    pub fn finish(&self, opener: Option<Sealer>, res: Option<&Resumption>) {
        let pending = {
            let mut w = lock(&self.waiting);
            w.finished = true;
            w.opener = opener;
            w.pending.take()
        };
        if let (Some((j, g)), Some(res)) = (pending, res) {
            self.answer_late(j, g, res);
        }
    }

    fn answer_late(&self, j: Joined, generation: u32, res: &Resumption) {
        match self.answer(j, generation, res) {
            Ok(opener) => lock(&self.waiting).opener = opener,
            Err(e) => tracing::debug!("answering a late reconnection failed: {e}"),
        }
    }

    /// After a successful verdict: reads stream 0 until the sender's BYE
    /// (it has the verdict) or its hang-up. When the connection breaks
    /// first, the verdict may be lost: waits up to `wait` for the sender
    /// to reconnect (the acceptor tells it the verdict again) and reads on.
    pub fn await_bye(&self, wait: Duration) {
        let mut generation = self.generation();
        let mut broken_since: Option<Instant> = None;
        loop {
            if self.generation() != generation {
                generation = self.generation();
                broken_since = None;
            }
            if let Some(t) = broken_since {
                if t.elapsed() > wait {
                    tracing::warn!("the sender did not confirm the verdict and did not reconnect within {wait:?}");
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            let link = self.link();
            let _ = link.tcp().set_read_timeout(Some(Duration::from_secs(10)));
            let mut opener = lock(&self.waiting).opener.take();
            let read = net::read_frame(&*link, &self.peer, "after the verdict", opener.as_mut());
            if self.generation() == generation {
                lock(&self.waiting).opener = opener;
            }
            match read {
                Err(Error::Broken { .. }) if self.generation() == generation => broken_since = Some(Instant::now()),
                Err(Error::Broken { .. }) => {}
                // BYE, or anything else: the sender is past the verdict.
                _ => return,
            }
        }
    }

    /// A validated REJOIN for this stream.
    fn offer(&self, j: Joined, generation: u32, res: &Resumption) {
        let mut w = lock(&self.waiting);
        if w.finished {
            drop(w);
            self.link().shutdown(Shutdown::Both);
            self.answer_late(j, generation, res);
            return;
        }
        if let Some((old, _)) = w.pending.replace((j, generation)) {
            old.sock.shutdown(Shutdown::Both);
        }
        drop(w);
        // The current connection may look alive to this end (its break
        // was seen only by the sender): cut it, so the stream's reader
        // wakes up and takes the new one.
        self.link().shutdown(Shutdown::Both);
        self.arrived.notify_all();
    }

    /// Checks a REJOIN against the session; the reason if it is refused.
    fn check(&self, j: &Joined, generation: u32, proof: &[u8; 32], res: &Resumption) -> std::result::Result<(), &'static str> {
        let h = &j.hello;
        if h.session_salt != res.salt || h.stream_count != res.streams || h.capabilities != res.granted {
            return Err("this reconnection belongs to no running session of this receiver");
        }
        if !res.key.verify(h.stream_index, generation, proof) {
            return Err("this reconnection does not prove it knows the session secret");
        }
        // Claim the generation: each must exceed the last accepted.
        let mut last = self.generation();
        loop {
            if generation <= last {
                return Err("this reconnection is older than one already accepted");
            }
            match self.generation.compare_exchange(last, generation, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(()),
                Err(now) => last = now,
            }
        }
    }
}

/// Keeps accepting on `listener` while a resumable session runs: REJOINs
/// that check out go to their stream; anything else is refused. Stops when
/// `stop` is set.
pub(crate) fn spawn_acceptor(
    listener: TcpListener,
    mut gate: Gate,
    slots: Arc<Vec<Arc<Slot>>>,
    res: Arc<Resumption>,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>> {
    listener.set_nonblocking(true).map_err(|e| Error::io("configuring the listener", e))?;
    std::thread::Builder::new()
        .name("sluice-rejoin".into())
        .spawn(move || {
            while !stop.load(Ordering::Acquire) {
                for j in gate.joined() {
                    // Refusals are logged at a bounded rate: a token holder
                    // cannot flood the log.
                    let refuse = |j: &Joined, reason: &str| {
                        gate.log.refuse(&j.peer, reason);
                        let _ = net::write_frame(&j.sock, &j.peer, &Frame::Reject { reason: reason.into() }, None);
                    };
                    let Some((generation, proof)) = j.rejoin else {
                        refuse(&j, "a session is already running on this receiver");
                        continue;
                    };
                    let Some(slot) = slots.get(usize::from(j.hello.stream_index)) else {
                        refuse(&j, "this reconnection belongs to no running session of this receiver");
                        continue;
                    };
                    match slot.check(&j, generation, &proof, &res) {
                        Ok(()) => slot.offer(j, generation, &res),
                        Err(reason) => refuse(&j, reason),
                    }
                }
                gate.accept(&listener);
                std::thread::sleep(Duration::from_millis(5));
            }
            gate.close();
        })
        .map_err(|e| Error::io("spawning a thread", e))
}
