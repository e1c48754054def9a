//! The receiver's journal: which data ranges of which files are verified
//! and durable, so that a receiver that was killed (or whose host
//! rebooted) continues with `sluice recv --resume` and the re-run sender
//! sends only the rest.
//!
//! What counts as present is what the journal says, never a file's size:
//! a range is appended only after its block was verified against the
//! sender's checksum *and* a `syncfs` that began after the write returned.
//! Appends are not synced themselves; the next round's `syncfs` makes them
//! durable, and a record torn by a crash (its checksum fails) ends the
//! journal there, so at worst a few seconds of work are sent again.
//!
//! Format (`.sluice-journal` in the destination): the 8 bytes
//! `SLUICEJ1`, then records `kind u8, reserved [3], body_len u32, body,
//! check u64` (xxh3-64 of kind and body), little-endian:
//!
//! * FILE (1): `id u32, key [16], path`: the session's id for a file, and
//!   the identity of its data ([`key`]: path, size, mtime, extents);
//! * RANGE (2): `id u32, reserved u32, offset u64, len u64`: a verified,
//!   durable data range of the file with that id (a FILE record earlier);
//! * PATH (3): `kind u8 (2 directory, 3 symlink), reserved [3], path`: a
//!   directory or symlink of the session.
//!
//! The journal is started (written and synced) before the session creates
//! anything, with a FILE or PATH record for every entry of the manifest: it
//! names everything an interrupted session may have created, so a resumed
//! one removes what the source no longer has, and naming costs one write
//! per session, not one per file.
//!
//! A resumed session rewrites the journal (what it carries over, under the
//! new session's ids) before any data arrives, through a temporary file
//! renamed over the old one. On success the journal is removed with the
//! incomplete-marker. Streamed sessions have no journal: a backup stream
//! cannot be rewound.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::sync::Mutex;
use std::time::Duration;

use xxhash_rust::xxh3::{xxh3_64, xxh3_128};

use crate::backend::sys::{self, RESOLVE_CONFINED};
use crate::manifest::{Entry, EntryKind, Extent, INCOMPLETE_MARKER, JOURNAL_FILE, JOURNAL_TEMP};

const MAGIC: &[u8; 8] = b"SLUICEJ1";
const FILE: u8 = 1;
const RANGE: u8 = 2;
const PATH: u8 = 3;
/// Largest record body: a FILE record with the longest path.
const MAX_BODY: usize = 4 + 16 + crate::manifest::MAX_PATH;

/// Most files, directories and symlinks a journal may name (twice the
/// receiver's default entry limit).
const MAX_NAMED: usize = 1 << 20;

/// How often verified ranges are made durable and journaled.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(2);

/// The identity of an entry's data: a resumed session keeps journaled
/// ranges of a file only if its path, size, mtime and extents are the
/// same as when they were written.
pub fn key(e: &Entry) -> [u8; 16] {
    let mut b = Vec::with_capacity(32 + e.path.len() + 16 * e.extents.len());
    b.push(e.kind as u8);
    b.extend_from_slice(&e.size.to_le_bytes());
    b.extend_from_slice(&e.mtime_sec.to_le_bytes());
    b.extend_from_slice(&e.mtime_nsec.to_le_bytes());
    b.extend_from_slice(&(e.extents.len() as u64).to_le_bytes());
    for x in &e.extents {
        b.extend_from_slice(&x.offset.to_le_bytes());
        b.extend_from_slice(&x.len.to_le_bytes());
    }
    b.extend_from_slice(&e.path);
    xxh3_128(&b).to_le_bytes()
}

fn record(kind: u8, body: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.push(kind);
    out.extend_from_slice(&[0; 3]);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    let mut check = Vec::with_capacity(1 + body.len());
    check.push(kind);
    check.extend_from_slice(body);
    out.extend_from_slice(&xxh3_64(&check).to_le_bytes());
    debug_assert!(out.len() - start == 16 + body.len());
}

fn file_record(id: u32, e: &Entry, out: &mut Vec<u8>) {
    let mut body = Vec::with_capacity(20 + e.path.len());
    body.extend_from_slice(&id.to_le_bytes());
    body.extend_from_slice(&key(e));
    body.extend_from_slice(&e.path);
    record(FILE, &body, out);
}

fn path_record(kind: EntryKind, path: &[u8], out: &mut Vec<u8>) {
    let mut body = Vec::with_capacity(4 + path.len());
    body.extend_from_slice(&[kind as u8, 0, 0, 0]);
    body.extend_from_slice(path);
    record(PATH, &body, out);
}

