//! The manifest and the block queue.
//!
//! Owns what a session transfers (entries with ids, kinds, modes, times and
//! sparse data extents), the rule for which relative paths are acceptable,
//! the order in which blocks are sent (largest files first) and the per-file
//! tallies both ends keep to decide when a file is complete. No I/O here:
//! everything is driven by the callers and unit-tested in memory.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::codec;

/// What a manifest entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum EntryKind {
    File = 1,
    Dir = 2,
    Symlink = 3,
}

/// A range of a file that holds data; everything outside is a hole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
}

/// One file, directory or symlink of the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Index of the entry in the manifest, starting at 0.
    pub id: u32,
    pub kind: EntryKind,
    /// Relative path with `/` separators, validated by [`validate_rel_path`].
    pub path: Vec<u8>,
    /// Permission bits (`0o7777` at most).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    /// Logical size (regular files only).
    pub size: u64,
    /// Sorted, non-overlapping data ranges within `size` (regular files only).
    pub extents: Vec<Extent>,
    /// Symlink target, stored verbatim and never followed by the receiver.
    pub link_target: Vec<u8>,
}

impl Entry {
    /// An entry with mode 0644, owner 0:0, mtime 0, and — for a regular file
    /// of `size` bytes — one data extent covering it all.
    pub fn new(id: u32, kind: EntryKind, path: &[u8], size: u64) -> Self {
        let extents = if kind == EntryKind::File && size > 0 { vec![Extent { offset: 0, len: size }] } else { Vec::new() };
        Self {
            id,
            kind,
            path: path.to_vec(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime_sec: 0,
            mtime_nsec: 0,
            size,
            extents,
            link_target: Vec::new(),
        }
    }

    /// Bytes of data (not holes) this entry carries.
    pub fn data_bytes(&self) -> u64 {
        self.extents.iter().map(|x| x.len).sum()
    }

    pub fn display_path(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }
}

/// Name of the marker the receiver keeps in its destination until the
/// session is verified and durable; a manifest may not use it.
pub const INCOMPLETE_MARKER: &str = ".sluice-incomplete";

/// Name of the receiver's journal of verified, durable ranges (see
/// [`crate::journal`]); a manifest may not use it, nor its temporary name.
pub const JOURNAL_FILE: &str = ".sluice-journal";

/// The journal's name while it is rewritten.
pub const JOURNAL_TEMP: &str = ".sluice-journal.tmp";

/// Checks that a peer-supplied path stays inside the destination: relative,
/// no `.` or `..` or empty components, no NUL, bounded lengths, and not the
/// receiver's own marker.
pub fn validate_rel_path(path: &[u8]) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("empty path");
    }
    if path.len() > crate::wire::MAX_PATH {
        return Err("path too long");
    }
    if path[0] == b'/' {
        return Err("absolute path");
    }
    if path.contains(&0) {
        return Err("NUL byte in path");
    }
    for comp in path.split(|&b| b == b'/') {
        match comp {
            b"" => return Err("empty path component"),
            b"." | b".." => return Err("`.` or `..` component"),
            c if c.len() > crate::wire::MAX_COMPONENT => return Err("path component too long"),
            _ => {}
        }
    }
    if [INCOMPLETE_MARKER, JOURNAL_FILE, JOURNAL_TEMP].iter().any(|n| path == n.as_bytes()) {
        return Err("reserved name");
    }
    Ok(())
}

/// Merges extents until at most `max` remain, so a badly fragmented sparse
/// file still fits in one manifest entry (merged gaps are sent as zeros).
pub fn coalesce_extents(mut extents: Vec<Extent>, max: usize) -> Vec<Extent> {
    if extents.len() <= max || extents.is_empty() {
        return extents;
    }
    // Merge across the smallest gaps first: pick the gap threshold that
    // leaves at most `max` extents.
    let mut gaps: Vec<u64> = extents.windows(2).map(|w| w[1].offset - (w[0].offset + w[0].len)).collect();
    gaps.sort_unstable();
    let threshold = gaps[extents.len() - max - 1];
    let mut out: Vec<Extent> = Vec::with_capacity(max);
    for x in extents.drain(..) {
        let full = out.len() >= max;
        if let Some(last) = out.last_mut() {
            let gap = x.offset - (last.offset + last.len);
            if gap <= threshold || full {
                last.len = x.offset + x.len - last.offset;
                continue;
            }
        }
        out.push(x);
    }
    out
}

