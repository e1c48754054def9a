//! One sender stream's numbering, without I/O: the sequence number of each
//! DATA frame and the totals STREAM_END states. Tree and streamed sessions
//! share it, so both count exactly as the receiver's [`super::Inbound`]
//! checks. What is kept for a resend is [`crate::resume::ReplayLog`]'s.

use crate::wire::{DataHeader, Frame};
use crate::{Error, Result};

/// A sender stream's count of DATA frames.
#[derive(Debug, Default)]
pub struct Outbound {
    seq: u32,
    frames: u64,
    bytes: u64,
    /// All 2^32 sequence numbers were used.
    exhausted: bool,
}

impl Outbound {
    pub fn new() -> Self {
        Self::default()
    }

    /// The header of the next DATA frame: a block of `len` bytes of file
    /// `file_id` at `offset` whose decoded bytes sum to `checksum`. It is
    /// counted now: a frame that fails to go out is sent again under the
    /// same header after a reconnection, or the session fails.
    pub fn block(&mut self, file_id: u32, offset: u64, len: u32, checksum: u64) -> Result<DataHeader> {
        if self.exhausted {
            return Err(Error::Config("more than 2^32 blocks on one stream; raise --block-size".into()));
        }
        let header = DataHeader { file_id, seq: self.seq, offset, raw_len: len, checksum };
        match self.seq.checked_add(1) {
            Some(next) => self.seq = next,
            None => self.exhausted = true,
        }
        self.frames += 1;
        self.bytes += u64::from(len);
        Ok(header)
    }

    /// DATA frames and data bytes so far.
    pub fn totals(&self) -> (u64, u64) {
        (self.frames, self.bytes)
    }

    /// The stream's last frame.
    pub fn end(&self) -> Frame {
        Frame::StreamEnd { frames: self.frames, bytes: self.bytes }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_numbered_and_summed_and_the_end_states_it() {
        let mut o = Outbound::new();
        assert_eq!(o.block(3, 0, 10, 1).unwrap().seq, 0);
        let h = o.block(3, 10, 5, 2).unwrap();
        assert_eq!((h.seq, h.file_id, h.offset, h.raw_len, h.checksum), (1, 3, 10, 5, 2));
        assert_eq!(o.totals(), (2, 15));
        assert_eq!(o.end(), Frame::StreamEnd { frames: 2, bytes: 15 });
    }

    #[test]
    fn the_last_sequence_number_is_used_once_then_the_stream_says_why_it_stops() {
        let mut o = Outbound { seq: u32::MAX, ..Outbound::default() };
        assert_eq!(o.block(0, 0, 1, 0).unwrap().seq, u32::MAX);
        let e = o.block(0, 1, 1, 0).unwrap_err().to_string();
        assert!(e.contains("2^32 blocks"), "{e}");
    }
}
