//! Sealing: AES-256-GCM authenticated encryption of every frame after the
//! handshake (the replacement for the stock `encrypt=1`).
//!
//! Key file: exactly 32 raw bytes, or 64 hex characters (one trailing
//! newline allowed), e.g. `openssl rand -hex 32 > sst.key`. Each session
//! derives its own key from randomness of *both* ends (protocol v4,
//! SECURITY.md F2): HKDF-SHA256(ikm = key file, salt = the sender's 16-byte
//! session salt ‖ the receiver's 16-byte session nonce from WELCOME, info =
//! "sluice seal v4" ‖ token ‖ capabilities u64 LE ‖ stream count u16 LE). A
//! recorded session replayed into another receiver therefore fails to open
//! (that receiver chose another nonce), and no (key, nonce) pair can seal
//! two plaintexts: every receiver seals under a key no other session uses.
//! Nonce (12 bytes): direction (0 =
//! sender → receiver, 1 = back), a zero byte, the stream index (u16 BE) and
//! a per-stream, per-direction frame counter (u64 BE). The associated data is
//! the frame header (and, for DATA, the DATA header), so a frame that is
//! altered, replayed, reordered or moved to another stream or file fails to
//! open. aws-lc-rs uses AES-NI/VAES where the CPU has them.

use std::path::Path;
use std::sync::Arc;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::hkdf::{HKDF_SHA256, Salt};

use crate::{Error, Result};

/// Bytes of the authentication tag appended to every sealed body (a
/// layout constant: [`crate::wire`] states it).
pub use crate::wire::SEAL_TAG_LEN as TAG_LEN;

/// Which way a frame travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Direction {
    ToReceiver = 0,
    ToSender = 1,
}

/// The long-term key from `--encrypt-key-file`. `Debug` never shows it.
#[derive(Clone)]
pub struct SealKey([u8; 32]);

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(<redacted>)")
    }
}

impl SealKey {
    /// Reads and validates a key file; one that other users can read or
    /// that another user owns is refused (as OpenSSH refuses such keys).
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = crate::secret::read(path, "key file")?;
        Self::parse(&bytes).map_err(|why| Error::Config(format!("key file {}: {why}", path.display())))
    }

    /// Accepts 32 raw bytes or 64 hex characters with an optional newline.
    pub fn parse(bytes: &[u8]) -> std::result::Result<Self, String> {
        let hint = "expected exactly 32 raw bytes or 64 hex characters (create one with `openssl rand -hex 32 > FILE`)";
        if bytes.len() == 32 {
            let mut k = [0u8; 32];
            k.copy_from_slice(bytes);
            return Ok(Self(k));
        }
        let text = bytes.strip_suffix(b"\n").map_or(bytes, |b| b.strip_suffix(b"\r").unwrap_or(b));
        if text.len() != 64 {
            return Err(format!("{} bytes found; {hint}", bytes.len()));
        }
        let mut k = [0u8; 32];
        for (i, pair) in text.chunks(2).enumerate() {
            let s = std::str::from_utf8(pair).map_err(|_| format!("not hex; {hint}"))?;
            k[i] = u8::from_str_radix(s, 16).map_err(|_| format!("{s:?} is not hex; {hint}"))?;
        }
        Ok(Self(k))
    }

    /// A key derived from a configured secret of any form (a passphrase, a
    /// key in any encoding), for setups such as the SST `encrypt-key` that
    /// share a string rather than a key file: HKDF-SHA256 with a fixed salt
    /// and a purpose label. Both ends derive the same key from the same
    /// secret; each session still gets its own key ([`session`](Self::session)).
    pub fn derive(secret: &[u8], purpose: &str) -> Self {
        let mut k = [0u8; 32];
        Salt::new(HKDF_SHA256, b"sluice derived key v1")
            .extract(secret)
            .expand(&[purpose.as_bytes()], HKDF_SHA256)
            .and_then(|okm| okm.fill(&mut k))
            .expect("HKDF-SHA256 yields 32 bytes");
        Self(k)
    }

    /// The key of one session, bound to both ends and what they agreed:
    /// the key of every stream's first connection.
    pub fn session(&self, b: &Binding<'_>) -> SessionKey {
        self.session_at(b, 0, 0)
    }

    /// The key of `stream`'s connection number `generation` (0: the
    /// session key every stream's first connection shares). A stream that
    /// reconnects starts its frame counters again under a key of its own,
    /// so no (key, nonce) pair is ever used twice.
    pub fn session_at(&self, b: &Binding<'_>, stream: u16, generation: u32) -> SessionKey {
        let mut k = [0u8; 32];
        let mut salt = [0u8; 32];
        salt[..16].copy_from_slice(b.sender_salt);
        salt[16..].copy_from_slice(b.receiver_nonce);
        let caps = b.capabilities.to_le_bytes();
        let streams = b.streams.to_le_bytes();
        let (stream, generation) = (stream.to_le_bytes(), generation.to_le_bytes());
        let info: &[&[u8]] = if generation == [0; 4] {
            &[b"sluice seal v5", b.token, &caps, &streams]
        } else {
            &[b"sluice seal v5 rejoin", b.token, &caps, &streams, &stream, &generation]
        };
        // HKDF-SHA256 can always produce 32 bytes; failure here is a bug.
        Salt::new(HKDF_SHA256, &salt)
            .extract(&self.0)
            .expand(info, HKDF_SHA256)
            .and_then(|okm| okm.fill(&mut k))
            .expect("HKDF-SHA256 yields 32 bytes");
        let key = UnboundKey::new(&AES_256_GCM, &k).expect("AES-256-GCM takes a 32-byte key");
        SessionKey(Arc::new(LessSafeKey::new(key)))
    }

    /// 32 bytes derived from this key for another `purpose` (the rejoin
    /// key of a sealed session), never the key itself.
    pub fn material(&self, purpose: &str) -> [u8; 32] {
        let mut k = [0u8; 32];
        Salt::new(HKDF_SHA256, b"sluice key material v1")
            .extract(&self.0)
            .expand(&[purpose.as_bytes()], HKDF_SHA256)
            .and_then(|okm| okm.fill(&mut k))
            .expect("HKDF-SHA256 yields 32 bytes");
        k
    }
}

