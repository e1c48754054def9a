//! One receiver stream, without I/O: which frames may come next, in which
//! order, under which negotiated capabilities; what a frame means for the
//! session; what counts as processed, and when the sender is told.
//!
//! The driver (`recv.rs`) reads a frame header and asks [`Inbound::data`]
//! or [`Inbound::control`] what to do; for a DATA frame it moves the
//! payload (backend, codec) and hands the block's checksum to
//! [`Inbound::verified`]. Every answer that is an error names the rule
//! the peer broke. The state survives the stream's connections: after a
//! REJOIN, [`Inbound::rejoined`] gives the count the new connection's ACK
//! carries, and the sender goes on from there.

use std::time::Instant;

use crate::resume::{ACK_BYTES, ACK_FRAMES, ACK_INTERVAL};
use crate::wire::{DataHeader, Frame, FrameHeader, SEALED, caps, data_flags};
use crate::{Error, Result};

/// Whether a frame's sealing flag agrees with the session's.
pub fn check_sealing(peer: &str, h: FrameHeader, sealed_session: bool) -> Result<()> {
    match (h.flags & SEALED != 0, sealed_session) {
        (true, false) => Err(Error::peer(peer, format!("sent a sealed {:?} frame in an unsealed session", h.kind))),
        (false, true) => Err(Error::peer(peer, format!("sent an unsealed {:?} frame in a sealed session", h.kind))),
        _ => Ok(()),
    }
}

/// What a control frame means for the session; the driver applies it to
/// the file table (tally or catalog) and acts on the ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A manifest file's digest (FILE_DONE).
    FileDone { file_id: u32, digest: u64 },
    /// A streamed session's file, announced before its first frame.
    Announce { file_id: u32, mode: u32, path: Vec<u8> },
    /// A streamed session's file is complete at the sender.
    FileEnd { file_id: u32, size: u64, data_bytes: u64, digest: u64 },
    /// This stream's STREAM_END, its totals checked. Stream 0 reads on, up
    /// to END; every other stream is done.
    StreamEnded { last: bool },
    /// END on stream 0, after its STREAM_END: the session's totals as the
    /// sender counted them.
    End { entries: u64, data_bytes: u64, frames: u64 },
    /// A KEEPALIVE on a stream the sender holds idle (protocol 8).
    Parked,
}

/// The processed count to record, and whether to tell the sender now (an
/// ACK frame). Only resumable sessions count for the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Processed {
    pub frames: u64,
    pub tell: bool,
}

/// One receiver stream's state across its connections.
#[derive(Debug)]
pub struct Inbound {
    index: u16,
    peer: String,
    granted: u64,
    sealed: bool,
    resumable: bool,
    next_seq: u32,
    /// DATA frames and their data bytes (STREAM_END's totals).
    frames: u64,
    bytes: u64,
    /// Every frame processed since the manifest (what ACK counts).
    processed: u64,
    /// The count, data bytes since, and time of the last ACK.
    acked: u64,
    acked_bytes: u64,
    acked_at: Option<Instant>,
    /// STREAM_END arrived.
    ended: bool,
    /// A DATA frame admitted by [`Inbound::data`] and not yet verified.
    admitted: Option<(u32, u64)>,
    /// The sender may park this stream (protocol 8): its KEEPALIVEs are
    /// signs of life.
    parkable: bool,
}

impl Inbound {
    /// Stream `index` of a session with the `granted` capabilities, sealed
    /// or not, with `peer` named in every error.
    pub fn new(index: u16, peer: &str, granted: u64, sealed: bool) -> Self {
        Self {
            index,
            peer: peer.to_string(),
            granted,
            sealed,
            resumable: granted & caps::RESUME != 0,
            next_seq: 0,
            frames: 0,
            bytes: 0,
            processed: 0,
            acked: 0,
            acked_bytes: 0,
            acked_at: None,
            ended: false,
            admitted: None,
            parkable: false,
        }
    }

    /// The same, in a session of protocol `version`: from
    /// [`wire::since::PARKED_STREAMS`] on, a sender's KEEPALIVE is
    /// allowed on any stream.
    #[must_use]
    pub fn speaking(mut self, version: u16) -> Self {
        self.parkable = version >= crate::wire::since::PARKED_STREAMS;
        self
    }

    fn peer_err(&self, reason: String) -> Error {
        Error::peer(&self.peer, reason)
    }

