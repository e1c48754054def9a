//! Delta transfers (capability DELTA, issue 13): the receiver holds an
//! older copy of the tree; it fingerprints that copy's pages
//! ([`crate::fingerprint`]) and serves the fingerprints to the sender,
//! which sends a reference instead of every range whose pages are equal.
//!
//! Three parts, each without sockets:
//! - [`split`]: which pieces of a block travel and which are references,
//!   given which of its whole pages match;
//! - [`Book`]: the sender's store of the fingerprints that arrived, waited
//!   for by the streams and freed as their blocks are sent, bounded;
//! - [`serve`]: the receiver's walk over its old copy in the sender's
//!   order, paced so that it stays a bounded distance ahead of the data;
//! - [`Walks`]: the same for a streamed session, which has no order: each
//!   file as the sender announces it, in turns, each a bounded distance
//!   ahead of that file's data.
//!
//! (In a streamed session the sender's producer, [`crate::send::Feeder`],
//! does the cutting, so the file digests it computes cover the pieces.)
//!
//! Correctness never rests on a fingerprint: the receiver checks every
//! reference's bytes against the sender's xxh3 checksum, so a stale or
//! hostile fingerprint costs a block sent, or a named error, never a wrong
//! byte kept.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::fingerprint::{self, Fingerprint};
use crate::manifest::{Entry, EntryKind};
use crate::wire::{Frame, PRINT_PAGE, PRINTS_PER_FRAME};

/// Where a delta receiver's old copy is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    /// In the destination itself: files are updated in place (only the
    /// ranges that changed are written; a failed transfer leaves the
    /// destination marked incomplete).
    InPlace,
    /// In another directory (an SST joiner's datadir, received into a
    /// staging directory beside it): referenced ranges are copied from it.
    Dir(PathBuf),
}

/// How far ahead of the data the receiver fingerprints (bytes of the
/// sender's order): the sender holds at most this much in fingerprints
/// (2 MiB per GiB), whatever the tree's size.
pub const LEAD: u64 = 1 << 30;

/// Most fingerprints a sender keeps at once; a receiver that sends more
/// than its pacing allows fails the session.
pub const MAX_HELD: usize = (4 * LEAD / PRINT_PAGE) as usize;

/// The pages wholly inside the block `[offset, offset + len)`.
pub fn pages_within(offset: u64, len: u32) -> Range<u64> {
    let first = offset.div_ceil(PRINT_PAGE);
    let end = (offset + u64::from(len)) / PRINT_PAGE;
    first..end.max(first)
}

/// How a page (or a piece) travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// As data.
    Send,
    /// As a reference: the old copy holds it.
    Reference,
    /// As a run of zeros (DATA flagged ZERO): nothing to send.
    Zero,
}

/// One piece of a block and how it travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub offset: u64,
    pub len: u32,
    pub fate: Fate,
}

/// Whether `bytes` are all zero.
pub fn is_zero(bytes: &[u8]) -> bool {
    let body = bytes.len() / 16 * 16;
    bytes[..body].chunks_exact(16).all(|c| u128::from_ne_bytes(c.try_into().expect("16 bytes")) == 0)
        && bytes[body..].iter().all(|&b| b == 0)
}

/// How each page of [`pages_within`] a block travels: a reference when its
/// fingerprint equals the receiver's (`prints`, one per page from page
/// `first_page`; `None` where the receiver has none), zeros when it is
/// all zero, data otherwise. `data` is the block, which starts at `offset`.
pub fn fates(data: &[u8], offset: u64, first_page: u64, prints: &[Option<Fingerprint>]) -> Vec<Fate> {
    let page = PRINT_PAGE as usize;
    prints
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let at = ((first_page + i as u64) * PRINT_PAGE - offset) as usize;
            let bytes = &data[at..at + page];
            if p.is_some_and(|h| fingerprint::of(bytes) == h) {
                Fate::Reference
            } else if is_zero(bytes) {
                Fate::Zero
            } else {
                Fate::Send
            }
        })
        .collect()
}

