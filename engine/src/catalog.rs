//! The receiver's file table of a streamed session.
//!
//! A streamed session has no manifest: a sender that reads a backup stream
//! learns its files as it goes. Each stream announces a file (id, path,
//! mode) before its first frame about it; the first announcement creates the
//! file through the [`Sink`] (confined, never through a symlink), later ones
//! must agree. DATA frames are tallied like a manifest session's, and
//! FILE_END says how many data bytes the file has and what their digest is:
//! a file is complete when both agree, in whatever order the frames of
//! different streams arrive.
//!
//! File descriptors are bounded whatever the file count: a file's handle is
//! closed as soon as it is complete, and at most [`MAX_OPEN_FILES`] handles
//! are open at once; the least recently opened idle one is closed to make
//! room and reopened (confined, never created twice) if more data comes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::plan::{Completion, FileTally, TallyError};
use crate::sink::{DestFile, Sink};
use crate::wire;
use crate::{Error, Result};

/// Largest file a streamed session may write (16 TiB, InnoDB's limit for
/// 16 KiB pages is 64 TiB but no datadir file we expect comes close).
pub const MAX_STREAMED_FILE: u64 = 1 << 44;

/// Most destination files a streamed session keeps open at once (each
/// holds up to two descriptors: buffered and O_DIRECT).
pub const MAX_OPEN_FILES: usize = 64;

/// One announced file.
#[derive(Debug)]
pub struct Announced {
    pub path: Vec<u8>,
    id: u32,
    mode: u32,
    /// The open handle, if any (closed when complete or evicted).
    dest: Mutex<Option<Arc<DestFile>>>,
    state: Mutex<State>,
}

impl Announced {
    pub fn display_path(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn handle(&self) -> MutexGuard<'_, Option<Arc<DestFile>>> {
        self.dest.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Debug, Default)]
struct State {
    /// Its data bytes and digest (the tally manifest sessions keep too).
    tally: FileTally,
    /// End of the furthest block received.
    reach: u64,
    /// The size FILE_END announced.
    size: Option<u64>,
}

#[derive(Debug, Default)]
struct Table {
    files: HashMap<u32, Arc<Announced>>,
    paths: HashSet<Vec<u8>>,
}

/// Every file of a streamed session.
#[derive(Debug)]
pub struct Catalog<'a> {
    sink: &'a Sink,
    table: Mutex<Table>,
    /// Ids of files with an open handle, oldest first. Lock order: `open`,
    /// then `table`, then a file's handle; never the reverse.
    open: Mutex<VecDeque<u32>>,
    max_open: usize,
    max_files: u64,
}

impl<'a> Catalog<'a> {
    pub fn new(sink: &'a Sink) -> Self {
        Self::with_limits(sink, MAX_OPEN_FILES, wire::MAX_ENTRIES)
    }

    /// A catalog that keeps at most `max_open` files open and accepts at
    /// most `max_files` announcements.
    pub fn with_limits(sink: &'a Sink, max_open: usize, max_files: u64) -> Self {
        Self { sink, table: Mutex::new(Table::default()), open: Mutex::new(VecDeque::new()), max_open: max_open.max(1), max_files }
    }

    /// The open handle of `f`, reopening it if it was closed to make room.
    pub fn open(&self, f: &Announced) -> Result<Arc<DestFile>> {
        if let Some(h) = f.handle().as_ref() {
            return Ok(Arc::clone(h));
        }
        let fresh = Arc::new(self.sink.reopen_streamed(&f.path)?);
        let h = {
            let mut slot = f.handle();
            if let Some(h) = slot.as_ref() {
                Arc::clone(h)
            } else {
                *slot = Some(Arc::clone(&fresh));
                fresh
            }
        };
        self.opened(f.id);
        Ok(h)
    }

