//! Compression of block payloads (sealing in [`seal`], external filters in
//! [`external`]).
//!
//! Owns the transforms both ends must agree on: per-chunk lz4/zstd
//! compression with its raw fallback, and the adaptive policy of
//! `--compress auto`. It knows nothing of streams or files; the policy
//! takes durations as arguments and reads no clock. (Checksums and file
//! digests are [`crate::digest`]'s.)

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub mod external;
pub mod governor;
pub mod seal;

use governor::{Arm, Governor};

use crate::wire::{caps, data_flags};
use crate::{Error, Result};

/// What `--compress` asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    None,
    Lz4,
    /// zstd at a level (1 = fastest; negative levels are faster still).
    Zstd(i32),
    /// lz4 or fast zstd on chunks that shrink, only while compressing
    /// pays off, the codec chosen by measurement ([`governor`]).
    Auto,
}

impl FromStr for Compression {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        let bad = || Error::Config(format!("unknown compression {s:?}: use none, lz4, zstd, zstd:LEVEL (-7..=22) or auto"));
        Ok(match t.as_str() {
            "none" | "off" | "no" => Self::None,
            "lz4" => Self::Lz4,
            "zstd" => Self::Zstd(1),
            "auto" => Self::Auto,
            _ => match t.strip_prefix("zstd:") {
                Some(l) => {
                    let level: i32 = l.parse().map_err(|_| bad())?;
                    if !(-7..=22).contains(&level) {
                        return Err(bad());
                    }
                    Self::Zstd(level)
                }
                None => return Err(bad()),
            },
        })
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("none"),
            Self::Lz4 => f.write_str("lz4"),
            Self::Zstd(l) => write!(f, "zstd:{l}"),
            Self::Auto => f.write_str("auto"),
        }
    }
}

impl Compression {
    /// The HELLO capability bits this mode needs.
    pub fn capabilities(self) -> u64 {
        match self {
            Self::None => 0,
            Self::Lz4 => caps::COMPRESS_LZ4,
            Self::Zstd(_) => caps::COMPRESS_ZSTD,
            Self::Auto => caps::COMPRESS_LZ4 | caps::COMPRESS_ZSTD,
        }
    }

    /// The codecs `auto` may choose among, given what the receiver
    /// granted: a session starts with lz4; no compression challenges it
    /// first (the trap of a CPU-bound receiver), then zstd.
    pub fn arms(granted: u64) -> Vec<Arm> {
        let mut arms = Vec::new();
        if granted & caps::COMPRESS_LZ4 != 0 {
            arms.push(Arm::Lz4);
        }
        arms.push(Arm::Raw);
        if granted & caps::COMPRESS_ZSTD != 0 {
            arms.push(Arm::Zstd);
        }
        arms
    }
}

/// A chunk is sent compressed only if it shrinks by at least 1/32.
fn worth(raw: usize) -> usize {
    raw - raw / 32
}

/// Misses in a row before `--compress auto` starts skipping chunks.
const MISS_STREAK: u32 = 4;

/// Decides, chunk by chunk, whether `--compress auto` compresses. Pure
/// logic: the caller reports codec and send durations.
///
/// A chunk is worth compressing when the link time it saves exceeds the
/// time the codec spends: `codec_time < saved_bytes × link_time_per_byte`.
/// After a streak of chunks that do not shrink, or do not pay, the policy
/// skips the next 1, 2, 4 … 64 chunks before it probes again, so random data
/// and fast links cost almost nothing, while a mix of compressible and
/// incompressible files (one miss at a time) keeps being compressed (the measured trap: random pages cost 4–5
/// CPU-s/GiB to attempt, and on loopback lz4 is slower than the wire).
#[derive(Debug, Clone, Default)]
pub struct AutoPolicy {
    skip: u32,
    backoff: u32,
    misses: u32,
    /// EWMA of link time per byte, in nanoseconds (0 = unknown).
    link_ns: f64,
}

impl AutoPolicy {
    /// Whether to attempt compressing the next chunk.
    pub fn should_try(&mut self) -> bool {
        if self.skip > 0 {
            self.skip -= 1;
            return false;
        }
        true
    }

    /// Reports an attempt: `raw` bytes became `compressed` (None if it did
    /// not shrink) in `codec` time. Returns whether to send it compressed.
    pub fn record_attempt(&mut self, raw: usize, compressed: Option<usize>, codec: Duration) -> bool {
        let pays = match compressed {
            Some(c) if self.link_ns == 0.0 => c < raw,
            Some(c) => codec.as_nanos() as f64 <= (raw - c) as f64 * self.link_ns,
            None => false,
        };
        if pays {
            self.backoff = 0;
            self.misses = 0;
        } else {
            self.misses += 1;
            if self.misses >= MISS_STREAK {
                self.backoff = (self.backoff * 2).clamp(1, 64);
                self.skip = self.backoff;
            }
        }
        pays
    }

