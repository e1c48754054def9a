//! Resumable streams, without I/O: who may take over a broken stream, what a
//! sender keeps until the receiver acknowledges it, and the memory that
//! costs.
//!
//! A stream is an ordered sequence of frames; TCP connections only carry
//! it. The receiver counts the frames it has *processed* (written and
//! verified, or applied) on each stream and says so in ACK frames; a
//! connection that breaks is replaced by a new one (REJOIN), the receiver
//! answers with its count, and the sender re-sends exactly the frames after
//! it. Nothing is processed twice and nothing is skipped, so per-stream
//! sequence numbers, file digests and totals stay exact across any number
//! of breaks.
//!
//! * [`RejoinKey`]: the secret a REJOIN proves it knows (HMAC-SHA256 over
//!   the stream and its connection generation). It is derived from the
//!   session secret in WELCOME and, in a sealed session, from the sealing
//!   key, so a party holding only the token cannot take a stream over.
//! * [`ReplayLog`]: one stream's frames sent and not yet acknowledged.
//! * [`Budget`]: the bytes that streamed sources keep for replay, shared by
//!   all streams, with back-pressure when full.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::hkdf::{HKDF_SHA256, Salt};
use aws_lc_rs::hmac;

/// Default resume window: how long a broken stream waits for its
/// connection to come back.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(600);

/// Default bytes of streamed data kept for replay, all streams together:
/// with everything else a sender holds, a full buffer still keeps its peak
/// RSS under 256 MiB.
pub const DEFAULT_REPLAY_BUDGET: u64 = 128 << 20;

/// The receiver acknowledges at least every this many frames...
pub const ACK_FRAMES: u64 = 16;
/// ...or this many data bytes...
pub const ACK_BYTES: u64 = 4 << 20;
/// ...or when this much time passed since the last acknowledgement.
pub const ACK_INTERVAL: Duration = Duration::from_millis(50);

/// The key a reconnecting stream proves it holds.
#[derive(Clone)]
pub struct RejoinKey(hmac::Key);

impl std::fmt::Debug for RejoinKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RejoinKey(<redacted>)")
    }
}

impl RejoinKey {
    /// Derives the key from WELCOME's `secret`, the session's randomness
    /// (`salt` ‖ `nonce`), the token, and the sealing key when the session
    /// seals (so in a sealed session without TLS, an eavesdropper who read
    /// the secret still cannot rejoin).
    pub fn derive(secret: &[u8; 16], salt: &[u8; 16], nonce: &[u8; 16], token: &[u8; 16], seal_key: Option<&[u8; 32]>) -> Self {
        let mut s = [0u8; 32];
        s[..16].copy_from_slice(salt);
        s[16..].copy_from_slice(nonce);
        let mut ikm = secret.to_vec();
        if let Some(k) = seal_key {
            ikm.extend_from_slice(k);
        }
        let mut k = [0u8; 32];
        Salt::new(HKDF_SHA256, &s)
            .extract(&ikm)
            .expand(&[b"sluice rejoin v5", token], HKDF_SHA256)
            .and_then(|okm| okm.fill(&mut k))
            .expect("HKDF-SHA256 yields 32 bytes");
        Self(hmac::Key::new(hmac::HMAC_SHA256, &k))
    }

    fn message(stream: u16, generation: u32) -> [u8; 6] {
        let mut m = [0u8; 6];
        m[..2].copy_from_slice(&stream.to_le_bytes());
        m[2..].copy_from_slice(&generation.to_le_bytes());
        m
    }

    /// The proof a REJOIN for `stream`'s connection `generation` carries.
    pub fn proof(&self, stream: u16, generation: u32) -> [u8; 32] {
        let tag = hmac::sign(&self.0, &Self::message(stream, generation));
        let mut p = [0u8; 32];
        p.copy_from_slice(tag.as_ref());
        p
    }

    /// Checks a proof in constant time.
    pub fn verify(&self, stream: u16, generation: u32, proof: &[u8; 32]) -> bool {
        hmac::verify(&self.0, &Self::message(stream, generation), proof).is_ok()
    }
}

