//! The receiver's manifest intake and its final count, without I/O.
//!
//! [`Intake`] takes the frames of stream 0 up to MANIFEST_END and checks
//! what a hostile sender could get wrong: ids in sequence, the receiver's
//! entry limit (checked before each entry is kept, so memory is bounded by
//! the limit, not by the peer), the announced count and data bytes, paths
//! unique, and every entry's parent a directory listed before it.
//! [`check_end`] compares END's totals with what arrived.

use std::collections::HashSet;

use crate::manifest::{Entry, EntryKind};
use crate::wire::{Frame, MAX_ENTRIES};

use crate::{Error, Result};

/// A manifest being received.
#[derive(Debug)]
pub struct Intake {
    peer: String,
    limit: u64,
    entries: Vec<Entry>,
}

/// What the receiver counted, against which END's totals are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrived {
    /// Entries of the session (manifest entries, or announced files).
    pub entries: u64,
    /// Data bytes received on all streams.
    pub bytes: u64,
    /// DATA frames received on all streams.
    pub frames: u64,
    /// Data bytes the session was to carry (the manifest's, less what a
    /// resumed receiver held).
    pub expected_bytes: u64,
}

impl Intake {
    /// A manifest from `peer`, refused beyond `max_entries` entries.
    pub fn new(peer: &str, max_entries: u64) -> Self {
        Self { peer: peer.to_string(), limit: max_entries.min(MAX_ENTRIES), entries: Vec::new() }
    }

    fn bad(&self, reason: &str) -> Error {
        Error::peer(&self.peer, format!("sent a bad manifest: {reason}"))
    }

    /// Takes the next frame: `None` while the manifest goes on, the entries
    /// and data bytes after MANIFEST_END.
    pub fn take(&mut self, frame: Frame) -> Result<Option<(Vec<Entry>, u64)>> {
        match frame {
            Frame::Manifest(batch) => {
                for e in batch {
                    if e.id as usize != self.entries.len() {
                        return Err(self.bad(&format!("entry id {} out of sequence", e.id)));
                    }
                    if self.entries.len() as u64 >= self.limit {
                        return Err(self.bad(&format!(
                            "more than {} entries (the receiver's limit; raise it on the receiver for a larger tree)",
                            self.limit
                        )));
                    }
                    self.entries.push(e);
                }
                Ok(None)
            }
            Frame::ManifestEnd { entries: n, data_bytes } => {
                let entries = std::mem::take(&mut self.entries);
                if n != entries.len() as u64 {
                    return Err(self.bad(&format!("announced {n} entries but listed {}", entries.len())));
                }
                let sum: u64 = entries.iter().map(Entry::data_bytes).sum();
                if sum != data_bytes {
                    return Err(self.bad(&format!("announced {data_bytes} data bytes but the extents add up to {sum}")));
                }
                let mut dirs = HashSet::new();
                let mut all = HashSet::new();
                for e in &entries {
                    if !all.insert(e.path.as_slice()) {
                        return Err(self.bad(&format!("path {} listed twice", e.display_path())));
                    }
                    if let Some(i) = e.path.iter().rposition(|&b| b == b'/') {
                        if !dirs.contains(&e.path[..i]) {
                            return Err(self.bad(&format!("{} comes before (or without) its parent directory", e.display_path())));
                        }
                    }
                    if e.kind == EntryKind::Dir {
                        dirs.insert(e.path.as_slice());
                    }
                }
                Ok(Some((entries, data_bytes)))
            }
            Frame::Abort { reason } => Err(Error::SenderFailed(reason)),
            other => Err(Error::peer(&self.peer, format!("sent {:?} inside the manifest", other.kind()))),
        }
    }
}

/// Compares END's totals (`None`: stream 0 ended without END) with what
/// arrived: the verdict's count.
pub fn check_end(peer: &str, end: Option<(u64, u64, u64)>, got: Arrived) -> Result<()> {
    let Some((n, b, f)) = end else {
        return Err(Error::peer(peer, "ended stream 0 without END"));
    };
    if n != got.entries || b != got.bytes || f != got.frames || b != got.expected_bytes {
        return Err(Error::peer(
            peer,
            format!(
                "END totals ({n} entries, {b} bytes, {f} frames) disagree with what arrived ({} entries, {} bytes of {} announced, {} frames)",
                got.entries, got.bytes, got.expected_bytes, got.frames
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u32, kind: EntryKind, path: &str, data: u64) -> Entry {
        Entry::new(id, kind, path.as_bytes(), data)
    }

    fn run(frames: Vec<Frame>, limit: u64) -> Result<Option<(Vec<Entry>, u64)>> {
        let mut i = Intake::new("peer", limit);
        let mut last = None;
        for f in frames {
            last = i.take(f)?;
        }
        Ok(last)
    }

    #[test]
    fn a_good_manifest_in_batches_is_taken_whole() {
        let es = vec![entry(0, EntryKind::Dir, "d", 0), entry(1, EntryKind::File, "d/f", 7), entry(2, EntryKind::File, "g", 3)];
        let got = run(
            vec![Frame::Manifest(es[..1].to_vec()), Frame::Manifest(es[1..].to_vec()), Frame::ManifestEnd { entries: 3, data_bytes: 10 }],
            10,
        )
        .unwrap();
        assert_eq!(got, Some((es, 10)));
    }

    #[test]
    fn each_lie_of_a_manifest_is_named() {
        let f = |id, path: &str| entry(id, EntryKind::File, path, 1);
        let cases: Vec<(Vec<Frame>, u64, &str)> = vec![
            (vec![Frame::Manifest(vec![f(1, "a")])], 10, "entry id 1 out of sequence"),
            (vec![Frame::Manifest(vec![f(0, "a"), f(1, "b")])], 1, "more than 1 entries (the receiver's limit"),
            (
                vec![Frame::Manifest(vec![f(0, "a")]), Frame::ManifestEnd { entries: 2, data_bytes: 1 }],
                10,
                "announced 2 entries but listed 1",
            ),
            (vec![Frame::Manifest(vec![f(0, "a")]), Frame::ManifestEnd { entries: 1, data_bytes: 9 }], 10, "announced 9 data bytes"),
            (
                vec![Frame::Manifest(vec![f(0, "a"), f(1, "a")]), Frame::ManifestEnd { entries: 2, data_bytes: 2 }],
                10,
                "path a listed twice",
            ),
            (vec![Frame::Manifest(vec![f(0, "d/a")]), Frame::ManifestEnd { entries: 1, data_bytes: 1 }], 10, "d/a comes before"),
            (vec![Frame::StreamEnd { frames: 0, bytes: 0 }], 10, "sent StreamEnd inside the manifest"),
        ];
        for (frames, limit, want) in cases {
            let e = run(frames, limit).unwrap_err().to_string();
            assert!(e.contains(want), "{e} (wanted {want})");
        }
    }

    #[test]
    fn end_totals_must_match_what_arrived() {
        let got = Arrived { entries: 2, bytes: 10, frames: 3, expected_bytes: 10 };
        check_end("p", Some((2, 10, 3)), got).unwrap();
        assert!(check_end("p", None, got).unwrap_err().to_string().contains("without END"));
        for end in [(1, 10, 3), (2, 9, 3), (2, 10, 4)] {
            let e = check_end("p", Some(end), got).unwrap_err().to_string();
            assert!(e.contains("disagree with what arrived"), "{e}");
        }
        let short = Arrived { expected_bytes: 11, ..got };
        assert!(check_end("p", Some((2, 10, 3)), short).unwrap_err().to_string().contains("10 bytes of 11 announced"));
    }
}