/// Everything a session key is bound to.
#[derive(Debug, Clone, Copy)]
pub struct Binding<'a> {
    /// HELLO's `session_salt` (the sender's randomness).
    pub sender_salt: &'a [u8; 16],
    /// WELCOME's `nonce` (the receiver's randomness).
    pub receiver_nonce: &'a [u8; 16],
    /// The receiver's one-time token.
    pub token: &'a [u8; 16],
    /// The negotiated capability bits.
    pub capabilities: u64,
    /// The session's stream count.
    pub streams: u16,
}

/// A session's AEAD key, shared by all streams.
#[derive(Clone)]
pub struct SessionKey(Arc<LessSafeKey>);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(<redacted>)")
    }
}

/// Seals or opens the frames of one stream in one direction, in order.
#[derive(Debug)]
pub struct Sealer {
    key: SessionKey,
    direction: Direction,
    stream: u16,
    counter: u64,
}

/// A sealed frame failed to open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a sealed frame (number {frame} on stream {stream}) failed authentication: the two ends use different key files, or the data was altered, replayed or reordered in transit"
)]
pub struct OpenError {
    pub stream: u16,
    pub frame: u64,
}

impl Sealer {
    pub fn new(key: SessionKey, direction: Direction, stream: u16) -> Self {
        Self { key, direction, stream, counter: 0 }
    }

    fn next_nonce(&mut self) -> Nonce {
        let mut n = [0u8; 12];
        n[0] = self.direction as u8;
        n[2..4].copy_from_slice(&self.stream.to_be_bytes());
        n[4..12].copy_from_slice(&self.counter.to_be_bytes());
        self.counter += 1;
        Nonce::assume_unique_for_key(n)
    }

    /// Encrypts `data` in place and returns the tag to append.
    pub fn seal(&mut self, aad: &[u8], data: &mut [u8]) -> [u8; TAG_LEN] {
        let nonce = self.next_nonce();
        let tag =
            self.key.0.seal_in_place_separate_tag(nonce, Aad::from(aad), data).expect("AES-GCM sealing of a bounded block cannot fail");
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(tag.as_ref());
        t
    }