    /// A DATA frame's headers arrived: may it come now, in this order, with
    /// these flags? The driver reads its payload only after `Ok`.
    pub fn data(&mut self, h: FrameHeader, d: &DataHeader) -> Result<()> {
        let index = self.index;
        if self.ended {
            return Err(self.peer_err(format!("sent data on stream {index} after its end")));
        }
        if self.admitted.is_some() {
            return Err(self.peer_err(format!("stream {index}: a block arrived before the previous one was verified")));
        }
        if d.seq != self.next_seq {
            return Err(
                self.peer_err(format!("stream {index} sent block {} where block {} was due (replayed or lost)", d.seq, self.next_seq))
            );
        }
        let needed = match h.flags & data_flags::COMPRESSED {
            data_flags::LZ4 => caps::COMPRESS_LZ4,
            data_flags::ZSTD => caps::COMPRESS_ZSTD,
            data_flags::EXTERNAL => caps::EXTERNAL_FILTER,
            _ => 0,
        };
        if self.granted & needed != needed {
            return Err(self.peer_err("sent a compressed block without negotiating compression".into()));
        }
        if h.flags & data_flags::NO_PAYLOAD != 0 && self.granted & caps::DELTA == 0 {
            return Err(self.peer_err("sent a reference or zeros without negotiating a delta transfer".into()));
        }
        self.check_sealing(h)?;
        self.admitted = Some((d.raw_len, d.checksum));
        Ok(())
    }

    fn check_sealing(&self, h: FrameHeader) -> Result<()> {
        check_sealing(&self.peer, h, self.sealed)
    }

    /// The admitted block was written and its decoded bytes sum to `sum`:
    /// checks it against the sender's checksum (`path` names the file in
    /// the error) and counts it.
    pub fn verified(&mut self, d: &DataHeader, sum: u64, now: Instant, path: impl FnOnce() -> String) -> Result<Option<Processed>> {
        let Some((len, checksum)) = self.admitted.take() else {
            return Err(self.peer_err(format!("stream {}: a block was verified that was never admitted", self.index)));
        };
        debug_assert_eq!((len, checksum), (d.raw_len, d.checksum), "the block verified is the block admitted");
        if sum != checksum {
            return Err(Error::Verify {
                path: path(),
                reason: format!("checksum mismatch in the block at offset {} ({len} bytes)", d.offset),
            });
        }
        self.next_seq = self.next_seq.wrapping_add(1);
        self.frames += 1;
        self.bytes += u64::from(len);
        Ok(self.count(u64::from(len), now, false))
    }

    /// A control frame arrived (its sealing already checked by the reader):
    /// what it means, and the processed count. ABORT is the sender's
    /// failure, returned as the error it names.
    pub fn control(&mut self, frame: Frame, now: Instant) -> Result<(Event, Option<Processed>)> {
        let index = self.index;
        if self.admitted.is_some() {
            return Err(self.peer_err(format!("stream {index}: a frame arrived before the previous block was verified")));
        }
        let event = match frame {
            Frame::End { entries, data_bytes, frames } if self.ended && index == 0 => {
                return Ok((Event::End { entries, data_bytes, frames }, self.count(0, now, true)));
            }
            Frame::Abort { reason } => return Err(Error::SenderFailed(reason)),
            // Not counted: the sender does not keep it for resending.
            Frame::Keepalive if self.parkable && !self.ended => return Ok((Event::Parked, None)),
            _ if self.ended => return Err(self.peer_err(format!("sent a frame on stream {index} after its end"))),
            Frame::FileDone { file_id, digest } => Event::FileDone { file_id, digest },
            Frame::Announce { file_id, mode, path } => Event::Announce { file_id, mode, path },
            Frame::FileEnd { file_id, size, data_bytes, digest } => Event::FileEnd { file_id, size, data_bytes, digest },
            Frame::StreamEnd { frames, bytes } => {
                if (frames, bytes) != (self.frames, self.bytes) {
                    return Err(self.peer_err(format!(
                        "stream {index} ended claiming {frames} frames / {bytes} bytes, but {} / {} arrived",
                        self.frames, self.bytes
                    )));
                }
                self.ended = true;
                return Ok((Event::StreamEnded { last: index != 0 }, self.count(0, now, true)));
            }
            other => return Err(self.peer_err(format!("sent {:?} in the middle of the data", other.kind()))),
        };
        Ok((event, self.count(0, now, false)))
    }

    /// A frame before the data counted as processed (stream 0's manifest,
    /// from protocol 6 on): the count to record and whether to tell it.
    pub fn counted(&mut self, now: Instant) -> Option<Processed> {
        self.count(0, now, false)
    }