fn range_record(id: u32, x: Extent, out: &mut Vec<u8>) {
    let mut body = [0u8; 24];
    body[..4].copy_from_slice(&id.to_le_bytes());
    body[8..16].copy_from_slice(&x.offset.to_le_bytes());
    body[16..].copy_from_slice(&x.len.to_le_bytes());
    record(RANGE, &body, out);
}

/// Sorts `v` and merges touching or overlapping ranges.
fn merge(v: &mut Vec<Extent>) {
    v.sort_unstable_by_key(|x| x.offset);
    let mut out: Vec<Extent> = Vec::with_capacity(v.len());
    for x in v.drain(..) {
        match out.last_mut() {
            Some(last) if x.offset <= last.offset + last.len => {
                last.len = (x.offset + x.len).max(last.offset + last.len) - last.offset;
            }
            _ => out.push(x),
        }
    }
    *v = out;
}

/// One journaled file: the identity of its data and its durable ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HeldFile {
    key: [u8; 16],
    ranges: Vec<Extent>,
}

/// What an interrupted receive left, by path.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Held {
    files: HashMap<Vec<u8>, HeldFile>,
    /// Directories and symlinks the interrupted sessions created.
    others: HashMap<Vec<u8>, EntryKind>,
    /// The journal ended in a torn or garbled record (a crash mid-append):
    /// everything before it counts.
    pub torn: bool,
}

/// What a resumed session takes over from [`Held`], for its manifest.
#[derive(Debug, Default)]
pub struct Carry {
    /// Per manifest id, the held ranges (within its extents), sorted.
    pub held: Vec<(u32, Vec<Extent>)>,
    /// Journaled files whose data changed at the source since: they are
    /// received again from the start.
    pub changed: usize,
    /// What interrupted sessions created that the manifest no longer
    /// has (or has as another kind): removed before the session starts,
    /// files and symlinks first, then directories, deepest first.
    pub stale: Vec<(EntryKind, Vec<u8>)>,
}

impl Carry {
    pub fn bytes(&self) -> u64 {
        self.held.iter().flat_map(|(_, r)| r).map(|x| x.len).sum()
    }
}

impl Held {
    /// Data bytes held, in all files.
    pub fn bytes(&self) -> u64 {
        self.files.values().flat_map(|f| &f.ranges).map(|x| x.len).sum()
    }

    /// Files with at least one held range.
    pub fn files(&self) -> usize {
        self.files.values().filter(|f| !f.ranges.is_empty()).count()
    }

    /// The ranges of each journaled file of `entries` whose data is still
    /// the same (clipped to its extents), and what no longer applies.
    pub fn carry(&self, entries: &[Entry]) -> Carry {
        let mut c = Carry::default();
        let kinds: HashMap<&[u8], EntryKind> = entries.iter().map(|e| (e.path.as_slice(), e.kind)).collect();
        for e in entries.iter().filter(|e| e.kind == EntryKind::File) {
            let Some(f) = self.files.get(&e.path) else { continue };
            if f.key != key(e) {
                c.changed += 1;
                continue;
            }
            let ranges = intersect(&f.ranges, &e.extents);
            if !ranges.is_empty() {
                c.held.push((e.id, ranges));
            }
        }
        let created = self.files.keys().map(|p| (p, EntryKind::File)).chain(self.others.iter().map(|(p, k)| (p, *k)));
        c.stale = created.filter(|(p, k)| kinds.get(p.as_slice()) != Some(k)).map(|(p, k)| (k, p.clone())).collect();
        // Files and symlinks first, then directories, deepest first.
        c.stale.sort_by_key(|(k, p)| (*k == EntryKind::Dir, std::cmp::Reverse(p.iter().filter(|&&b| b == b'/').count()), p.clone()));
        c
    }

    /// Parses a journal; a torn or garbled record ends it (`torn`).
    pub fn parse(r: impl Read) -> io::Result<Self> {
        let mut held = Self::default();
        let mut named = 0usize;
        held.torn = walk(r, |rec| {
            match rec {
                Rec::File { path, key } => {
                    held.files.insert(path.to_vec(), HeldFile { key, ranges: Vec::new() });
                }
                Rec::Path { path, kind } => {
                    held.others.insert(path.to_vec(), kind);
                }
                Rec::Range { path, range } => {
                    let f = held.files.get_mut(path).expect("walk checks that a FILE record came first");
                    f.ranges.push(range);
                    // Keep memory proportional to the holes, not the records.
                    if f.ranges.len() >= 1024 && f.ranges.len().is_power_of_two() {
                        merge(&mut f.ranges);
                    }
                    return true;
                }
            }
            named += 1;
            // A journal lives in a directory others may write: bound what
            // it can make this receiver hold in memory.
            named <= MAX_NAMED
        })?;
        if named > MAX_NAMED {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("it names more than {MAX_NAMED} entries")));
        }
        for f in held.files.values_mut() {
            merge(&mut f.ranges);
        }
        Ok(held)
    }
}

