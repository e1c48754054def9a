//! The mbstream (xbstream) chunk format of `mariadb-backup --stream=mbstream`
//! (shared/MBSTREAM.md): a validating reader, a writer, and an extractor
//! that replaces `mbstream -x` with the checks the original lacks.
//!
//! Reader: exact magic; flags bit 0 only; `P` and `E` chunks, ignorable
//! unknown chunks skipped (read with the `P` layout), anything else refused;
//! path length 1..=511 and a confined relative path; payload length bounded
//! *before* allocating; CRC-32 (ISO-HDLC, zlib's) checked; EOF accepted only
//! at a chunk boundary. Every error names the stream offset.
//! Extractor: files created exclusively under the root, never through a
//! symlink; offsets strictly sequential per file; no data after a file's
//! `E`; at the end every file must have ended; files and directories are
//! fsynced.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// Chunk magic.
pub const MAGIC: &[u8; 8] = b"XBSTCK01";
/// Flag of chunks a reader may skip.
pub const FLAG_IGNORABLE: u8 = 0x01;
/// Largest payload the writer emits (what mariadb-backup does too).
pub const WRITER_CHUNK: usize = 10 << 20;
/// Default bound on a payload read from a stream.
pub const MAX_PAYLOAD: u64 = 64 << 20;
/// mariadb-backup refuses paths of 512 bytes or more (FN_REFLEN).
pub const MAX_PATH: usize = 511;

/// What went wrong in a stream.
#[derive(Debug, thiserror::Error)]
pub enum MbError {
    #[error("mbstream: bad magic at stream offset {offset} (not an mbstream, or corrupted)")]
    BadMagic { offset: u64 },
    #[error("mbstream: stream ends inside a chunk at offset {offset}")]
    Truncated { offset: u64 },
    #[error("mbstream: unsupported chunk type {kind:?} (flags {flags:#04x}) at offset {offset}")]
    Kind { kind: char, flags: u8, offset: u64 },
    #[error("mbstream: chunk at offset {offset} has path length {len} (1..={MAX_PATH} allowed)")]
    PathLen { len: u32, offset: u64 },
    #[error("mbstream: path {path:?} at offset {offset} is not allowed: {reason}")]
    Path { path: String, reason: &'static str, offset: u64 },
    #[error("mbstream: payload of {len} bytes for {path} at offset {offset} exceeds the limit of {max}")]
    TooLarge { path: String, len: u64, max: u64, offset: u64 },
    #[error("mbstream: checksum mismatch in {path} (file offset {file_offset}, stream offset {offset})")]
    Checksum { path: String, file_offset: u64, offset: u64 },
    #[error("mbstream: out-of-order chunk for {path}: offset {got}, expected {expected}")]
    OutOfOrder { path: String, got: u64, expected: u64 },
    #[error("mbstream: data for {path} after its end-of-file chunk")]
    AfterEnd { path: String },
    #[error("mbstream: the stream ended but {path} never received its end-of-file chunk (truncated transfer?)")]
    Unended { path: String },
    #[error("mbstream: {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> MbError {
    let context = context.into();
    move |source| MbError::Io { context, source }
}

/// One chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    Payload { path: String, offset: u64, data: Vec<u8> },
    Eof { path: String },
}

/// Checks a path from a stream with the engine's rule for peer paths
/// (relative, no `.`/`..`/empty components, no NUL), after an optional
/// leading `./`; backslashes are refused too (Windows writers normalise them).
pub fn check_path(p: &str) -> Result<(), &'static str> {
    if p.contains('\\') {
        return Err("backslash in path");
    }
    sluice_engine::manifest::validate_rel_path(p.strip_prefix("./").unwrap_or(p).as_bytes())
}

/// Reads chunks from a stream.
#[derive(Debug)]
pub struct Reader<R> {
    r: R,
    offset: u64,
    max_payload: u64,
}

impl<R: Read> Reader<R> {
    pub fn new(r: R) -> Self {
        Self { r, offset: 0, max_payload: MAX_PAYLOAD }
    }

    #[must_use]
    pub fn with_max_payload(mut self, max: u64) -> Self {
        self.max_payload = max;
        self
    }