/// Why an acknowledgement cannot be right.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    #[error("acknowledged {got} frames, fewer than the {acked} it acknowledged before")]
    Backwards { got: u64, acked: u64 },
    #[error("acknowledged {got} frames, more than the {sent} sent")]
    Ahead { got: u64, sent: u64 },
}

/// One stream's frames that were sent (or are about to be) and not yet
/// acknowledged, oldest first. `T` describes a frame well enough to send it
/// again (a file block by position, a streamed block with its bytes, a
/// control frame); `held` is the memory it keeps, for the [`Budget`].
#[derive(Debug)]
pub struct ReplayLog<T> {
    entries: VecDeque<(T, u64)>,
    /// Frames acknowledged: the index of `entries[0]`.
    acked: u64,
    held: u64,
}

impl<T> Default for ReplayLog<T> {
    fn default() -> Self {
        Self { entries: VecDeque::new(), acked: 0, held: 0 }
    }
}

impl<T> ReplayLog<T> {
    /// Records the next frame; returns its index on the stream.
    pub fn push(&mut self, entry: T, held: u64) -> u64 {
        self.entries.push_back((entry, held));
        self.held += held;
        self.sent() - 1
    }

    /// Frames recorded so far.
    pub fn sent(&self) -> u64 {
        self.acked + self.entries.len() as u64
    }

    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Bytes the unacknowledged entries hold.
    pub fn held(&self) -> u64 {
        self.held
    }

    /// Whether everything recorded was acknowledged.
    pub fn settled(&self) -> bool {
        self.entries.is_empty()
    }

    /// The receiver has processed `frames` frames: drops those entries and
    /// returns the bytes they held. A count below an earlier one or beyond
    /// what was sent is a peer error.
    pub fn ack(&mut self, frames: u64) -> Result<u64, AckError> {
        if frames < self.acked {
            return Err(AckError::Backwards { got: frames, acked: self.acked });
        }
        if frames > self.sent() {
            return Err(AckError::Ahead { got: frames, sent: self.sent() });
        }
        let mut freed = 0;
        while self.acked < frames {
            let (_, h) = self.entries.pop_front().expect("frames <= sent");
            freed += h;
            self.acked += 1;
        }
        self.held -= freed;
        Ok(freed)
    }

    /// The entries to send again after the receiver said it processed
    /// `frames` (call [`ack`](Self::ack) first), in order.
    pub fn pending(&self) -> impl Iterator<Item = &T> {
        self.entries.iter().map(|(e, _)| e)
    }
}

/// Bytes of streamed data kept for replay by all streams of a session.
#[derive(Debug)]
pub struct Budget {
    limit: u64,
    used: Mutex<u64>,
    freed: Condvar,
}

