//! The block queue and the per-file tallies.
//!
//! Owns the order in which blocks are sent (largest files first) and the
//! per-file tallies both ends keep to decide when a file is complete; the
//! entries themselves are [`crate::manifest`]'s. No I/O here: everything
//! is driven by the callers and unit-tested in memory.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::digest;
use crate::manifest::{Entry, EntryKind, Extent};

/// One unit of work for a sender stream: a block of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub file_id: u32,
    pub offset: u64,
    pub len: u32,
}

/// The block queue shared by all sender streams: files in descending order
/// of data size, each split into blocks of at most `block_size` that never
/// cross an extent boundary. Memory is O(files), not O(blocks).
#[derive(Debug)]
pub struct Schedule {
    files: Vec<(u32, Vec<Extent>)>,
    block_size: u64,
    cursor: Mutex<Cursor>,
}

#[derive(Debug, Default)]
struct Cursor {
    file: usize,
    extent: usize,
    offset: u64,
}

impl Schedule {
    pub fn new(entries: &[Entry], block_size: u32) -> Self {
        assert!(block_size > 0, "block size must be positive");
        Self {
            files: Self::order(entries).into_iter().map(|id| (id, entries[id as usize].extents.clone())).collect(),
            block_size: u64::from(block_size),
            cursor: Mutex::new(Cursor::default()),
        }
    }

    /// The files with data in the order their blocks are sent: largest
    /// first, ties by id (a delta receiver fingerprints in this order).
    pub fn order(entries: &[Entry]) -> Vec<u32> {
        let mut files: Vec<(u64, u32)> =
            entries.iter().filter(|e| e.kind == EntryKind::File && !e.extents.is_empty()).map(|e| (e.data_bytes(), e.id)).collect();
        files.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        files.into_iter().map(|(_, id)| id).collect()
    }

    /// Number of blocks a file with these extents is split into.
    pub fn blocks_in(extents: &[Extent], block_size: u32) -> u64 {
        extents.iter().map(|x| x.len.div_ceil(u64::from(block_size))).sum()
    }

    /// The next block to send, or `None` when the queue is empty.
    pub fn next_block(&self) -> Option<Block> {
        // A poisoned lock means a sender thread panicked; the session fails
        // through that thread's join, so handing out no more work is right.
        let mut c = self.cursor.lock().ok()?;
        loop {
            let (id, extents) = self.files.get(c.file)?;
            let Some(x) = extents.get(c.extent) else {
                c.file += 1;
                c.extent = 0;
                c.offset = 0;
                continue;
            };
            let start = x.offset + c.offset;
            let len = (x.len - c.offset).min(self.block_size);
            c.offset += len;
            if c.offset == x.len {
                c.extent += 1;
                c.offset = 0;
            }
            return Some(Block { file_id: *id, offset: start, len: len as u32 });
        }
    }
}

/// Sender-side tally: counts blocks sent per file and accumulates the file
/// digest, so the stream that sends a file's last block can announce it.
#[derive(Debug)]
pub struct SendTally {
    remaining: Vec<AtomicU64>,
    digest: Vec<AtomicU64>,
}

impl SendTally {
    pub fn new(entries: &[Entry], block_size: u32) -> Self {
        Self {
            remaining: entries.iter().map(|e| AtomicU64::new(Schedule::blocks_in(&e.extents, block_size))).collect(),
            digest: entries.iter().map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Records a sent block; returns the file digest if it was the last one.
    pub fn record(&self, b: &Block, checksum: u64) -> Option<u64> {
        self.record_digest(b, digest::block_digest(b.file_id, b.offset, b.len, checksum))
    }

    /// Records a block sent in pieces (a delta's data and references),
    /// `sum` being the wrapping sum of the pieces' block digests.
    pub fn record_digest(&self, b: &Block, sum: u64) -> Option<u64> {
        let i = b.file_id as usize;
        self.digest[i].fetch_add(sum, Ordering::AcqRel);
        // AcqRel on both counters: the thread that takes `remaining` to zero
        // sees every other thread's digest contribution.
        if self.remaining[i].fetch_sub(1, Ordering::AcqRel) == 1 { Some(self.digest[i].load(Ordering::Acquire)) } else { None }
    }
}

/// What the receiver learns from one event about a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// More data or the FILE_DONE frame is still to come.
    Pending,
    /// Every byte arrived and the digest matched: finalize the file.
    Complete,
}

/// Why a received range or digest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TallyError {
    #[error("block at offset {offset} (+{len}) lies outside the file's data extents")]
    OutsideExtents { offset: u64, len: u32 },
    #[error("received {got} bytes but the sender announced {expected}")]
    TooMuch { got: u64, expected: u64 },
    #[error("file digest mismatch: sender {sender:#018x}, receiver {receiver:#018x}")]
    Digest { sender: u64, receiver: u64 },
    #[error("file announced done twice")]
    DoneTwice,
    #[error("entry is not a regular file")]
    NotAFile,
}