    /// Reads exactly `buf.len()` bytes; `Ok(false)` on a clean EOF before
    /// the first byte when `eof_ok`.
    fn fill(&mut self, buf: &mut [u8], eof_ok: bool) -> Result<bool, MbError> {
        let mut n = 0;
        while n < buf.len() {
            match self.r.read(&mut buf[n..]) {
                Ok(0) if n == 0 && eof_ok => return Ok(false),
                Ok(0) => return Err(MbError::Truncated { offset: self.offset + n as u64 }),
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err(format!("reading at stream offset {}", self.offset))(e)),
            }
        }
        self.offset += n as u64;
        Ok(true)
    }

    /// Reads a payload of exactly `len` bytes into a fresh buffer that is
    /// not zeroed first (`read_to_end` reads into the spare capacity): a
    /// backup is mostly 10 MiB chunks, and zeroing each one cost the
    /// donor's producer thread about as much as its CRC check.
    fn payload(&mut self, len: usize) -> Result<Vec<u8>, MbError> {
        let mut data = Vec::with_capacity(len);
        loop {
            let want = (len - data.len()) as u64;
            match (&mut self.r).take(want).read_to_end(&mut data) {
                Ok(_) if data.len() == len => break,
                Ok(_) => return Err(MbError::Truncated { offset: self.offset + data.len() as u64 }),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err(format!("reading at stream offset {}", self.offset))(e)),
            }
        }
        self.offset += len as u64;
        Ok(data)
    }

    /// The next chunk, or `None` at a clean end of stream.
    pub fn next_chunk(&mut self) -> Result<Option<Chunk>, MbError> {
        loop {
            let start = self.offset;
            let mut h = [0u8; 14];
            if !self.fill(&mut h, true)? {
                return Ok(None);
            }
            if &h[..8] != MAGIC {
                return Err(MbError::BadMagic { offset: start });
            }
            let (flags, kind) = (h[8], h[9]);
            let path_len = u32::from_le_bytes([h[10], h[11], h[12], h[13]]);
            if flags & !FLAG_IGNORABLE != 0 {
                return Err(MbError::Kind { kind: kind as char, flags, offset: start });
            }
            if path_len == 0 || path_len as usize > MAX_PATH {
                return Err(MbError::PathLen { len: path_len, offset: start });
            }
            let mut pb = vec![0u8; path_len as usize];
            self.fill(&mut pb, false)?;
            let path = String::from_utf8(pb).map_err(|_| MbError::Path {
                path: "<not UTF-8>".into(),
                reason: "path is not UTF-8",
                offset: start,
            })?;
            check_path(&path).map_err(|reason| MbError::Path { path: path.clone(), reason, offset: start })?;
            let skip = match kind {
                b'E' => return Ok(Some(Chunk::Eof { path })),
                b'P' => false,
                _ if flags & FLAG_IGNORABLE != 0 => true,
                _ => return Err(MbError::Kind { kind: kind as char, flags, offset: start }),
            };
            let mut t = [0u8; 20];
            self.fill(&mut t, false)?;
            let len = u64::from_le_bytes(t[0..8].try_into().expect("8 bytes"));
            let file_offset = u64::from_le_bytes(t[8..16].try_into().expect("8 bytes"));
            let crc = u32::from_le_bytes(t[16..20].try_into().expect("4 bytes"));
            if len > self.max_payload {
                return Err(MbError::TooLarge { path, len, max: self.max_payload, offset: start });
            }
            let data = self.payload(len as usize)?;
            if crc32fast::hash(&data) != crc {
                return Err(MbError::Checksum { path, file_offset, offset: start });
            }
            if !skip {
                return Ok(Some(Chunk::Payload { path, offset: file_offset, data }));
            }
        }
    }
}

/// Writes an mbstream.
#[derive(Debug)]
pub struct Writer<W> {
    w: W,
    offsets: HashMap<String, u64>,
}

impl<W: Write> Writer<W> {
    pub fn new(w: W) -> Self {
        Self { w, offsets: HashMap::new() }
    }