impl Budget {
    pub fn new(limit: u64) -> Self {
        Self { limit, used: Mutex::new(0), freed: Condvar::new() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, u64> {
        self.used.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes `bytes`, waiting while the budget is full (a block larger than
    /// the whole budget is admitted when nothing else is held, so a stream
    /// always progresses). Gives up at `until` or when `stop` says so;
    /// returns whether it took the bytes.
    pub fn acquire(&self, bytes: u64, until: Instant, stop: &dyn Fn() -> bool) -> bool {
        let mut used = self.lock();
        loop {
            if *used == 0 || *used + bytes <= self.limit {
                *used += bytes;
                return true;
            }
            let now = Instant::now();
            if now >= until || stop() {
                return false;
            }
            let wait = (until - now).min(Duration::from_millis(100));
            used = self.freed.wait_timeout(used, wait).unwrap_or_else(std::sync::PoisonError::into_inner).0;
        }
    }

    pub fn release(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let mut used = self.lock();
        *used = used.saturating_sub(bytes);
        self.freed.notify_all();
    }

    pub fn used(&self) -> u64 {
        *self.lock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_proof_is_bound_to_its_stream_generation_and_key() {
        let k = RejoinKey::derive(&[1; 16], &[2; 16], &[3; 16], &[4; 16], None);
        let p = k.proof(3, 1);
        assert!(k.verify(3, 1, &p));
        assert!(!k.verify(3, 2, &p), "another generation");
        assert!(!k.verify(2, 1, &p), "another stream");
        let other_secret = RejoinKey::derive(&[9; 16], &[2; 16], &[3; 16], &[4; 16], None);
        assert!(!other_secret.verify(3, 1, &p));
        // In a sealed session the sealing key is part of the key: knowing
        // the secret alone is not enough.
        let sealed = RejoinKey::derive(&[1; 16], &[2; 16], &[3; 16], &[4; 16], Some(&[7; 32]));
        assert!(!sealed.verify(3, 1, &p));
        assert!(sealed.verify(3, 1, &sealed.proof(3, 1)));
    }

    #[test]
    fn acknowledgements_free_entries_and_bad_ones_are_named() {
        let mut log = ReplayLog::default();
        for i in 0..5u64 {
            assert_eq!(log.push(i, 10), i);
        }
        assert_eq!(log.ack(2), Ok(20));
        assert_eq!(log.pending().copied().collect::<Vec<_>>(), vec![2, 3, 4]);
        assert_eq!(log.held(), 30);
        assert_eq!(log.ack(1), Err(AckError::Backwards { got: 1, acked: 2 }));
        assert_eq!(log.ack(6), Err(AckError::Ahead { got: 6, sent: 5 }));
        assert_eq!(log.ack(5), Ok(30));
        assert!(log.settled());
        assert_eq!(log.push(5, 0), 5, "indices continue");
    }

    #[test]
    fn the_budget_blocks_when_full_and_a_large_block_still_passes_alone() {
        let b = Budget::new(100);
        let soon = Instant::now() + Duration::from_millis(50);
        assert!(b.acquire(60, soon, &|| false));
        assert!(!b.acquire(60, soon, &|| false), "full: waits, then gives up");
        b.release(60);
        assert!(b.acquire(500, soon, &|| false), "alone, a block larger than the budget passes");
        assert!(!b.acquire(1, Instant::now() + Duration::from_secs(5), &|| true), "stop ends the wait");
        b.release(500);
        assert_eq!(b.used(), 0);
    }

    #[derive(Debug, Clone)]
    enum Fault {
        /// The connection breaks after this many more frames were sent;
        /// the receiver had processed a random part of them.
        Cut { after: usize, seen: usize },
        /// The receiver acknowledges what it processed.
        Ack,
    }

    fn fault() -> impl Strategy<Value = Fault> {
        prop_oneof![(0usize..8, 0usize..8).prop_map(|(after, seen)| Fault::Cut { after, seen }), Just(Fault::Ack)]
    }

    proptest! {
        /// A sender and a receiver that share only ACK counts deliver every
        /// frame exactly once and in order, whatever the breaks.
        #[test]
        fn frames_arrive_exactly_once_across_any_breaks(total in 1usize..60, faults in proptest::collection::vec(fault(), 0..20)) {
            let mut log = ReplayLog::default();
            let mut processed: Vec<usize> = Vec::new(); // what the receiver applied, in order
            let mut in_flight: Vec<usize> = Vec::new(); // sent on the current connection, not yet processed
            let mut next = 0usize;
            let mut faults = faults.into_iter();
            while processed.len() < total {
                match faults.next() {
                    Some(Fault::Cut { after, seen }) => {
                        for _ in 0..after {
                            if next < total {
                                log.push(next, 1);
                                in_flight.push(next);
                                next += 1;
                            }
                        }
                        // The receiver got some of the frames before the cut.
                        let seen = seen.min(in_flight.len());
                        processed.extend(in_flight.drain(..seen));
                        in_flight.clear();
                        // REJOIN: the receiver says how many it processed.
                        log.ack(processed.len() as u64).unwrap();
                        in_flight.extend(log.pending().copied());
                    }
                    Some(Fault::Ack) => {
                        processed.append(&mut in_flight);
                        log.ack(processed.len() as u64).unwrap();
                    }
                    None => {
                        while next < total {
                            log.push(next, 1);
                            in_flight.push(next);
                            next += 1;
                        }
                        processed.append(&mut in_flight);
                        log.ack(processed.len() as u64).unwrap();
                    }
                }
            }
            prop_assert_eq!(processed, (0..total).collect::<Vec<_>>());
            prop_assert!(log.settled());
            prop_assert_eq!(log.held(), 0);
        }
    }
}