    /// Reports that `bytes` took `elapsed` to hand to the socket.
    pub fn record_send(&mut self, bytes: usize, elapsed: Duration) {
        if bytes == 0 {
            return;
        }
        let ns = elapsed.as_nanos() as f64 / bytes as f64;
        self.link_ns = if self.link_ns == 0.0 { ns } else { 0.8 * self.link_ns + 0.2 * ns };
    }
}

/// Per-stream compressor: owns its codec context and output buffer.
pub struct Encoder {
    mode: Compression,
    zstd: Option<zstd::bulk::Compressor<'static>>,
    out: Vec<u8>,
    policy: AutoPolicy,
    /// `auto`'s session-wide choice of codec.
    governor: Option<Arc<Governor>>,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder").field("mode", &self.mode).finish_non_exhaustive()
    }
}

impl Encoder {
    pub fn new(mode: Compression, block_size: u32) -> Result<Self> {
        let zstd = match mode {
            Compression::Zstd(level) => {
                Some(zstd::bulk::Compressor::new(level).map_err(|e| Error::Config(format!("zstd level {level}: {e}")))?)
            }
            _ => None,
        };
        // lz4_flex wants room for its worst case; zstd is bounded by `cap` below.
        let out = vec![0u8; lz4_flex::block::get_maximum_output_size(block_size as usize)];
        Ok(Self { mode, zstd, out, policy: AutoPolicy::default(), governor: None })
    }

    /// An `auto` encoder whose codec `governor` chooses.
    pub fn governed(block_size: u32, governor: Arc<Governor>) -> Result<Self> {
        Ok(Self { governor: Some(governor), ..Self::new(Compression::Auto, block_size)? })
    }

    /// The codec for the next chunk: `auto`'s governor decides (lz4 without one).
    fn arm(&self) -> Arm {
        match self.mode {
            Compression::None => Arm::Raw,
            Compression::Lz4 => Arm::Lz4,
            Compression::Zstd(_) => Arm::Zstd,
            Compression::Auto => self.governor.as_ref().map_or(Arm::Lz4, |g| g.arm()),
        }
    }

    /// Compresses `data` if that is worth it; returns the DATA flag and the
    /// compressed bytes (mutable, so they can be sealed in place), or `None`
    /// to send `data` raw.
    pub fn encode(&mut self, data: &[u8]) -> Option<(u8, &mut [u8])> {
        let auto = self.mode == Compression::Auto;
        let arm = self.arm();
        if data.len() < 64 || arm == Arm::Raw || (auto && !self.policy.should_try()) {
            return None;
        }
        let cap = worth(data.len());
        let started = Instant::now();
        let (flag, n) = match arm {
            Arm::Raw => return None,
            Arm::Lz4 => {
                let room = lz4_flex::block::get_maximum_output_size(data.len());
                (data_flags::LZ4, lz4_flex::block::compress_into(data, &mut self.out[..room]).ok())
            }
            Arm::Zstd => {
                if self.zstd.is_none() {
                    self.zstd = zstd::bulk::Compressor::new(governor::ZSTD_LEVEL).ok();
                }
                let out = &mut self.out[..cap];
                (data_flags::ZSTD, self.zstd.as_mut().and_then(|z| z.compress_to_buffer(data, out).ok()))
            }
        };
        let n = n.filter(|&n| n < cap);
        if auto && !self.policy.record_attempt(data.len(), n, started.elapsed()) {
            return None;
        }
        n.map(|n| (flag, &mut self.out[..n]))
    }

    /// Reports a chunk sent: `raw` source bytes as `wire` bytes, handed to
    /// the socket in `elapsed` (the link speed for the per-chunk policy,
    /// the goodput for the governor).
    pub fn record_send(&mut self, raw: usize, wire: usize, elapsed: Duration) {
        self.policy.record_send(wire, elapsed);
        if let Some(g) = &self.governor {
            g.delivered(raw as u64);
        }
    }
}

/// Per-stream decompressor.
#[derive(Default)]
pub struct Decoder {
    zstd: Option<zstd::bulk::Decompressor<'static>>,
    /// The command undoing the sender's external filter, if configured.
    external: Option<String>,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder").finish_non_exhaustive()
    }
}

impl Decoder {
    /// A decoder that can also undo external-filter blocks with `command`.
    pub fn with_external(command: Option<String>) -> Self {
        Self { zstd: None, external: command }
    }