    fn header(&mut self, kind: u8, path: &str) -> io::Result<()> {
        if path.is_empty() || path.len() > MAX_PATH {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("mbstream path {path:?} is empty or too long")));
        }
        self.w.write_all(MAGIC)?;
        self.w.write_all(&[0, kind])?;
        self.w.write_all(&(path.len() as u32).to_le_bytes())?;
        self.w.write_all(path.as_bytes())
    }

    /// Appends `data` to `path`, in chunks of at most 10 MiB.
    pub fn write(&mut self, path: &str, data: &[u8]) -> io::Result<()> {
        for piece in data.chunks(WRITER_CHUNK) {
            let off = *self.offsets.get(path).unwrap_or(&0);
            self.header(b'P', path)?;
            self.w.write_all(&(piece.len() as u64).to_le_bytes())?;
            self.w.write_all(&off.to_le_bytes())?;
            self.w.write_all(&crc32fast::hash(piece).to_le_bytes())?;
            self.w.write_all(piece)?;
            self.offsets.insert(path.to_string(), off + piece.len() as u64);
        }
        Ok(())
    }

    /// Ends `path` (an unwritten path becomes an empty file).
    pub fn finish_file(&mut self, path: &str) -> io::Result<()> {
        self.offsets.remove(path);
        self.header(b'E', path)
    }

    pub fn into_inner(self) -> W {
        self.w
    }
}

struct Open {
    file: File,
    next: u64,
}

/// Extracts chunks into a directory, creating everything through the
/// engine's confined `openat2` helpers (no symlink followed, nothing outside
/// the root).
pub struct Extractor {
    root: PathBuf,
    root_dir: File,
    open: HashMap<String, Open>,
    ended: HashSet<String>,
    dirs: BTreeSet<PathBuf>,
    /// Bytes written so far.
    pub bytes: u64,
}

impl std::fmt::Debug for Extractor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Extractor").field("root", &self.root).field("open", &self.open.len()).finish_non_exhaustive()
    }
}

impl Extractor {
    /// Extracts under `root` (created if missing).
    pub fn new(root: &Path) -> Result<Self, MbError> {
        fs::create_dir_all(root).map_err(io_err(format!("creating {}", root.display())))?;
        let root_dir = File::open(root).map_err(io_err(format!("opening {}", root.display())))?;
        Ok(Self { root: root.to_path_buf(), root_dir, open: HashMap::new(), ended: HashSet::new(), dirs: BTreeSet::new(), bytes: 0 })
    }

    fn open(&mut self, path: &str) -> Result<(), MbError> {
        if self.open.contains_key(path) {
            return Ok(());
        }
        if self.ended.contains(path) {
            return Err(MbError::AfterEnd { path: path.into() });
        }
        let rel = path.strip_prefix("./").unwrap_or(path);
        if let Some((parent, _)) = rel.rsplit_once('/') {
            sluice_engine::sink::create_dirs(&self.root_dir, parent.as_bytes(), 0o755).map_err(|(at, what, e)| MbError::Io {
                context: format!("{what} {} (for {path})", String::from_utf8_lossy(&at)),
                source: e,
            })?;
            self.dirs.insert(self.root.join(parent));
        }
        let file = sluice_engine::sink::create_file(&self.root_dir, rel.as_bytes(), libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, 0o644)
            .map_err(io_err(format!("creating {path} (it must not exist yet, and no symlink may be on its path)")))?;
        self.open.insert(path.to_string(), Open { file, next: 0 });
        Ok(())
    }

    /// Applies one chunk.
    pub fn apply(&mut self, chunk: Chunk) -> Result<(), MbError> {
        match chunk {
            Chunk::Payload { path, offset, data } => {
                self.open(&path)?;
                let o = self.open.get_mut(&path).expect("opened above");
                if offset != o.next {
                    return Err(MbError::OutOfOrder { path, got: offset, expected: o.next });
                }
                o.file.write_all(&data).map_err(io_err(format!("writing {path}")))?;
                o.next += data.len() as u64;
                self.bytes += data.len() as u64;
            }
            Chunk::Eof { path } => {
                self.open(&path)?;
                let o = self.open.remove(&path).expect("opened above");
                o.file.sync_all().map_err(io_err(format!("syncing {path}")))?;
                self.ended.insert(path);
            }
        }
        Ok(())
    }

    /// Checks that every file ended and syncs the directories.
    pub fn finish(self) -> Result<u64, MbError> {
        if let Some(path) = self.open.keys().min() {
            return Err(MbError::Unended { path: path.clone() });
        }
        for d in &self.dirs {
            File::open(d).and_then(|f| f.sync_all()).map_err(io_err(format!("syncing {}", d.display())))?;
        }
        self.root_dir.sync_all().map_err(io_err(format!("syncing {}", self.root.display())))?;
        Ok(self.bytes)
    }
}