    /// Decrypts `sealed` (ciphertext followed by its tag) in place and
    /// returns the plaintext length.
    pub fn open(&mut self, aad: &[u8], sealed: &mut [u8]) -> std::result::Result<usize, OpenError> {
        let frame = self.counter;
        let nonce = self.next_nonce();
        self.key.0.open_in_place(nonce, Aad::from(aad), sealed).map(|p| p.len()).map_err(|_| OpenError { stream: self.stream, frame })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound(key: u8, salt: u8) -> SessionKey {
        let b = Binding { sender_salt: &[salt; 16], receiver_nonce: &[3; 16], token: &[4; 16], capabilities: 4, streams: 2 };
        SealKey::parse(&[key; 32]).unwrap().session(&b)
    }

    fn pair(stream: u16) -> (Sealer, Sealer) {
        let key = bound(7, 1);
        (Sealer::new(key.clone(), Direction::ToReceiver, stream), Sealer::new(key, Direction::ToReceiver, stream))
    }

    #[test]
    fn sealed_frames_open_in_order_only() {
        let (mut s, mut o) = pair(3);
        let mut a = b"first frame".to_vec();
        let ta = s.seal(b"hdr1", &mut a);
        let mut b = b"second frame".to_vec();
        let tb = s.seal(b"hdr2", &mut b);
        assert_ne!(&a[..], b"first frame");
        // Out of order: the receiver expects frame 0 first.
        let mut bb = [b.clone(), tb.to_vec()].concat();
        assert_eq!(o.open(b"hdr2", &mut bb), Err(OpenError { stream: 3, frame: 0 }));
        let (_, mut o) = pair(3);
        let mut aa = [a, ta.to_vec()].concat();
        assert_eq!(o.open(b"hdr1", &mut aa), Ok(11));
        assert_eq!(&aa[..11], b"first frame");
        let mut bb = [b, tb.to_vec()].concat();
        assert_eq!(o.open(b"hdr2", &mut bb), Ok(12));
    }

    #[test]
    fn tampering_and_wrong_contexts_fail() {
        let (mut s, _) = pair(0);
        let mut m = b"payload".to_vec();
        let t = s.seal(b"aad", &mut m);
        let sealed = [m, t.to_vec()].concat();
        for i in 0..sealed.len() {
            let mut x = sealed.clone();
            x[i] ^= 1;
            assert!(pair(0).1.open(b"aad", &mut x).is_err(), "bit flip at {i} accepted");
        }
        assert!(pair(0).1.open(b"AAD", &mut sealed.clone()).is_err(), "other header accepted");
        assert!(pair(1).1.open(b"aad", &mut sealed.clone()).is_err(), "other stream accepted");
        let other = bound(8, 1);
        assert!(Sealer::new(other, Direction::ToReceiver, 0).open(b"aad", &mut sealed.clone()).is_err(), "other key accepted");
        let other_session = bound(7, 2);
        assert!(Sealer::new(other_session, Direction::ToReceiver, 0).open(b"aad", &mut sealed.clone()).is_err());
        assert!(pair(0).1.open(b"aad", &mut sealed.clone()).is_ok());
    }

    #[test]
    fn every_binding_input_changes_the_session_key() {
        let key = SealKey::parse(&[7u8; 32]).unwrap();
        let base = Binding { sender_salt: &[1; 16], receiver_nonce: &[3; 16], token: &[4; 16], capabilities: 4, streams: 2 };
        let seal_with = |b: &Binding<'_>| {
            let mut m = b"verdict".to_vec();
            let t = Sealer::new(key.session(b), Direction::ToSender, 0).seal(b"h", &mut m);
            [m, t.to_vec()].concat()
        };
        let reference = seal_with(&base);
        assert_eq!(seal_with(&base), reference, "the same binding gives the same key");
        let variants = [
            Binding { sender_salt: &[2; 16], ..base },
            Binding { receiver_nonce: &[9; 16], ..base },
            Binding { token: &[5; 16], ..base },
            Binding { capabilities: 5, ..base },
            Binding { streams: 3, ..base },
        ];
        for (i, v) in variants.iter().enumerate() {
            assert_ne!(seal_with(v), reference, "binding input {i} does not reach the key");
        }
    }

    #[test]
    fn key_files_are_raw_or_hex() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        assert!(SealKey::parse(hex.as_bytes()).is_ok());
        assert!(SealKey::parse(format!("{hex}\n").as_bytes()).is_ok());
        assert!(SealKey::parse(format!("{hex}\r\n").as_bytes()).is_ok());
        assert!(SealKey::parse(&[0u8; 32]).is_ok());
        let e = SealKey::parse(b"short").unwrap_err();
        assert!(e.contains("5 bytes") && e.contains("openssl rand -hex 32"), "{e}");
        assert!(SealKey::parse(hex.replace('0', "g").as_bytes()).unwrap_err().contains("not hex"));
        assert!(!format!("{:?}", SealKey::parse(&[9u8; 32]).unwrap()).contains('9'));
    }
}