/// Splits the block `[offset, offset + len)` into runs: each page of
/// [`pages_within`] travels as its `fates` entry says, everything else
/// (partial pages at the edges) as data. Adjacent pieces of one fate are
/// merged.
pub fn split(offset: u64, len: u32, fates: &[Fate]) -> Vec<Piece> {
    let pages = pages_within(offset, len);
    debug_assert_eq!(fates.len() as u64, pages.end - pages.start);
    let end = offset + u64::from(len);
    let mut out: Vec<Piece> = Vec::new();
    let mut push = |from: u64, to: u64, fate: Fate| {
        if to <= from {
            return;
        }
        match out.last_mut() {
            Some(p) if p.fate == fate && p.offset + u64::from(p.len) == from => p.len += (to - from) as u32,
            _ => out.push(Piece { offset: from, len: (to - from) as u32, fate }),
        }
    };
    push(offset, (pages.start * PRINT_PAGE).min(end), Fate::Send);
    for (i, &f) in fates.iter().enumerate() {
        let at = (pages.start + i as u64) * PRINT_PAGE;
        push(at, at + PRINT_PAGE, f);
    }
    push((pages.end * PRINT_PAGE).max(offset), end, Fate::Send);
    out
}

/// The fingerprints of one file that arrived and are not used yet.
#[derive(Debug, Default)]
struct FilePrints {
    /// Every fingerprint below this page has arrived (if it exists).
    upto: u64,
    /// The receiver said it sent this file's last fingerprint.
    last: bool,
    pages: BTreeMap<u64, Fingerprint>,
}

#[derive(Debug, Default)]
struct BookState {
    files: HashMap<u32, FilePrints>,
    held: usize,
    /// No more fingerprints will come on this connection (stream 0 broke,
    /// or a wait timed out): waits end at once.
    closed: bool,
    /// Stream 0's connection the fingerprints come on.
    generation: u32,
    /// A wait timed out: the receiver is silent, and the book stays closed.
    silent: bool,
    /// Files whose blocks are all sent: late fingerprints are dropped.
    forgotten: std::collections::HashSet<u32>,
    /// A streamed session's files announced so far.
    announced: std::collections::HashSet<u32>,
}

/// The sender's fingerprints: added by stream 0's reader as PRINTS frames
/// arrive, taken by the streams for their blocks.
#[derive(Debug)]
pub struct Book {
    /// Each manifest entry's size, for regular files; `None` in a streamed
    /// session, whose files are those the sender announced.
    sizes: Option<Vec<Option<u64>>>,
    state: Mutex<BookState>,
    changed: Condvar,
}

impl Book {
    /// A book for the session whose manifest is `entries`.
    pub fn new(entries: &[Entry]) -> Self {
        Self {
            sizes: Some(entries.iter().map(|e| (e.kind == EntryKind::File).then_some(e.size)).collect()),
            state: Mutex::default(),
            changed: Condvar::new(),
        }
    }

    /// A book for a streamed session: fingerprints are accepted for the
    /// files the sender has [`announced`](Self::announce).
    pub fn streamed() -> Self {
        Self { sizes: None, state: Mutex::default(), changed: Condvar::new() }
    }

    /// A streamed session's file `file_id` was announced to the receiver,
    /// which may now send its fingerprints.
    pub fn announce(&self, file_id: u32) {
        self.lock().announced.insert(file_id);
    }

    /// Whether [`take`](Self::take) of `pages` would return at once.
    pub fn ready(&self, file_id: u32, pages: Range<u64>) -> bool {
        let s = self.lock();
        pages.is_empty() || s.closed || s.files.get(&file_id).is_some_and(|f| f.last || f.upto >= pages.end)
    }