/// One file's tally on the receiver, for manifest and streamed sessions
/// alike: the bytes and the digest of its verified blocks against what the
/// sender said at the file's end (FILE_DONE, with the data bytes the
/// manifest announced; FILE_END, with its own). Complete when both agree,
/// in whatever order its blocks and its end arrive.
#[derive(Debug, Clone, Default)]
pub struct FileTally {
    /// The data bytes the file carries, once known.
    expected: Option<u64>,
    received: u64,
    digest: u64,
    /// The sender's digest, from the file's end.
    announced: Option<u64>,
    complete: bool,
}

impl FileTally {
    /// A file whose data bytes are known from the start (a manifest).
    pub fn expecting(bytes: u64) -> Self {
        Self { expected: Some(bytes), ..Self::default() }
    }

    /// Counts `held` bytes as arrived before the session (see
    /// [`RecvTally::credit`]).
    pub fn credit(&mut self, held: u64) {
        self.expected = self.expected.map(|e| e.saturating_sub(held));
    }

    /// Records a verified block (its checksum was checked by the caller).
    pub fn block(&mut self, id: u32, offset: u64, len: u32, checksum: u64) -> Result<Completion, TallyError> {
        self.received += u64::from(len);
        self.digest = self.digest.wrapping_add(digest::block_digest(id, offset, len, checksum));
        self.progress()
    }

    /// Records the sender's end of the file: its digest and, when the
    /// manifest did not say, its data bytes.
    pub fn end(&mut self, data_bytes: Option<u64>, digest: u64) -> Result<Completion, TallyError> {
        if self.announced.is_some() {
            return Err(TallyError::DoneTwice);
        }
        self.announced = Some(digest);
        if self.expected.is_none() {
            self.expected = data_bytes;
        }
        self.progress()
    }

    fn progress(&mut self) -> Result<Completion, TallyError> {
        match self.expected {
            Some(e) if self.received > e => Err(TallyError::TooMuch { got: self.received, expected: e }),
            Some(e) if self.received == e && !self.complete => match self.announced {
                Some(d) if d != self.digest => Err(TallyError::Digest { sender: d, receiver: self.digest }),
                Some(_) => {
                    self.complete = true;
                    Ok(Completion::Complete)
                }
                None => Ok(Completion::Pending),
            },
            _ => Ok(Completion::Pending),
        }
    }

    /// Every byte arrived and the digest matched (a file with no data:
    /// from the start).
    pub fn is_complete(&self) -> bool {
        self.complete || self.expected == Some(0)
    }

    /// Data bytes verified so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The data bytes the file carries, once known.
    pub fn expected(&self) -> Option<u64> {
        self.expected
    }
}

/// Receiver-side tallies for every file: checks each block against the
/// manifest's extents, sums the digest, and says when a file is complete.
#[derive(Debug)]
pub struct RecvTally {
    files: Vec<Mutex<FileTally>>,
    completed: AtomicU32,
    regular: u32,
}