/// Reads a whole stream into `root`.
pub fn extract(r: impl Read, root: &Path) -> Result<u64, MbError> {
    let mut reader = Reader::new(r);
    let mut x = Extractor::new(root)?;
    while let Some(c) = reader.next_chunk()? {
        x.apply(c)?;
    }
    x.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = Writer::new(Vec::new());
        for (p, d) in files {
            w.write(p, d).unwrap();
            w.finish_file(p).unwrap();
        }
        w.into_inner()
    }

    #[test]
    fn round_trip_through_our_writer_and_extractor() {
        let tmp = tempfile::tempdir().unwrap();
        let big: Vec<u8> = (0..(WRITER_CHUNK + 12345)).map(|i| (i % 251) as u8).collect();
        let s = stream(&[("ibdata1", &big), ("db/t.ibd", b"page"), ("empty", b"")]);
        let n = extract(&s[..], &tmp.path().join("x")).unwrap();
        assert_eq!(n, big.len() as u64 + 4);
        assert_eq!(fs::read(tmp.path().join("x/ibdata1")).unwrap(), big);
        assert_eq!(fs::read(tmp.path().join("x/db/t.ibd")).unwrap(), b"page");
        assert_eq!(fs::read(tmp.path().join("x/empty")).unwrap(), b"");
    }

    /// Hands out at most 7 bytes per read, with an EINTR between reads.
    struct Dribble<'a>(&'a [u8], bool);

    impl Read for Dribble<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.1 = !self.1;
            if self.1 {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let n = buf.len().min(7).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn payloads_arrive_whole_from_short_reads_and_a_cut_one_is_truncated() {
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        let s = stream(&[("db/t.ibd", &big)]);
        let mut r = Reader::new(Dribble(&s, false));
        assert_eq!(r.next_chunk().unwrap(), Some(Chunk::Payload { path: "db/t.ibd".into(), offset: 0, data: big.clone() }));
        assert_eq!(r.next_chunk().unwrap(), Some(Chunk::Eof { path: "db/t.ibd".into() }));
        assert_eq!(r.next_chunk().unwrap(), None);
        // Cut 1000 bytes into the payload (header 14 + path 8 + 20).
        let head = 14 + 8 + 20;
        let mut r = Reader::new(&s[..head + 1000]);
        assert!(matches!(r.next_chunk(), Err(MbError::Truncated { offset }) if offset == (head + 1000) as u64));
    }

    #[test]
    fn hostile_streams_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let good = stream(&[("a", b"hello")]);
        let mut bad_magic = good.clone();
        bad_magic[0] = b'Y';
        assert!(matches!(extract(&bad_magic[..], &tmp.path().join("1")), Err(MbError::BadMagic { offset: 0 })));
        let mut bad_crc = good.clone();
        bad_crc[14 + 1 + 20] ^= 1;
        assert!(matches!(extract(&bad_crc[..], &tmp.path().join("2")), Err(MbError::Checksum { .. })));
        assert!(matches!(extract(&good[..good.len() - 3], &tmp.path().join("3")), Err(MbError::Truncated { .. })));
        let unended = {
            let mut w = Writer::new(Vec::new());
            w.write("a", b"x").unwrap();
            w.into_inner()
        };
        assert!(matches!(extract(&unended[..], &tmp.path().join("4")), Err(MbError::Unended { .. })));
        for p in ["../escape", "/etc/passwd", "a/../../b", "a//b"] {
            let s = stream(&[(p, b"x")]);
            assert!(matches!(extract(&s[..], &tmp.path().join("5")), Err(MbError::Path { .. })), "{p}");
        }
        assert!(!tmp.path().join("escape").exists());
        // A huge declared length is refused before any allocation.
        let mut huge = stream(&[("a", b"x")]);
        huge[15..23].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(extract(&huge[..], &tmp.path().join("6")), Err(MbError::TooLarge { .. })));
        // Data after the file's end.
        let mut again = stream(&[("a", b"x")]);
        again.extend(stream(&[("a", b"y")]));
        assert!(extract(&again[..], &tmp.path().join("7")).is_err());
    }

    #[test]
    fn symlinks_in_the_target_are_never_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let outside = tmp.path().join("outside");
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("db")).unwrap();
        std::os::unix::fs::symlink(outside.join("f"), root.join("f")).unwrap();
        assert!(extract(&stream(&[("db/t.ibd", b"x")])[..], &root).is_err());
        assert!(extract(&stream(&[("f", b"x")])[..], &root).is_err());
        assert!(fs::read_dir(&outside).unwrap().next().is_none());
    }
}