    fn lock(&self) -> MutexGuard<'_, BookState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A PRINTS frame that arrived on stream 0's connection `generation`:
    /// checked against the manifest (a file's pages come in order, within
    /// the file, and nothing after its last); one read late from a
    /// connection that has been replaced is dropped. `Err` names what the
    /// receiver did wrong.
    pub fn add(&self, generation: u32, file_id: u32, last: bool, first_page: u64, hashes: Vec<Fingerprint>) -> Result<(), String> {
        let mut s = self.lock();
        let size = match &self.sizes {
            Some(sizes) => sizes
                .get(file_id as usize)
                .copied()
                .flatten()
                .ok_or_else(|| format!("sent fingerprints of entry {file_id}, which is not a file of this manifest"))?,
            None if s.announced.contains(&file_id) => crate::catalog::MAX_STREAMED_FILE,
            None => return Err(format!("sent fingerprints of file {file_id}, which was not announced")),
        };
        let end = first_page.saturating_add(hashes.len() as u64);
        if end.saturating_mul(PRINT_PAGE) > size.next_multiple_of(PRINT_PAGE) {
            return Err(format!("sent fingerprints of entry {file_id} beyond its size"));
        }
        if s.forgotten.contains(&file_id) || generation < s.generation {
            return Ok(());
        }
        let f = s.files.entry(file_id).or_default();
        if f.last || first_page < f.upto {
            return Err(format!("sent fingerprints of entry {file_id} out of order"));
        }
        let mut added = 0;
        for (i, h) in hashes.into_iter().enumerate() {
            // (A page sent again after a reconnection replaces itself.)
            added += usize::from(f.pages.insert(first_page + i as u64, h).is_none());
        }
        f.upto = end;
        f.last = last;
        s.held += added;
        if s.held > MAX_HELD {
            return Err(format!("sent more than {MAX_HELD} fingerprints ahead of the data"));
        }
        drop(s);
        self.changed.notify_all();
        Ok(())
    }

    /// No more fingerprints will arrive: every wait ends now.
    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    /// Stream 0's connection `generation` ended: no more fingerprints
    /// arrive on it (a later connection may have reopened the book).
    pub fn close_connection(&self, generation: u32) {
        let mut s = self.lock();
        if s.generation == generation {
            s.closed = true;
            drop(s);
            self.changed.notify_all();
        }
    }