impl RecvTally {
    pub fn new(entries: &[Entry]) -> Self {
        let files: Vec<Mutex<FileTally>> = entries.iter().map(|e| Mutex::new(FileTally::expecting(e.data_bytes()))).collect();
        let regular = entries.iter().filter(|e| e.kind == EntryKind::File).count() as u32;
        Self { files, completed: AtomicU32::new(0), regular }
    }

    /// Counts `held` bytes of file `id` as arrived before the session (a
    /// resumed receiver's journal holds them): the file is complete when
    /// the rest arrives, and the sender's digest covers only the rest.
    pub fn credit(&self, id: u32, held: u64) {
        self.lock(id).credit(held);
    }

    /// Validates that a block lies inside one data extent of `entry`.
    pub fn check_range(entry: &Entry, offset: u64, len: u32) -> Result<(), TallyError> {
        if entry.kind != EntryKind::File {
            return Err(TallyError::NotAFile);
        }
        let end = offset.saturating_add(u64::from(len));
        let i = entry.extents.partition_point(|x| x.offset + x.len <= offset);
        match entry.extents.get(i) {
            Some(x) if len > 0 && x.offset <= offset && end <= x.offset + x.len => Ok(()),
            _ => Err(TallyError::OutsideExtents { offset, len }),
        }
    }

    /// Records a verified block (its checksum was checked by the caller).
    pub fn record_block(&self, id: u32, offset: u64, len: u32, checksum: u64) -> Result<Completion, TallyError> {
        let c = self.lock(id).block(id, offset, len, checksum)?;
        Ok(self.count(c))
    }

    /// Records the sender's FILE_DONE digest.
    pub fn record_done(&self, id: u32, digest: u64) -> Result<Completion, TallyError> {
        let c = self.lock(id).end(None, digest)?;
        Ok(self.count(c))
    }

    fn count(&self, c: Completion) -> Completion {
        if c == Completion::Complete {
            self.completed.fetch_add(1, Ordering::AcqRel);
        }
        c
    }

    /// Whether a file with data has been completed (files without data
    /// extents complete without any frame).
    pub fn is_complete(&self, id: u32) -> bool {
        self.lock(id).is_complete()
    }

    /// Data bytes of file `id` verified so far.
    pub fn received(&self, id: u32) -> u64 {
        self.lock(id).received()
    }