/// `extents` less the ranges of `held` (sorted, non-overlapping): what is
/// left to send of a file whose receiver already holds `held`.
pub fn subtract_extents(extents: &[Extent], held: &[Extent]) -> Vec<Extent> {
    let mut out = Vec::with_capacity(extents.len());
    let mut h = 0;
    for x in extents {
        let (mut at, end) = (x.offset, x.offset + x.len);
        // Skip held ranges that end before this extent.
        while h < held.len() && held[h].offset + held[h].len <= at {
            h += 1;
        }
        let mut k = h;
        while at < end {
            match held.get(k) {
                Some(r) if r.offset < end => {
                    if r.offset > at {
                        out.push(Extent { offset: at, len: r.offset - at });
                    }
                    at = at.max(r.offset + r.len);
                    k += 1;
                }
                _ => {
                    out.push(Extent { offset: at, len: end - at });
                    at = end;
                }
            }
        }
    }
    out
}

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
        let mut files: Vec<(u64, u32, Vec<Extent>)> = entries
            .iter()
            .filter(|e| e.kind == EntryKind::File && !e.extents.is_empty())
            .map(|e| (e.data_bytes(), e.id, e.extents.clone()))
            .collect();
        // Largest first; ties by id for a deterministic order.
        files.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        Self {
            files: files.into_iter().map(|(_, id, x)| (id, x)).collect(),
            block_size: u64::from(block_size),
            cursor: Mutex::new(Cursor::default()),
        }
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
        let i = b.file_id as usize;
        self.digest[i].fetch_add(codec::block_digest(b.file_id, b.offset, b.len, checksum), Ordering::AcqRel);
        // AcqRel on both counters: the thread that takes `remaining` to zero
        // sees every other thread's digest contribution.
        if self.remaining[i].fetch_sub(1, Ordering::AcqRel) == 1 { Some(self.digest[i].load(Ordering::Acquire)) } else { None }
    }
}

/// What the receiver learns from one event about a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
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
    #[error("received {got} bytes but the manifest announced {expected}")]
    TooMuch { got: u64, expected: u64 },
    #[error("file digest mismatch: sender {sender:#018x}, receiver {receiver:#018x}")]
    Digest { sender: u64, receiver: u64 },
    #[error("file announced done twice")]
    DoneTwice,
    #[error("entry is not a regular file")]
    NotAFile,
}

/// Receiver-side tally of one file.
#[derive(Debug)]
struct FileState {
    expected: u64,
    received: u64,
    digest: u64,
    announced: Option<u64>,
}

/// Receiver-side tallies for every file: checks each block against the
/// manifest's extents, sums the digest, and says when a file is complete.
#[derive(Debug)]
pub struct RecvTally {
    files: Vec<Mutex<FileState>>,
    completed: AtomicU32,
    regular: u32,
}

impl RecvTally {
    pub fn new(entries: &[Entry]) -> Self {
        let files: Vec<Mutex<FileState>> =
            entries.iter().map(|e| Mutex::new(FileState { expected: e.data_bytes(), received: 0, digest: 0, announced: None })).collect();
        let regular = entries.iter().filter(|e| e.kind == EntryKind::File).count() as u32;
        Self { files, completed: AtomicU32::new(0), regular }
    }