    /// Stream 0 reconnected (`generation`): the receiver walks its old
    /// copy again from the files it has not completed, so every file
    /// still in progress takes fingerprints from its first page again
    /// (those sent on the broken connection may be lost). A book closed
    /// because the receiver fell silent stays closed.
    pub fn reopen(&self, generation: u32) {
        let mut s = self.lock();
        if s.silent || generation <= s.generation {
            return;
        }
        s.generation = generation;
        s.closed = false;
        for f in s.files.values_mut() {
            f.upto = 0;
            f.last = false;
        }
        drop(s);
        self.changed.notify_all();
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// The fingerprints of `pages` of `file_id`, removed from the book:
    /// waits until the receiver has sent them (or said it has none), the
    /// book is closed, `stop` says so, or `wait` passes (then the book
    /// closes: a receiver that falls silent costs the delta, not the
    /// session). `None` where the receiver has no such page.
    pub fn take(&self, file_id: u32, pages: Range<u64>, wait: Duration, stop: &dyn Fn() -> bool) -> Vec<Option<Fingerprint>> {
        let deadline = Instant::now() + wait;
        let mut s = self.lock();
        loop {
            let ready = s.files.get(&file_id).is_some_and(|f| f.last || f.upto >= pages.end);
            if ready || s.closed || stop() {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                tracing::warn!("the receiver sent no fingerprints for {wait:?}; sending the rest without comparing");
                s.closed = true;
                s.silent = true;
                self.changed.notify_all();
                break;
            }
            s = self
                .changed
                .wait_timeout(s, (deadline - now).min(Duration::from_millis(200)))
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        let Some(f) = s.files.get_mut(&file_id) else {
            return vec![None; (pages.end - pages.start) as usize];
        };
        // (Streams take a file's blocks in any order; a page no block
        // holds whole — one a block boundary cuts — goes with the file.)
        let got: Vec<Option<Fingerprint>> = pages.map(|p| f.pages.remove(&p)).collect();
        s.held -= got.iter().flatten().count();
        got
    }

    /// Every block of `file_id` was sent: its remaining fingerprints go.
    pub fn forget(&self, file_id: u32) {
        let mut s = self.lock();
        if let Some(f) = s.files.remove(&file_id) {
            s.held -= f.pages.len();
        }
        s.forgotten.insert(file_id);
    }

    /// Fingerprints held now (for tests).
    pub fn held(&self) -> usize {
        self.lock().held
    }
}

/// What the receiver's walk over its old copy found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    /// Files of the manifest that had an old copy to fingerprint.
    pub files: u64,
    /// Pages fingerprinted and sent.
    pub pages: u64,
    /// The walk ran to the end (not stopped).
    pub complete: bool,
}

/// The receiver's side: walks the manifest's files in `order` (the
/// sender's), fingerprints each one's old copy beneath `base` (at its own
/// path, or its stand-in's: [`crate::standin`]; opened
/// without following symlinks; a missing, unreadable or non-regular old
/// file has no fingerprints) over the pages that lie wholly inside the
/// new file's data, and hands PRINTS frames to `send` (false: stop).
/// Before reading past `position` bytes of the sender's order it calls
/// `pace(position)`, which waits until the data is near (false: stop).
/// `from(id)` says where a file's walk begins (`Some(0)`: all of it; a
/// later offset after a reconnection, where the data has arrived already;
/// `None`: leave the file out, it is complete).
pub fn serve(
    base: impl AsFd,
    standins: &crate::standin::Standins,
    entries: &[Entry],
    order: &[u32],
    from: impl Fn(u32) -> Option<u64>,
    mut pace: impl FnMut(u64) -> bool,
    mut send: impl FnMut(Frame) -> bool,
) -> Served {
    let mut served = Served::default();
    let mut position = 0u64;
    for &id in order {
        let e = &entries[id as usize];
        let start = position;
        position += e.data_bytes();
        let Some(first) = from(id) else { continue };
        let first = first / PRINT_PAGE * PRINT_PAGE;
        if !pace(start + first.min(e.data_bytes())) {
            return served;
        }
        // Pages wholly inside a data extent of the new file.
        let wanted = |p: u64| e.extents.iter().any(|x| x.offset <= p * PRINT_PAGE && (p + 1) * PRINT_PAGE <= x.offset + x.len);
        let mut batch: Option<(u64, Vec<Fingerprint>)> = None;
        let mut ok = true;
        if let Ok(old) = fingerprint::open(base.as_fd(), standins.old_path(id, &e.path)) {
            served.files += 1;
            let old_len = old.metadata().map_or(0, |m| m.len());
            let limit = old_len.min(e.size) / PRINT_PAGE * PRINT_PAGE;
            let _ = fingerprint::pages_until(&old, first, limit, |at, f| {
                let p = at / PRINT_PAGE;
                if at + PRINT_PAGE > limit {
                    return false;
                }
                if at % (8 << 20) == 0 && !pace(start + at.min(e.data_bytes())) {
                    ok = false;
                    return false;
                }
                if !wanted(p) {
                    return true;
                }
                match &mut batch {
                    Some((first, v)) if *first + v.len() as u64 == p && v.len() < PRINTS_PER_FRAME => v.push(f),
                    _ => {
                        if let Some((first_page, hashes)) = batch.replace((p, vec![f])) {
                            served.pages += hashes.len() as u64;
                            if !send(Frame::Prints { file_id: id, last: false, first_page, hashes }) {
                                ok = false;
                                return false;
                            }
                        }
                    }
                }
                true
            });
        }
        if !ok {
            return served;
        }
        let (first_page, hashes) = batch.unwrap_or((0, Vec::new()));
        served.pages += hashes.len() as u64;
        if !send(Frame::Prints { file_id: id, last: true, first_page, hashes }) {
            return served;
        }
    }
    served.complete = true;
    served
}

/// How far a streamed session's walk fingerprints each file ahead of what
/// arrived of it: more than the sender holds back and has in flight (its
/// window of blocks waiting for fingerprints, its queue, the sockets), so
/// the sender rarely waits; 256 KiB of fingerprints per file walked.
pub const FILE_LEAD: u64 = 128 << 20;

/// Most old files a streamed session's walk has open at once; files
/// announced beyond it wait their turn.
pub const MAX_WALKS: usize = 32;

/// Pages a file's walk fingerprints in one turn before the next file's.
const TURN: u64 = 256;

#[derive(Debug)]
struct Walk {
    id: u32,
    path: Vec<u8>,
    /// Whether its old file was looked for (on its first turn).
    opened: bool,
    /// The old file and its count of whole pages.
    old: Option<(std::fs::File, u64)>,
    /// The next page to fingerprint.
    page: u64,
}

/// The receiver's walk in a streamed session (no manifest: the files come
/// as the sender announces them, interleaved as its source produces them).
/// Each announced file's old copy is fingerprinted in turns of a few MiB,
/// round robin over the files being sent, each at most [`FILE_LEAD`]
/// ahead of what arrived of it, so a file the sender waits for is never
/// stuck behind another.
#[derive(Debug, Default)]
pub struct Walks {
    active: std::collections::VecDeque<Walk>,
    queued: std::collections::VecDeque<(u32, Vec<u8>)>,
    /// Files whose walk ended (walked again after a reconnection while
    /// they are not complete).
    walked: Vec<(u32, Vec<u8>)>,
    served: Served,
}

impl Walks {
    /// The sender announced file `id` at `path`.
    pub fn add(&mut self, id: u32, path: Vec<u8>) {
        self.queued.push_back((id, path));
    }