    /// Files still missing data or their FILE_DONE, as (id, received, expected).
    pub fn incomplete(&self) -> Vec<(u32, u64, u64)> {
        self.files
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                let f = m.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                (!f.is_complete()).then(|| (i as u32, f.received(), f.expected().unwrap_or(0)))
            })
            .collect()
    }

    pub fn regular_files(&self) -> u32 {
        self.regular
    }

    fn lock(&self, id: u32) -> std::sync::MutexGuard<'_, FileTally> {
        // A poisoned lock only means another receiver thread panicked while
        // holding it; the counters are still consistent enough to report.
        self.files[id as usize].lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(id: u32, extents: Vec<Extent>, size: u64) -> Entry {
        Entry { extents, ..Entry::new(id, EntryKind::File, format!("f{id}").as_bytes(), size) }
    }

    #[test]
    fn schedule_sends_largest_first_and_splits_on_extents() {
        let entries = vec![
            file(0, vec![Extent { offset: 0, len: 10 }], 10),
            file(1, vec![Extent { offset: 0, len: 25 }, Extent { offset: 100, len: 5 }], 105),
            file(2, vec![], 0),
        ];
        let s = Schedule::new(&entries, 10);
        let blocks: Vec<Block> = std::iter::from_fn(|| s.next_block()).collect();
        let want = [(1, 0, 10), (1, 10, 10), (1, 20, 5), (1, 100, 5), (0, 0, 10)];
        assert_eq!(blocks.len(), want.len());
        for (b, (id, off, len)) in blocks.iter().zip(want) {
            assert_eq!((b.file_id, b.offset, b.len), (id, off, len));
        }
        assert_eq!(Schedule::blocks_in(&entries[1].extents, 10), 4);
    }

    #[test]
    fn tallies_agree_in_any_order() {
        let entries = vec![file(0, vec![Extent { offset: 0, len: 30 }], 30)];
        let s = Schedule::new(&entries, 10);
        let send = SendTally::new(&entries, 10);
        let recv = RecvTally::new(&entries);
        let blocks: Vec<Block> = std::iter::from_fn(|| s.next_block()).collect();
        let mut digest = None;
        for b in &blocks {
            digest = send.record(b, u64::from(b.len) * 7).or(digest);
        }
        let digest = digest.expect("last block yields the digest");
        assert_eq!(recv.record_done(0, digest), Ok(Completion::Pending));
        for b in blocks.iter().rev() {
            RecvTally::check_range(&entries[0], b.offset, b.len).unwrap();
            let p = recv.record_block(0, b.offset, b.len, u64::from(b.len) * 7).unwrap();
            assert_eq!(p == Completion::Complete, b.offset == 0);
        }
        assert!(recv.incomplete().is_empty());
    }

    #[test]
    fn duplicate_or_foreign_blocks_are_caught() {
        let entries = vec![file(0, vec![Extent { offset: 0, len: 20 }], 40)];
        let recv = RecvTally::new(&entries);
        assert!(RecvTally::check_range(&entries[0], 15, 10).is_err());
        assert!(RecvTally::check_range(&entries[0], 30, 1).is_err());
        recv.record_block(0, 0, 10, 1).unwrap();
        recv.record_block(0, 0, 10, 1).unwrap(); // duplicate: bytes add up, digest will not
        assert!(matches!(recv.record_done(0, 0), Err(TallyError::Digest { .. })));
        assert!(matches!(recv.record_block(0, 10, 10, 1), Err(TallyError::TooMuch { .. })));
    }

    #[test]
    fn a_credited_file_completes_with_the_rest() {
        let entries = vec![file(0, vec![Extent { offset: 0, len: 30 }], 30), file(1, vec![Extent { offset: 0, len: 10 }], 10)];
        let recv = RecvTally::new(&entries);
        recv.credit(0, 20);
        recv.credit(1, 10);
        assert!(recv.is_complete(1), "a file held whole needs no frame");
        assert_eq!(recv.record_block(0, 20, 10, 5), Ok(Completion::Pending));
        let digest = digest::block_digest(0, 20, 10, 5);
        assert_eq!(recv.record_done(0, digest), Ok(Completion::Complete));
        assert!(recv.incomplete().is_empty());
    }

    #[test]
    fn a_streamed_file_learns_its_size_at_its_end_in_either_order() {
        let sums = [(0u64, 10u32, 7u64), (10, 5, 9)];
        let digest = sums.iter().fold(0u64, |d, &(o, l, c)| d.wrapping_add(digest::block_digest(4, o, l, c)));
        // Blocks first, then FILE_END.
        let mut t = FileTally::default();
        for &(o, l, c) in &sums {
            assert_eq!(t.block(4, o, l, c).unwrap(), Completion::Pending);
        }
        assert_eq!(t.end(Some(15), digest).unwrap(), Completion::Complete);
        assert!(t.is_complete());
        // FILE_END first: the last block completes it.
        let mut t = FileTally::default();
        assert_eq!(t.end(Some(15), digest).unwrap(), Completion::Pending);
        assert_eq!(t.block(4, 10, 5, 9).unwrap(), Completion::Pending);
        assert_eq!(t.block(4, 0, 10, 7).unwrap(), Completion::Complete);
        // More than announced, a wrong digest, a second end: named.
        let mut t = FileTally::default();
        t.end(Some(10), digest).unwrap();
        assert_eq!(t.block(4, 0, 15, 1), Err(TallyError::TooMuch { got: 15, expected: 10 }));
        let mut t = FileTally::expecting(10);
        t.block(4, 0, 10, 7).unwrap();
        assert!(matches!(t.end(None, 1), Err(TallyError::Digest { sender: 1, .. })));
        assert_eq!(t.end(None, 1), Err(TallyError::DoneTwice));
        // An empty file is complete at its end, with the empty digest.
        let mut t = FileTally::default();
        assert_eq!(t.end(Some(0), 0).unwrap(), Completion::Complete);
    }
}