    /// Counts `held` bytes of file `id` as arrived before the session (a
    /// resumed receiver's journal holds them): the file is complete when
    /// the rest arrives, and the sender's digest covers only the rest.
    pub fn credit(&self, id: u32, held: u64) {
        let mut f = self.lock(id);
        f.expected = f.expected.saturating_sub(held);
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
    pub fn record_block(&self, id: u32, offset: u64, len: u32, checksum: u64) -> Result<Progress, TallyError> {
        let mut f = self.lock(id);
        f.received += u64::from(len);
        if f.received > f.expected {
            return Err(TallyError::TooMuch { got: f.received, expected: f.expected });
        }
        f.digest = f.digest.wrapping_add(codec::block_digest(id, offset, len, checksum));
        self.progress(&f)
    }

    /// Records the sender's FILE_DONE digest.
    pub fn record_done(&self, id: u32, digest: u64) -> Result<Progress, TallyError> {
        let mut f = self.lock(id);
        if f.announced.is_some() {
            return Err(TallyError::DoneTwice);
        }
        f.announced = Some(digest);
        self.progress(&f)
    }

    fn progress(&self, f: &FileState) -> Result<Progress, TallyError> {
        match f.announced {
            Some(d) if f.received == f.expected => {
                if d != f.digest {
                    return Err(TallyError::Digest { sender: d, receiver: f.digest });
                }
                self.completed.fetch_add(1, Ordering::AcqRel);
                Ok(Progress::Complete)
            }
            _ => Ok(Progress::Pending),
        }
    }

    /// Whether a file with data has been completed (files without data
    /// extents complete without any frame).
    pub fn is_complete(&self, id: u32) -> bool {
        let f = self.lock(id);
        f.expected == 0 || (f.announced.is_some() && f.received == f.expected)
    }

    /// Files still missing data or their FILE_DONE, as (id, received, expected).
    pub fn incomplete(&self) -> Vec<(u32, u64, u64)> {
        self.files
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                let f = m.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                (f.expected > 0 && !(f.announced.is_some() && f.received == f.expected)).then_some((i as u32, f.received, f.expected))
            })
            .collect()
    }

    pub fn regular_files(&self) -> u32 {
        self.regular
    }

    fn lock(&self, id: u32) -> std::sync::MutexGuard<'_, FileState> {
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
    fn paths_are_confined() {
        assert!(validate_rel_path(b"a/b/c.ibd").is_ok());
        assert!(validate_rel_path("données/é x".as_bytes()).is_ok());
        for bad in
            [&b"/a"[..], b"..", b"a/..", b"a//b", b"a/", b"", b"a\0b", b".sluice-incomplete", b".sluice-journal", b".sluice-journal.tmp"]
        {
            assert!(validate_rel_path(bad).is_err(), "{bad:?}");
        }
        assert!(validate_rel_path(&vec![b'x'; 256]).is_err());
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
        assert_eq!(recv.record_done(0, digest), Ok(Progress::Pending));
        for b in blocks.iter().rev() {
            RecvTally::check_range(&entries[0], b.offset, b.len).unwrap();
            let p = recv.record_block(0, b.offset, b.len, u64::from(b.len) * 7).unwrap();
            assert_eq!(p == Progress::Complete, b.offset == 0);
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
    fn subtracting_held_ranges_leaves_the_rest() {
        let x = |offset, len| Extent { offset, len };
        let extents = [x(0, 100), x(200, 50), x(300, 10)];
        assert_eq!(subtract_extents(&extents, &[]), extents.to_vec());
        assert_eq!(subtract_extents(&extents, &[x(0, 100), x(200, 50), x(300, 10)]), vec![]);
        assert_eq!(subtract_extents(&extents, &[x(10, 20), x(90, 120)]), vec![x(0, 10), x(30, 60), x(210, 40), x(300, 10)]);
        assert_eq!(subtract_extents(&extents, &[x(0, 1000)]), vec![]);
        assert_eq!(subtract_extents(&extents, &[x(305, 1)]), vec![x(0, 100), x(200, 50), x(300, 5), x(306, 4)]);
    }

    proptest::proptest! {
        /// Held ranges (any, even outside the data) and what is left to
        /// send partition the extents: every data byte exactly once.
        #[test]
        fn what_is_left_and_what_is_held_cover_each_byte_once(
            cuts in proptest::collection::btree_set(0u64..400, 0..24),
            held_cuts in proptest::collection::btree_set(0u64..400, 0..24),
        ) {
            let pairs = |c: &std::collections::BTreeSet<u64>| -> Vec<Extent> {
                let v: Vec<u64> = c.iter().copied().collect();
                v.chunks_exact(2).filter(|p| p[1] > p[0]).map(|p| Extent { offset: p[0], len: p[1] - p[0] }).collect()
            };
            let (extents, held) = (pairs(&cuts), pairs(&held_cuts));
            let left = subtract_extents(&extents, &held);
            let in_any = |xs: &[Extent], b: u64| xs.iter().filter(|x| x.offset <= b && b < x.offset + x.len).count();
            for b in 0..400 {
                let data = in_any(&extents, b);
                proptest::prop_assert_eq!(in_any(&left, b), usize::from(data == 1 && in_any(&held, b) == 0), "byte {}", b);
            }
            // Each piece lies within one extent, so it can be sent as blocks.
            for x in &left {
                proptest::prop_assert!(extents.iter().any(|e| e.offset <= x.offset && x.offset + x.len <= e.offset + e.len));
            }
        }
    }

    #[test]
    fn a_credited_file_completes_with_the_rest() {
        let entries = vec![file(0, vec![Extent { offset: 0, len: 30 }], 30), file(1, vec![Extent { offset: 0, len: 10 }], 10)];
        let recv = RecvTally::new(&entries);
        recv.credit(0, 20);
        recv.credit(1, 10);
        assert!(recv.is_complete(1), "a file held whole needs no frame");
        assert_eq!(recv.record_block(0, 20, 10, 5), Ok(Progress::Pending));
        let digest = codec::block_digest(0, 20, 10, 5);
        assert_eq!(recv.record_done(0, digest), Ok(Progress::Complete));
        assert!(recv.incomplete().is_empty());
    }

    #[test]
    fn coalescing_bounds_extent_count() {
        let x: Vec<Extent> = (0..100).map(|i| Extent { offset: i * 10 + (i % 3), len: 5 }).collect();
        let c = coalesce_extents(x.clone(), 10);
        assert!(c.len() <= 10);
        assert_eq!(c[0].offset, x[0].offset);
        let last = c.last().unwrap();
        assert_eq!(last.offset + last.len, x[99].offset + 5);
        assert!(c.windows(2).all(|w| w[0].offset + w[0].len < w[1].offset));
    }
}