    /// Records that file `id` now holds a handle and closes the oldest idle
    /// handles beyond the limit.
    fn opened(&self, id: u32) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.push_back(id);
        let mut budget = open.len();
        while open.len() > self.max_open && budget > 0 {
            budget -= 1;
            let Some(victim) = open.pop_front() else { break };
            let Some(v) = self.table().files.get(&victim).cloned() else { continue };
            let mut slot = v.handle();
            match slot.as_ref() {
                // A stream is writing through it: keep it, look further.
                Some(h) if Arc::strong_count(h) > 1 => open.push_back(victim),
                _ => *slot = None,
            }
        }
    }

    /// How many files hold an open handle (for tests and logs).
    pub fn open_files(&self) -> usize {
        self.table().files.values().filter(|f| f.handle().is_some()).count()
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Handles an ANNOUNCE (the wire decoder has validated the path);
    /// `true` for the file's first announcement.
    pub fn announce(&self, id: u32, mode: u32, path: &[u8]) -> Result<bool> {
        let mut t = self.table();
        if let Some(f) = t.files.get(&id) {
            if f.path != path || f.mode != mode {
                return Err(Error::Verify {
                    path: String::from_utf8_lossy(path).into_owned(),
                    reason: format!("file id {id} was announced before as {}", f.display_path()),
                });
            }
            return Ok(false);
        }
        if t.paths.contains(path) {
            return Err(Error::Verify {
                path: String::from_utf8_lossy(path).into_owned(),
                reason: "announced twice under different ids".into(),
            });
        }
        if t.files.len() as u64 >= self.max_files {
            return Err(Error::Verify {
                path: String::from_utf8_lossy(path).into_owned(),
                reason: format!("more than {} files announced in one session (the receiver's limit)", self.max_files),
            });
        }
        let dest = Arc::new(self.sink.open_streamed(path)?);
        t.paths.insert(path.to_vec());
        let f = Announced { path: path.to_vec(), id, mode, dest: Mutex::new(Some(dest)), state: Mutex::new(State::default()) };
        t.files.insert(id, Arc::new(f));
        drop(t);
        self.opened(id);
        Ok(true)
    }

    /// The data bytes that arrived of file `id`, unless it is complete
    /// (or unknown).
    pub fn arrived(&self, id: u32) -> Option<u64> {
        let f = self.table().files.get(&id).cloned()?;
        let s = f.lock();
        (!s.tally.is_complete()).then(|| s.tally.received())
    }

    /// The announced file `id`; a frame about an unannounced id is a
    /// protocol violation.
    pub fn get(&self, id: u32, peer: &str) -> Result<Arc<Announced>> {
        self.table().files.get(&id).cloned().ok_or_else(|| Error::peer(peer, format!("sent a frame for file id {id} before announcing it")))
    }

    /// Checks a DATA frame's range before any byte is written.
    pub fn check_range(f: &Announced, offset: u64, len: u32) -> Result<()> {
        let end = offset.saturating_add(u64::from(len));
        let s = f.lock();
        if len == 0 || end > MAX_STREAMED_FILE {
            return Err(Error::Verify { path: f.display_path(), reason: format!("block at offset {offset} (+{len}) is out of bounds") });
        }
        if s.tally.is_complete() || s.size.is_some_and(|size| end > size) {
            return Err(Error::Verify {
                path: f.display_path(),
                reason: format!("block at offset {offset} (+{len}) lies beyond the file's announced end"),
            });
        }
        Ok(())
    }

    /// Records a verified block; completes the file if it was the last piece.
    pub fn record_block(&self, f: &Announced, id: u32, offset: u64, len: u32, checksum: u64) -> Result<()> {
        let mut s = f.lock();
        s.reach = s.reach.max(offset + u64::from(len));
        let c = s.tally.block(id, offset, len, checksum);
        self.settle(f, &s, c)
    }

    /// Records FILE_END.
    pub fn record_end(&self, f: &Announced, size: u64, data_bytes: u64, digest: u64) -> Result<()> {
        let mut s = f.lock();
        if s.size.is_some() {
            return Err(Error::Verify { path: f.display_path(), reason: "file ended twice".into() });
        }
        if size > MAX_STREAMED_FILE || s.reach > size {
            return Err(Error::Verify {
                path: f.display_path(),
                reason: format!("announced size {size} is out of bounds, or below the data received (up to offset {})", s.reach),
            });
        }
        s.size = Some(size);
        let c = s.tally.end(Some(data_bytes), digest);
        self.settle(f, &s, c)
    }

    /// Acts on what the tally says: a complete file is finished (its handle
    /// closed, its size and mode set).
    fn settle(&self, f: &Announced, s: &State, c: std::result::Result<Completion, TallyError>) -> Result<()> {
        match c.map_err(|e| Error::Verify { path: f.display_path(), reason: e.to_string() })? {
            Completion::Pending => Ok(()),
            Completion::Complete => {
                // Close its handle now (one stays open only while a stream
                // still holds it for a write that just finished).
                let h = f.handle().take();
                let h = match h {
                    Some(h) => h,
                    None => Arc::new(self.sink.reopen_streamed(&f.path)?),
                };
                self.sink.finish_streamed(&f.path, &h, s.size.expect("a complete streamed file has ended"), f.mode)
            }
        }
    }

    /// After every stream ended: every announced file must be complete.
    /// Returns (files, data bytes).
    pub fn check_complete(&self) -> Result<(u64, u64)> {
        let t = self.table();
        let mut bytes = 0;
        let mut open: Vec<&Arc<Announced>> = t.files.values().filter(|f| !f.lock().tally.is_complete()).collect();
        open.sort_by(|a, b| a.path.cmp(&b.path));
        if let Some(f) = open.first() {
            let s = f.lock();
            let got = s.tally.received();
            let reason = match (s.size, s.tally.expected()) {
                (Some(_), Some(want)) => format!("{got} of {want} data bytes arrived; {} file(s) incomplete", open.len()),
                _ => format!("never ended ({got} bytes arrived); {} file(s) incomplete", open.len()),
            };
            return Err(Error::Verify { path: f.display_path(), reason });
        }
        for f in t.files.values() {
            bytes += f.lock().tally.received();
        }
        Ok((t.files.len() as u64, bytes))
    }
}