    /// Decodes `src` (compressed as `flag` says) into exactly `dst.len()`
    /// bytes; anything else is corrupt input, reported, never a panic.
    pub fn decode(&mut self, flag: u8, src: &[u8], dst: &mut [u8]) -> std::result::Result<(), String> {
        let n = match flag {
            data_flags::LZ4 => lz4_flex::block::decompress_into(src, dst).map_err(|e| format!("corrupt lz4 block: {e}"))?,
            data_flags::ZSTD => {
                if self.zstd.is_none() {
                    self.zstd = Some(zstd::bulk::Decompressor::new().map_err(|e| format!("zstd: {e}"))?);
                }
                let z = self.zstd.as_mut().expect("set above");
                z.decompress_to_buffer(src, dst).map_err(|e| format!("corrupt zstd block: {e}"))?
            }
            data_flags::EXTERNAL => {
                let cmd = self.external.as_deref().ok_or("an external-filter block, but no command to undo it")?;
                let out = external::run_filter(cmd, src, dst.len()).map_err(|e| e.to_string())?;
                if out.len() != dst.len() {
                    return Err(format!("filter {cmd:?} produced {} bytes, the header announced {}", out.len(), dst.len()));
                }
                dst.copy_from_slice(&out);
                out.len()
            }
            other => return Err(format!("unknown compression flag {other:#x}")),
        };
        if n != dst.len() {
            return Err(format!("block decoded to {n} bytes, the header announced {}", dst.len()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::checksum;

    fn mixed(n: usize) -> Vec<u8> {
        let mut x = 0x1234_5678_u32;
        (0..n)
            .map(|i| {
                if (i / 4096) % 2 == 0 {
                    b"row 42 | status=active | "[i % 25]
                } else {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                }
            })
            .collect()
    }

    #[test]
    fn codecs_round_trip_and_random_data_goes_raw() {
        let data = mixed(1 << 20);
        let mut x = 7u32;
        let random: Vec<u8> = (0..1 << 16)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        for mode in [Compression::Lz4, Compression::Zstd(1), Compression::Zstd(3)] {
            let mut enc = Encoder::new(mode, 1 << 20).unwrap();
            let (flag, packed) = enc.encode(&data).expect("mixed data shrinks");
            let packed = packed.to_vec();
            assert!(packed.len() < data.len() * 3 / 4, "{mode}: {}", packed.len());
            let mut out = vec![0u8; data.len()];
            Decoder::default().decode(flag, &packed, &mut out).unwrap();
            assert_eq!(out, data, "{mode}");
            assert!(enc.encode(&random).is_none(), "{mode}: random data must be sent raw");
        }
    }

    #[test]
    fn corrupt_input_is_an_error_not_a_panic() {
        let data = mixed(1 << 16);
        let mut enc = Encoder::new(Compression::Lz4, 1 << 16).unwrap();
        let (flag, packed) = enc.encode(&data).unwrap();
        let mut packed = packed.to_vec();
        for i in (0..packed.len()).step_by(7) {
            packed[i] ^= 0x5a;
        }
        let mut out = vec![0u8; data.len()];
        let r = Decoder::default().decode(flag, &packed, &mut out);
        // lz4 may decode garbage without noticing; then the block checksum
        // (which covers the decoded bytes) must catch it.
        if r.is_ok() {
            assert_ne!(checksum(&out), checksum(&data), "corruption decoded to the original bytes");
        }
        let mut short = vec![0u8; 10];
        assert!(Decoder::default().decode(data_flags::ZSTD, b"not zstd at all", &mut short).is_err());
        assert!(Decoder::default().decode(9, b"", &mut short).is_err());
    }

    #[test]
    fn auto_backs_off_when_compression_does_not_pay() {
        let mut p = AutoPolicy::default();
        // A slow link (10 ns/byte): 1 MiB shrinking by half saves 5 ms; a 1 ms codec pays.
        p.record_send(1 << 20, Duration::from_millis(10));
        assert!(p.should_try());
        assert!(p.record_attempt(1 << 20, Some(1 << 19), Duration::from_millis(1)));
        assert!(p.should_try());
        // A fast link (0.1 ns/byte) makes the same codec time a loss.
        for _ in 0..30 {
            p.record_send(1 << 20, Duration::from_micros(100));
        }
        for _ in 0..MISS_STREAK {
            assert!(p.should_try());
            assert!(!p.record_attempt(1 << 20, Some(1 << 19), Duration::from_millis(1)));
        }
        // ... and after a streak of misses the policy skips chunks.
        assert!(!p.should_try());
        // Alternating compressible and incompressible chunks never back off.
        let mut m = AutoPolicy::default();
        for i in 0..100 {
            assert!(m.should_try(), "chunk {i} skipped");
            m.record_attempt(1 << 16, (i % 2 == 0).then_some(1 << 15), Duration::ZERO);
        }
        let mut q = AutoPolicy::default();
        let mut attempts = 0;
        for _ in 0..1000 {
            if q.should_try() {
                attempts += 1;
                q.record_attempt(1 << 20, None, Duration::from_millis(1));
            }
        }
        assert!(attempts < 30, "incompressible data was attempted {attempts} times in 1000 chunks");
    }

    #[test]
    fn compression_options_parse() {
        assert_eq!("zstd:3".parse::<Compression>().unwrap(), Compression::Zstd(3));
        assert_eq!("LZ4".parse::<Compression>().unwrap(), Compression::Lz4);
        assert_eq!("zstd".parse::<Compression>().unwrap(), Compression::Zstd(1));
        assert!("zstd:99".parse::<Compression>().is_err());
        assert!("gzip".parse::<Compression>().unwrap_err().to_string().contains("gzip"));
    }
}