/// Every RANGE record of a journal in order, with its file's path, as
/// written (not merged): what an audit of the journal reads.
pub fn ranges(r: impl Read) -> io::Result<Vec<(Vec<u8>, Extent)>> {
    let mut out = Vec::new();
    walk(r, |rec| {
        if let Rec::Range { path, range } = rec {
            out.push((path.to_vec(), range));
        }
        true
    })?;
    Ok(out)
}

/// One journal record, its id resolved to the file's path.
enum Rec<'a> {
    File { path: &'a [u8], key: [u8; 16] },
    Path { path: &'a [u8], kind: EntryKind },
    Range { path: &'a [u8], range: Extent },
}

/// Reads a journal record by record until `visit` says stop; returns
/// whether it ended in a torn or garbled record.
fn walk(r: impl Read, mut visit: impl FnMut(Rec<'_>) -> bool) -> io::Result<bool> {
    let mut r = BufReader::new(r);
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not a sluice journal (bad magic)"));
    }
    let mut ids: HashMap<u32, Vec<u8>> = HashMap::new();
    let mut body = Vec::new();
    loop {
        let mut head = [0u8; 8];
        match read_full(&mut r, &mut head)? {
            0 => return Ok(false),
            8 => {}
            _ => return Ok(true),
        }
        let (kind, len) = (head[0], u32::from_le_bytes(head[4..8].try_into().expect("4 bytes")) as usize);
        if head[1..4] != [0; 3] || len > MAX_BODY {
            return Ok(true);
        }
        body.resize(len + 8, 0);
        if read_full(&mut r, &mut body)? != len + 8 {
            return Ok(true);
        }
        let mut check = Vec::with_capacity(1 + len);
        check.push(kind);
        check.extend_from_slice(&body[..len]);
        if xxh3_64(&check).to_le_bytes() != body[len..] {
            return Ok(true);
        }
        let b = &body[..len];
        let id = u32::from_le_bytes(b[..4.min(len)].try_into().unwrap_or([0; 4]));
        match kind {
            FILE if len > 20 => {
                let path = b[20..].to_vec();
                if crate::manifest::validate_rel_path(&path).is_err() {
                    return Ok(true);
                }
                if !visit(Rec::File { path: &path, key: b[4..20].try_into().expect("16 bytes") }) {
                    return Ok(false);
                }
                ids.insert(id, path);
            }
            PATH if len > 4 && b[1..4] == [0; 3] => {
                let kind = match b[0] {
                    2 => EntryKind::Dir,
                    3 => EntryKind::Symlink,
                    _ => return Ok(true),
                };
                if crate::manifest::validate_rel_path(&b[4..]).is_err() {
                    return Ok(true);
                }
                if !visit(Rec::Path { path: &b[4..], kind }) {
                    return Ok(false);
                }
            }
            RANGE if len == 24 => {
                let offset = u64::from_le_bytes(b[8..16].try_into().expect("8 bytes"));
                let n = u64::from_le_bytes(b[16..24].try_into().expect("8 bytes"));
                let Some(path) = ids.get(&id) else { return Ok(true) };
                if n == 0 || offset.checked_add(n).is_none() {
                    return Ok(true);
                }
                if !visit(Rec::Range { path, range: Extent { offset, len: n } }) {
                    return Ok(false);
                }
            }
            _ => return Ok(true),
        }
    }
}

/// Reads until `buf` is full or EOF; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The parts of the sorted ranges `a` that lie within the sorted extents
/// `b`, each piece within one extent.
fn intersect(a: &[Extent], b: &[Extent]) -> Vec<Extent> {
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let (x, y) = (a[i], b[j]);
        let start = x.offset.max(y.offset);
        let end = (x.offset + x.len).min(y.offset + y.len);
        if start < end {
            out.push(Extent { offset: start, len: end - start });
        }
        if x.offset + x.len < y.offset + y.len {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

fn cname(name: &str) -> CString {
    CString::new(name).expect("no NUL in a constant name")
}

/// Why a destination cannot be resumed, or what it holds.
#[derive(Debug)]
pub enum Found {
    /// No incomplete-marker: nothing was interrupted here.
    NoMarker,
    /// A marker but no journal: a streamed backup or a receive without a
    /// journal was interrupted, and cannot be resumed.
    NoJournal,
    Held(Held),
}

/// Reads the journal of the destination open at `root` (never through a
/// symlink).
pub fn find(root: &File) -> io::Result<Found> {
    let open = |name: &str| sys::openat2(root, &cname(name), libc::O_RDONLY | libc::O_NOFOLLOW, 0, RESOLVE_CONFINED).map(File::from);
    match open(INCOMPLETE_MARKER) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(Found::NoMarker),
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    let f = match open(JOURNAL_FILE) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(Found::NoJournal),
        r => r?,
    };
    if !f.metadata()?.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{JOURNAL_FILE} is not a regular file")));
    }
    Held::parse(f).map(Found::Held)
}

/// Opens `dir` as a destination root: a directory, never a symlink.
pub fn open_root(dir: &std::path::Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW).open(dir)
}

/// Removes what interrupted sessions created that a resumed one no
/// longer has (see [`Carry::stale`]), never through a symlink; a
/// directory that is not empty is left, with a warning. Returns how many
/// were removed.
pub fn remove_stale(root: &File, stale: &[(EntryKind, Vec<u8>)]) -> usize {
    use crate::sink::{cpath, split_parent};
    let mut n = 0;
    for (kind, p) in stale {
        let (parent, name) = split_parent(p);
        let removed = sys::openat2(root, &cpath(parent), libc::O_DIRECTORY | libc::O_PATH, 0, RESOLVE_CONFINED)
            .and_then(|pfd| if *kind == EntryKind::Dir { sys::rmdirat(&pfd, &cpath(name)) } else { sys::unlinkat(&pfd, &cpath(name)) });
        match removed {
            Ok(()) => n += 1,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => tracing::warn!("could not remove {}, which the source no longer has: {e}", String::from_utf8_lossy(p)),
        }
    }
    n
}

/// The journal a session appends to.
#[derive(Debug)]
pub struct Journal {
    root: File,
    out: Mutex<File>,
    /// Verified ranges not yet durable: (id, offset, len).
    pending: Mutex<Vec<(u32, u64, u64)>>,
}

impl Journal {
    /// Starts the journal of a session into the destination open at
    /// `root`, with what it carries over from an interrupted one (`None`
    /// for a fresh session): written to a temporary file, synced, renamed
    /// over any old journal.
    pub fn start(root: &File, entries: &[Entry], carry: Option<&Carry>) -> io::Result<Self> {
        let mut buf = Vec::with_capacity(64 + entries.iter().map(|e| 48 + e.path.len()).sum::<usize>());
        buf.extend_from_slice(MAGIC);
        // Every entry, before the sink creates any.
        for e in entries {
            match e.kind {
                EntryKind::File => file_record(e.id, e, &mut buf),
                kind => path_record(kind, &e.path, &mut buf),
            }
        }
        for (id, ranges) in carry.map_or(&[][..], |c| &c.held) {
            for x in ranges {
                range_record(*id, *x, &mut buf);
            }
        }
        let (temp, name) = (cname(JOURNAL_TEMP), cname(JOURNAL_FILE));
        let _ = sys::unlinkat(root, &temp);
        let mut file =
            File::from(sys::openat2(root, &temp, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_APPEND, 0o600, RESOLVE_CONFINED)?);
        file.write_all(&buf)?;
        file.sync_all()?;
        sys::renameat(root, &temp, &name)?;
        root.sync_all()?;
        let root = root.try_clone()?;
        Ok(Self { root, out: Mutex::new(file), pending: Mutex::default() })
    }

    /// A block of file `id` was written and verified.
    pub fn record(&self, id: u32, offset: u64, len: u64) {
        lock(&self.pending).push((id, offset, len));
    }

    /// Makes every range recorded so far durable (`syncfs` of the
    /// destination's filesystem), then journals them. Returns the number
    /// of ranges journaled.
    pub fn checkpoint(&self) -> io::Result<usize> {
        let mut batch = std::mem::take(&mut *lock(&self.pending));
        if batch.is_empty() {
            return Ok(0);
        }
        sys::syncfs(&self.root)?;
        batch.sort_unstable();
        let mut buf = Vec::with_capacity(batch.len() * 40);
        let mut n = 0;
        let mut i = 0;
        while i < batch.len() {
            let id = batch[i].0;
            let mut ranges = Vec::new();
            while i < batch.len() && batch[i].0 == id {
                ranges.push(Extent { offset: batch[i].1, len: batch[i].2 });
                i += 1;
            }
            merge(&mut ranges);
            for x in ranges {
                range_record(id, x, &mut buf);
                n += 1;
            }
        }
        lock(&self.out).write_all(&buf)?;
        Ok(n)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(id: u32, path: &str, size: u64) -> Entry {
        Entry::new(id, EntryKind::File, path.as_bytes(), size)
    }

    fn x(offset: u64, len: u64) -> Extent {
        Extent { offset, len }
    }

    fn journal_bytes(entries: &[Entry], records: &[(u32, Extent)]) -> Vec<u8> {
        let mut buf = MAGIC.to_vec();
        let mut named = std::collections::HashSet::new();
        for (id, r) in records {
            if named.insert(*id) {
                file_record(*id, &entries[*id as usize], &mut buf);
            }
            range_record(*id, *r, &mut buf);
        }
        buf
    }

    #[test]
    fn a_journal_round_trips_and_merges_ranges() {
        let entries = vec![file(0, "a", 100), file(1, "d/b", 50)];
        let buf = journal_bytes(&entries, &[(0, x(0, 10)), (1, x(0, 50)), (0, x(10, 10)), (0, x(40, 10))]);
        let held = Held::parse(&buf[..]).unwrap();
        assert!(!held.torn);
        assert_eq!(held.bytes(), 80);
        assert_eq!(held.files(), 2);
        let c = held.carry(&entries);
        assert_eq!(c.held, vec![(0, vec![x(0, 20), x(40, 10)]), (1, vec![x(0, 50)])]);
        assert_eq!((c.changed, c.stale.len(), c.bytes()), (0, 0, 80));
    }

    #[test]
    fn a_torn_tail_keeps_what_came_before() {
        let entries = vec![file(0, "a", 100)];
        let buf = journal_bytes(&entries, &[(0, x(0, 10)), (0, x(50, 10))]);
        for cut in [buf.len() - 1, buf.len() - 20, buf.len() - 32] {
            let held = Held::parse(&buf[..cut]).unwrap();
            assert!(held.torn, "cut at {cut}");
            assert_eq!(held.bytes(), 10, "cut at {cut}");
        }
        let mut flipped = buf.clone();
        let last = flipped.len() - 12;
        flipped[last] ^= 1;
        let held = Held::parse(&flipped[..]).unwrap();
        assert!(held.torn);
        assert_eq!(held.bytes(), 10);
        assert!(Held::parse(&b"NOTJOURNAL"[..]).is_err());
    }

    #[test]
    fn changed_and_vanished_entries_are_not_carried() {
        let old = vec![file(0, "a", 100), file(1, "b", 100), file(2, "c", 100), file(3, "d/e", 10)];
        let mut buf = journal_bytes(&old, &[(0, x(0, 100)), (1, x(0, 50)), (2, x(0, 10))]);
        file_record(3, &old[3], &mut buf);
        for (kind, p) in [(EntryKind::Dir, "d"), (EntryKind::Dir, "d/f"), (EntryKind::Symlink, "l"), (EntryKind::Symlink, "m")] {
            path_record(kind, p.as_bytes(), &mut buf);
        }
        let held = Held::parse(&buf[..]).unwrap();
        assert!(!held.torn);
        // The new manifest: "a" under another id, "b" grown, "c" and "d/"
        // gone, "l" still a symlink, "m" now a file.
        let mut new =
            vec![file(0, "z", 5), file(1, "b", 200), file(2, "a", 100), Entry::new(3, EntryKind::Symlink, b"l", 0), file(4, "m", 1)];
        new[1].mtime_sec = 7;
        let c = held.carry(&new);
        assert_eq!(c.held, vec![(2, vec![x(0, 100)])]);
        assert_eq!(c.changed, 1);
        let stale: Vec<(EntryKind, &[u8])> = c.stale.iter().map(|(k, p)| (*k, p.as_slice())).collect();
        assert_eq!(
            stale,
            vec![
                (EntryKind::File, &b"d/e"[..]),
                (EntryKind::File, b"c"),
                (EntryKind::Symlink, b"m"),
                (EntryKind::Dir, b"d/f"),
                (EntryKind::Dir, b"d")
            ]
        );
    }

    #[test]
    fn held_ranges_are_clipped_to_the_extents() {
        assert_eq!(intersect(&[x(0, 100)], &[x(0, 10), x(20, 10), x(95, 50)]), vec![x(0, 10), x(20, 10), x(95, 5)]);
        assert_eq!(intersect(&[x(5, 2), x(30, 100)], &[x(0, 40)]), vec![x(5, 2), x(30, 10)]);
        assert!(intersect(&[x(0, 10)], &[x(10, 10)]).is_empty());
    }
}