    /// A new connection took over this stream: the count its ACK carries.
    /// A block admitted on the broken connection and never verified was
    /// not processed; the sender sends it again.
    pub fn rejoined(&mut self, now: Instant) -> u64 {
        self.admitted = None;
        (self.acked, self.acked_bytes, self.acked_at) = (self.processed, 0, Some(now));
        self.processed
    }

    /// DATA frames and data bytes received on this stream.
    pub fn totals(&self) -> (u64, u64) {
        (self.frames, self.bytes)
    }

    /// Frames processed since the manifest.
    pub fn processed(&self) -> u64 {
        self.processed
    }

    /// One frame processed: in a resumable session, the count to record
    /// and whether it is time to tell the sender (every [`ACK_FRAMES`]
    /// frames, [`ACK_BYTES`] bytes or [`ACK_INTERVAL`], and at once when
    /// `now_please`).
    fn count(&mut self, data: u64, now: Instant, now_please: bool) -> Option<Processed> {
        self.processed += 1;
        if !self.resumable {
            return None;
        }
        self.acked_bytes += data;
        let tell = now_please
            || self.processed - self.acked >= ACK_FRAMES
            || self.acked_bytes >= ACK_BYTES
            || self.acked_at.is_none_or(|at| now.saturating_duration_since(at) >= ACK_INTERVAL);
        if tell {
            (self.acked, self.acked_bytes, self.acked_at) = (self.processed, 0, Some(now));
        }
        Some(Processed { frames: self.processed, tell })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Kind;

    fn data_header(seq: u32, len: u32, checksum: u64) -> DataHeader {
        DataHeader { file_id: 0, seq, offset: u64::from(seq) * u64::from(len), raw_len: len, checksum }
    }

    fn h(flags: u8) -> FrameHeader {
        FrameHeader { kind: Kind::Data, flags, len: 0 }
    }

    #[test]
    fn blocks_must_come_in_sequence_and_match_their_checksum() {
        let t = Instant::now();
        let mut s = Inbound::new(1, "peer", 0, false);
        let d0 = data_header(0, 10, 7);
        s.data(h(0), &d0).unwrap();
        assert_eq!(s.verified(&d0, 7, t, || "f".into()).unwrap(), None, "not resumable: nothing to tell");
        let skipped = data_header(2, 10, 7);
        let e = s.data(h(0), &skipped).unwrap_err().to_string();
        assert!(e.contains("sent block 2 where block 1 was due"), "{e}");
        let d1 = data_header(1, 10, 7);
        s.data(h(0), &d1).unwrap();
        let e = s.verified(&d1, 8, t, || "ib_data1".into()).unwrap_err().to_string();
        assert!(e.contains("ib_data1") && e.contains("checksum mismatch"), "{e}");
    }

    #[test]
    fn compression_and_sealing_need_their_negotiation() {
        let mut s = Inbound::new(0, "peer", 0, false);
        let e = s.data(h(data_flags::LZ4), &data_header(0, 1, 0)).unwrap_err().to_string();
        assert!(e.contains("without negotiating compression"), "{e}");
        let e = s.data(h(SEALED), &data_header(0, 1, 0)).unwrap_err().to_string();
        assert!(e.contains("sealed Data frame in an unsealed session"), "{e}");
        let mut s = Inbound::new(0, "peer", caps::COMPRESS_LZ4, true);
        let e = s.data(h(data_flags::LZ4), &data_header(0, 1, 0)).unwrap_err().to_string();
        assert!(e.contains("unsealed Data frame in a sealed session"), "{e}");
        s.data(h(data_flags::LZ4 | SEALED), &data_header(0, 1, 0)).unwrap();
    }

    #[test]
    fn a_senders_keepalive_is_a_sign_of_life_from_protocol_8_and_never_counted() {
        let t = Instant::now();
        let mut old = Inbound::new(1, "peer", caps::RESUME, false).speaking(7);
        let e = old.control(Frame::Keepalive, t).unwrap_err().to_string();
        assert!(e.contains("Keepalive in the middle of the data"), "{e}");
        let mut s = Inbound::new(1, "peer", caps::RESUME, false).speaking(8);
        for _ in 0..100 {
            assert_eq!(s.control(Frame::Keepalive, t).unwrap(), (Event::Parked, None));
        }
        assert_eq!(s.processed(), 0, "the sender keeps no KEEPALIVE for resending, so none is counted");
        s.control(Frame::StreamEnd { frames: 0, bytes: 0 }, t).unwrap();
        let e = s.control(Frame::Keepalive, t).unwrap_err().to_string();
        assert!(e.contains("after its end"), "{e}");
    }

    #[test]
    fn stream_end_checks_totals_and_only_stream_0_reads_on_to_end() {
        let t = Instant::now();
        let mut s = Inbound::new(1, "peer", 0, false);
        let e = s.control(Frame::StreamEnd { frames: 1, bytes: 10 }, t).unwrap_err().to_string();
        assert!(e.contains("ended claiming 1 frames / 10 bytes, but 0 / 0 arrived"), "{e}");
        let mut s = Inbound::new(1, "peer", 0, false);
        assert_eq!(s.control(Frame::StreamEnd { frames: 0, bytes: 0 }, t).unwrap().0, Event::StreamEnded { last: true });
        let e = s.control(Frame::End { entries: 0, data_bytes: 0, frames: 0 }, t).unwrap_err().to_string();
        assert!(e.contains("after its end"), "{e}");
        let mut s0 = Inbound::new(0, "peer", 0, false);
        let e = s0.control(Frame::End { entries: 0, data_bytes: 0, frames: 0 }, t).unwrap_err().to_string();
        assert!(e.contains("sent End in the middle of the data"), "{e}");
        assert_eq!(s0.control(Frame::StreamEnd { frames: 0, bytes: 0 }, t).unwrap().0, Event::StreamEnded { last: false });
        let e = s0.data(h(0), &data_header(0, 1, 0)).unwrap_err().to_string();
        assert!(e.contains("sent data on stream 0 after its end"), "{e}");
        let end = s0.control(Frame::End { entries: 3, data_bytes: 4, frames: 5 }, t).unwrap().0;
        assert_eq!(end, Event::End { entries: 3, data_bytes: 4, frames: 5 });
        let e = Inbound::new(0, "p", 0, false).control(Frame::Abort { reason: "disk full".into() }, t).unwrap_err();
        assert!(matches!(e, Error::SenderFailed(ref r) if r == "disk full"), "{e}");
    }

    #[test]
    fn acknowledgements_follow_frames_bytes_time_and_ends() {
        let t = Instant::now();
        let mut s = Inbound::new(0, "peer", caps::RESUME, false);
        let mut told = Vec::new();
        for i in 0..40u32 {
            let d = data_header(i, 100, 1);
            s.data(h(0), &d).unwrap();
            let p = s.verified(&d, 1, t, String::new).unwrap().expect("resumable");
            assert_eq!(p.frames, u64::from(i) + 1);
            if p.tell {
                told.push(p.frames);
            }
        }
        // The first block is told (no ACK yet), then every ACK_FRAMES.
        assert_eq!(told, vec![1, 17, 33]);
        // Time alone makes the next one due.
        let d = data_header(40, 1, 1);
        s.data(h(0), &d).unwrap();
        assert!(s.verified(&d, 1, t + ACK_INTERVAL, String::new).unwrap().unwrap().tell);
        // Bytes too.
        let d = data_header(41, ACK_BYTES as u32, 1);
        s.data(h(0), &d).unwrap();
        assert!(s.verified(&d, 1, t + ACK_INTERVAL, String::new).unwrap().unwrap().tell);
        // STREAM_END is told at once.
        let (_, p) = s.control(Frame::StreamEnd { frames: 42, bytes: 4000 + 1 + (ACK_BYTES) }, t + ACK_INTERVAL).unwrap();
        assert_eq!(p, Some(Processed { frames: 43, tell: true }));
        assert_eq!(s.totals(), (42, 4001 + ACK_BYTES));
    }

    #[test]
    fn a_block_cut_before_it_was_verified_is_not_counted_and_comes_again() {
        let t = Instant::now();
        let mut s = Inbound::new(2, "peer", caps::RESUME, false);
        let d0 = data_header(0, 5, 9);
        s.data(h(0), &d0).unwrap();
        s.verified(&d0, 9, t, String::new).unwrap();
        let d1 = data_header(1, 5, 9);
        s.data(h(0), &d1).unwrap();
        // The connection broke while the payload was read.
        assert_eq!(s.rejoined(t), 1);
        s.data(h(0), &d1).unwrap();
        s.verified(&d1, 9, t, String::new).unwrap();
        assert_eq!(s.totals(), (2, 10));
    }
}