    /// Stream 0 reconnected: every file not complete is walked again, from
    /// the page `from(id)` names (`None`: complete, left out).
    pub fn restart(&mut self, from: impl Fn(u32) -> Option<u64>) {
        let all = self.active.drain(..).map(|w| (w.id, w.path)).chain(self.walked.drain(..)).chain(self.queued.drain(..));
        let mut again: Vec<(u64, u32, Vec<u8>)> = all.filter_map(|(id, path)| from(id).map(|at| (at, id, path))).collect();
        again.sort_by_key(|(_, id, _)| *id);
        for (at, id, path) in again {
            if self.active.len() < MAX_WALKS {
                self.active.push_back(Walk { id, path, opened: false, old: None, page: at / PRINT_PAGE });
            } else {
                self.queued.push_back((id, path));
            }
        }
    }

    /// What the walk found so far.
    pub fn served(&self) -> Served {
        self.served
    }

    /// Whether any file is being walked or waits to be.
    pub fn is_idle(&self) -> bool {
        self.active.is_empty() && self.queued.is_empty()
    }

    /// One turn of every file being walked: up to a few MiB of its old
    /// copy beneath `base` (opened without following symlinks; a missing
    /// or unreadable one has no fingerprints), within [`FILE_LEAD`] of
    /// `arrived(id)` (`None`: the file is complete, its walk ends
    /// silently). PRINTS go to `send` (false: stop). Returns whether it
    /// sent anything, or `None` when `send` said stop.
    pub fn turn(&mut self, base: impl AsFd, arrived: impl Fn(u32) -> Option<u64>, mut send: impl FnMut(Frame) -> bool) -> Option<bool> {
        while self.active.len() < MAX_WALKS {
            let Some((id, path)) = self.queued.pop_front() else { break };
            self.active.push_back(Walk { id, path, opened: false, old: None, page: 0 });
        }
        let mut sent = false;
        let mut i = 0;
        while i < self.active.len() {
            let w = &mut self.active[i];
            let Some(got) = arrived(w.id) else {
                self.active.remove(i);
                continue;
            };
            if !w.opened {
                w.opened = true;
                w.old = fingerprint::open(base.as_fd(), &w.path).ok().map(|f| {
                    let len = f.metadata().map_or(0, |m| m.len());
                    (f, len / PRINT_PAGE)
                });
                self.served.files += u64::from(w.old.is_some());
            }
            let pages = w.old.as_ref().map_or(0, |(_, n)| *n);
            let allowed = (got + FILE_LEAD).div_ceil(PRINT_PAGE);
            let end = pages.min(w.page + TURN).min(allowed).max(w.page);
            if end == w.page && w.page < pages {
                i += 1;
                continue;
            }
            let first_page = w.page;
            let mut hashes = Vec::with_capacity((end - first_page) as usize);
            let read = match &w.old {
                Some((old, _)) if end > first_page => fingerprint::pages_until(old, first_page * PRINT_PAGE, end * PRINT_PAGE, |at, f| {
                    if at / PRINT_PAGE >= end {
                        return false;
                    }
                    hashes.push(f);
                    true
                })
                .map(|_| ()),
                _ => Ok(()),
            };
            // A read that fails ends the file's fingerprints where it failed.
            let last = read.is_err() || hashes.len() as u64 != end - first_page || end >= pages;
            w.page = first_page + hashes.len() as u64;
            self.served.pages += hashes.len() as u64;
            if !send(Frame::Prints { file_id: w.id, last, first_page, hashes }) {
                return None;
            }
            sent = true;
            if last {
                let w = self.active.remove(i).expect("in range");
                self.walked.push((w.id, w.path));
            } else {
                i += 1;
            }
        }
        Some(sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    const P: u64 = PRINT_PAGE;

    fn file(id: u32, path: &str, size: u64) -> Entry {
        Entry::new(id, EntryKind::File, path.as_bytes(), size)
    }

    #[test]
    fn pages_within_a_block_are_only_whole_ones() {
        assert_eq!(pages_within(0, (4 * P) as u32), 0..4);
        assert_eq!(pages_within(100, (4 * P) as u32), 1..4);
        assert_eq!(pages_within(P, 100), 1..1);
        assert_eq!(pages_within(4096, 8192), 1..1);
    }

    #[test]
    fn a_block_splits_into_merged_runs_with_data_at_partial_edges() {
        use Fate::{Reference as R, Send as S, Zero as Z};
        let b = (4 * P) as u32;
        assert_eq!(split(0, b, &[R; 4]), vec![Piece { offset: 0, len: b, fate: R }]);
        assert_eq!(split(0, b, &[S; 4]), vec![Piece { offset: 0, len: b, fate: S }]);
        let p = split(100, b, &[R, Z, R]);
        assert_eq!(
            p,
            vec![
                Piece { offset: 100, len: (P - 100) as u32, fate: S },
                Piece { offset: P, len: P as u32, fate: R },
                Piece { offset: 2 * P, len: P as u32, fate: Z },
                Piece { offset: 3 * P, len: P as u32, fate: R },
                Piece { offset: 4 * P, len: 100, fate: S },
            ]
        );
        // The pieces cover the block exactly.
        assert_eq!(p.iter().map(|x| u64::from(x.len)).sum::<u64>(), u64::from(b));
        assert_eq!(split(4096, 8192, &[]), vec![Piece { offset: 4096, len: 8192, fate: S }]);
        assert!(is_zero(&vec![0; 16 * 1024 + 3]) && is_zero(&[]));
        let mut one = vec![0u8; 16 * 1024 + 3];
        for i in [0, 5000, 16 * 1024 + 2] {
            one[i] = 1;
            assert!(!is_zero(&one), "a 1 at {i}");
            one[i] = 0;
        }
    }

    #[test]
    fn the_book_waits_for_fingerprints_and_frees_them() {
        let entries = vec![file(0, "a", 8 * P), file(1, "b", 2 * P)];
        let book = std::sync::Arc::new(Book::new(&entries));
        let b2 = std::sync::Arc::clone(&book);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            b2.add(0, 0, false, 0, vec![[1; 32], [2; 32]]).unwrap();
            b2.add(0, 0, true, 2, vec![[3; 32]]).unwrap();
        });
        let got = book.take(0, 0..4, Duration::from_secs(10), &|| false);
        t.join().unwrap();
        assert_eq!(got, vec![Some([1; 32]), Some([2; 32]), Some([3; 32]), None]);
        assert_eq!(book.held(), 0);
        // Out of order, beyond the file, or a foreign entry: named errors.
        assert!(book.add(0, 0, false, 0, vec![[0; 32]]).unwrap_err().contains("out of order"));
        assert!(book.add(0, 1, false, 2, vec![[0; 32]]).unwrap_err().contains("beyond its size"));
        assert!(book.add(0, 7, false, 0, vec![]).unwrap_err().contains("not a file"));
        // A closed book answers at once.
        book.close();
        let started = Instant::now();
        assert_eq!(book.take(1, 0..2, Duration::from_secs(10), &|| false), vec![None, None]);
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_reconnection_reopens_the_book_and_fingerprints_come_again() {
        let book = Book::new(&[file(0, "a", 8 * P), file(1, "b", 8 * P)]);
        book.add(0, 0, false, 0, vec![[1; 32], [2; 32]]).unwrap();
        book.add(0, 1, true, 0, vec![[7; 32]]).unwrap();
        // The connection breaks: waits end; a late close of an older
        // connection does not close the reopened book.
        book.close_connection(0);
        assert_eq!(book.take(0, 2..4, Duration::from_secs(5), &|| false), vec![None, None]);
        book.reopen(1);
        book.close_connection(0);
        assert!(!book.is_closed());
        // The receiver walks again from page 0; pages kept are replaced, not counted twice.
        // A frame read late from the old connection is dropped.
        book.add(0, 0, false, 5, vec![[9; 32]]).unwrap();
        book.add(1, 0, false, 0, vec![[1; 32], [2; 32], [3; 32]]).unwrap();
        book.add(1, 1, true, 0, vec![[7; 32]]).unwrap();
        assert_eq!(book.held(), 4);
        assert_eq!(book.take(0, 0..3, Duration::from_secs(5), &|| false), vec![Some([1; 32]), Some([2; 32]), Some([3; 32])]);
        // A silent receiver's book stays closed.
        let _ = book.take(0, 5..6, Duration::from_millis(50), &|| false);
        book.reopen(2);
        assert!(book.is_closed());
    }

    #[test]
    fn a_silent_receiver_closes_the_book_after_the_wait() {
        let book = Book::new(&[file(0, "a", P)]);
        let started = Instant::now();
        assert_eq!(book.take(0, 0..1, Duration::from_millis(100), &|| false), vec![None]);
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert!(book.is_closed());
    }

    #[test]
    fn a_flood_of_fingerprints_is_refused() {
        let book = Book::new(&[file(0, "a", u64::MAX / 2)]);
        let mut page = 0;
        let err = loop {
            match book.add(0, 0, false, page, vec![[0; 32]; PRINTS_PER_FRAME]) {
                Ok(()) => page += PRINTS_PER_FRAME as u64,
                Err(e) => break e,
            }
        };
        assert!(err.contains("ahead of the data"), "{err}");
    }

    #[test]
    fn the_walk_fingerprints_old_files_in_order_and_skips_what_is_not_there() {
        let dir = tempfile::tempdir().unwrap();
        let old: Vec<u8> = (0..(5 * P + 100)).map(|i| (i % 253) as u8).collect();
        std::fs::write(dir.path().join("big"), &old).unwrap();
        std::os::unix::fs::symlink(dir.path().join("big"), dir.path().join("link")).unwrap();
        // The new "big" is 3 pages and a bit: only its 3 whole pages.
        let entries = vec![file(0, "big", 3 * P + 5), file(1, "gone", 4 * P), file(2, "link", 2 * P)];
        let root = File::open(dir.path()).unwrap();
        let mut frames = Vec::new();
        let mut paced = Vec::new();
        let served = serve(
            &root,
            &crate::standin::Standins::default(),
            &entries,
            &[1, 0, 2],
            |_| Some(0),
            |at| {
                paced.push(at);
                true
            },
            |f| {
                frames.push(f);
                true
            },
        );
        assert_eq!(served, Served { files: 1, pages: 3, complete: true });
        let want: Vec<Fingerprint> = old.chunks(P as usize).take(3).map(fingerprint::of).collect();
        assert_eq!(
            frames,
            vec![
                Frame::Prints { file_id: 1, last: true, first_page: 0, hashes: vec![] },
                Frame::Prints { file_id: 0, last: true, first_page: 0, hashes: want },
                Frame::Prints { file_id: 2, last: true, first_page: 0, hashes: vec![] },
            ],
            "the symlink is not followed, the missing file has none"
        );
        assert_eq!(paced[..2], [0, 4 * P], "paced by the sender's order");
        // A stop from the pacing ends the walk.
        let stopped = serve(&root, &crate::standin::Standins::default(), &entries, &[0], |_| Some(0), |_| false, |_| true);
        assert!(!stopped.complete);
        // A skipped file sends nothing; a walk from a later page starts there.
        let mut sent = Vec::new();
        assert!(
            serve(
                &root,
                &crate::standin::Standins::default(),
                &entries,
                &[1, 0],
                |id| (id == 0).then_some(P + 7),
                |_| true,
                |f| {
                    sent.push(f);
                    true
                }
            )
            .complete
        );
        let want: Vec<Fingerprint> = old.chunks(P as usize).skip(1).take(2).map(fingerprint::of).collect();
        assert_eq!(
            sent,
            vec![Frame::Prints { file_id: 0, last: true, first_page: 1, hashes: want }],
            "only the file not skipped, from page 1"
        );
    }

    #[test]
    fn the_streamed_walk_takes_turns_over_announced_files_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let big: Vec<u8> = (0..(300 * P + 77)).map(|i| (i % 241) as u8).collect();
        std::fs::write(dir.path().join("big"), &big).unwrap();
        std::fs::write(dir.path().join("small"), &big[..(10 * P) as usize]).unwrap();
        std::os::unix::fs::symlink(dir.path().join("big"), dir.path().join("link")).unwrap();
        let root = File::open(dir.path()).unwrap();
        let mut w = Walks::default();
        for (id, path) in [(0, "big"), (1, "small"), (2, "missing"), (3, "link")] {
            w.add(id, path.as_bytes().to_vec());
        }
        let mut frames = Vec::new();
        let turn = |w: &mut Walks, arrived: &dyn Fn(u32) -> Option<u64>| {
            let mut got = Vec::new();
            let r = w.turn(&root, arrived, |f| {
                got.push(f);
                true
            });
            (r, got)
        };
        let (r, got) = turn(&mut w, &|_| Some(0));
        assert_eq!(r, Some(true));
        let summary: Vec<(u32, bool, u64, usize)> = got
            .iter()
            .map(|f| match f {
                Frame::Prints { file_id, last, first_page, hashes } => (*file_id, *last, *first_page, hashes.len()),
                other => panic!("{other:?}"),
            })
            .collect();
        // One turn each: the big file's first 256 pages, the small one whole,
        // nothing for a missing file or a symlink (not followed).
        assert_eq!(summary, vec![(0, false, 0, 256), (1, true, 0, 10), (2, true, 0, 0), (3, true, 0, 0)]);
        frames.extend(got);
        let (r, got) = turn(&mut w, &|_| Some(0));
        assert_eq!(r, Some(true));
        match &got[..] {
            [Frame::Prints { file_id: 0, last: true, first_page: 256, hashes }] => {
                assert_eq!(hashes.len(), 44, "the partial last page is not fingerprinted");
                assert_eq!(hashes[0], fingerprint::of(&big[(256 * P) as usize..(257 * P) as usize]));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(turn(&mut w, &|_| Some(0)), (Some(false), vec![]), "nothing left to walk");
        assert_eq!(w.served(), Served { files: 2, pages: 310, complete: false });
        // A reconnection: the files not complete are walked again from
        // where their data had arrived; complete ones are left out.
        w.restart(|id| match id {
            0 => Some(290 * P + 5),
            _ => None,
        });
        let (_, got) = turn(&mut w, &|_| Some(0));
        assert!(matches!(&got[..], [Frame::Prints { file_id: 0, last: true, first_page: 290, hashes }] if hashes.len() == 10), "{got:?}");
        // A file that completes while it is walked is dropped silently.
        w.add(4, b"big".to_vec());
        assert_eq!(turn(&mut w, &|_| None), (Some(false), vec![]));
        assert!(w.is_idle());
    }

    #[test]
    fn the_streamed_walk_stays_within_its_lead_of_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let f = File::create(dir.path().join("huge")).unwrap();
        f.set_len(FILE_LEAD + 64 * P).unwrap();
        let root = File::open(dir.path()).unwrap();
        let mut w = Walks::default();
        w.add(0, b"huge".to_vec());
        let mut pages = 0;
        while let Some(true) = w.turn(
            &root,
            |_| Some(0),
            |f| {
                if let Frame::Prints { hashes, .. } = f {
                    pages += hashes.len() as u64;
                }
                true
            },
        ) {}
        assert_eq!(pages * P, FILE_LEAD, "no further than its lead ahead of what arrived");
        // More data arrived: the walk goes on to the end.
        while let Some(true) = w.turn(
            &root,
            |_| Some(FILE_LEAD),
            |f| {
                if let Frame::Prints { hashes, .. } = f {
                    pages += hashes.len() as u64;
                }
                true
            },
        ) {}
        assert_eq!(pages, FILE_LEAD / P + 64);
        // A stop from `send` ends the turn.
        let mut w = Walks::default();
        w.add(0, b"huge".to_vec());
        assert_eq!(w.turn(&root, |_| Some(0), |_| false), None);
    }

    #[test]
    fn a_streamed_book_takes_fingerprints_only_for_announced_files() {
        let book = Book::streamed();
        assert!(book.add(0, 3, true, 0, vec![[1; 32]]).unwrap_err().contains("not announced"));
        book.announce(3);
        assert!(!book.ready(3, 0..1));
        assert!(book.ready(3, 5..5), "no pages: ready at once");
        book.add(0, 3, true, 0, vec![[1; 32]]).unwrap();
        assert!(book.ready(3, 0..4), "the last fingerprint came");
        assert_eq!(book.take(3, 0..2, Duration::from_secs(1), &|| false), vec![Some([1; 32]), None]);
    }
}
