//! The producer side of a streamed session: [`Feeder`] takes the files a
//! source discovers as it goes (a backup stream, say) and hands them to the
//! sender's streams as blocks, each checksummed, with each file's digest
//! kept for its FILE_END. Bounded: a few blocks per stream are queued, and
//! a full queue holds the producer back.
//!
//! In a delta session the feeder announces each file as soon as it sees
//! it (the receiver then fingerprints its old copy), holds a window of
//! blocks until their fingerprints arrive, and cuts each block into pieces
//! — data, references to the old copy, zeros — before it is queued, so the
//! file digests it computes cover exactly what travels. A file's blocks
//! and its end leave in order; a block waits only while the window has
//! room, so the source keeps running while the receiver answers.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use crate::delta::{Book, Fate};
use crate::pipeline::Abort;
use crate::{Error, Result};

/// Bytes of blocks a delta session's feeder holds while their
/// fingerprints are on their way.
pub const DELTA_WINDOW: usize = 32 << 20;

/// One unit of work for a streamed session's sender streams.
#[derive(Debug)]
pub(crate) struct Item {
    pub file_id: u32,
    pub path: Arc<[u8]>,
    pub what: ItemKind,
}

#[derive(Debug)]
pub(crate) enum ItemKind {
    /// Announce the file now (a delta session: the receiver fingerprints
    /// its old copy of it).
    Announce,
    Data {
        offset: u64,
        data: Vec<u8>,
        checksum: u64,
    },
    /// A piece that travels without payload: a reference to the receiver's
    /// old copy or zeros (`flag`: `wire::data_flags::REF` or `ZERO`).
    Mark {
        offset: u64,
        len: u32,
        checksum: u64,
        flag: u8,
    },
    End {
        size: u64,
        data_bytes: u64,
        digest: u64,
    },
}

/// What waits in a delta session's window: file `id`'s block (offset,
/// bytes), or (`None`) its end.
type Waiting = (u32, Option<(u64, Vec<u8>)>);

/// A delta session's comparison: the fingerprints, and the blocks (and
/// ends) waiting for them, in the order the source produced them.
#[derive(Debug)]
struct Delta {
    book: Arc<Book>,
    /// Longest wait for a fingerprint (a silent receiver closes the book).
    wait: Duration,
    pending: VecDeque<Waiting>,
    bytes: usize,
    /// How long the source was held back waiting for fingerprints.
    waited: Duration,
}

/// Hands a streamed session's data to its sender streams: assigns file ids,
/// splits data into blocks, checksums them and keeps each file's digest.
#[derive(Debug)]
pub struct Feeder {
    tx: crossbeam_channel::Sender<Item>,
    block_size: usize,
    abort: Arc<Abort>,
    /// Paths of files not ended yet, and their ids.
    open: HashMap<Vec<u8>, u32>,
    /// Files whose end has not been queued yet.
    files: HashMap<u32, OpenFile>,
    ended: HashSet<Vec<u8>>,
    next_id: u32,
    bytes: u64,
    delta: Option<Delta>,
}

#[derive(Debug)]
struct OpenFile {
    path: Arc<[u8]>,
    size: u64,
    data_bytes: u64,
    digest: u64,
}

impl Feeder {
    pub(crate) fn new(tx: crossbeam_channel::Sender<Item>, block_size: u32, abort: Arc<Abort>) -> Self {
        Self {
            tx,
            block_size: block_size as usize,
            abort,
            open: HashMap::new(),
            files: HashMap::new(),
            ended: HashSet::new(),
            next_id: 0,
            bytes: 0,
            delta: None,
        }
    }

    /// Compares every block with the receiver's fingerprints in `book`,
    /// waiting at most `wait` for one.
    pub(crate) fn with_delta(mut self, book: Arc<Book>, wait: Duration) -> Self {
        self.delta = Some(Delta { book, wait, pending: VecDeque::new(), bytes: 0, waited: Duration::ZERO });
        self
    }

    fn push(&self, item: Item) -> Result<()> {
        let mut item = item;
        loop {
            if self.abort.is_set() {
                return Err(Abort::error());
            }
            match self.tx.send_timeout(item, Duration::from_millis(100)) {
                Ok(()) => return Ok(()),
                Err(crossbeam_channel::SendTimeoutError::Timeout(back)) => item = back,
                Err(crossbeam_channel::SendTimeoutError::Disconnected(_)) => return Err(Abort::error()),
            }
        }
    }

    /// The id of `path`, announced (to the receiver, in a delta session)
    /// on first use.
    fn file(&mut self, path: &[u8]) -> Result<u32> {
        if let Some(&id) = self.open.get(path) {
            return Ok(id);
        }
        crate::manifest::validate_rel_path(path)
            .map_err(|reason| Error::Config(format!("the source names a file {:?}: {reason}", String::from_utf8_lossy(path))))?;
        if self.ended.contains(path) {
            return Err(Error::Config(format!("the source sent more data for {} after ending it", String::from_utf8_lossy(path))));
        }
        let id = self.next_id;
        self.next_id = id.checked_add(1).ok_or_else(|| Error::Config("more than 2^32 files in one stream".into()))?;
        let path: Arc<[u8]> = path.into();
        self.open.insert(path.to_vec(), id);
        self.files.insert(id, OpenFile { path: Arc::clone(&path), size: 0, data_bytes: 0, digest: 0 });
        if let Some(d) = &self.delta {
            d.book.announce(id);
            self.push(Item { file_id: id, path, what: ItemKind::Announce })?;
        }
        Ok(id)
    }

    /// Queues one piece of file `id` (its bytes `data`) as `fate` says
    /// (bytes that travel are copied only if borrowed).
    fn queue(&mut self, id: u32, offset: u64, data: Cow<'_, [u8]>, fate: Fate) -> Result<()> {
        let n = data.len() as u32;
        let checksum = crate::digest::checksum(&data);
        let f = self.files.get_mut(&id).expect("a file is known until its end is queued");
        f.digest = f.digest.wrapping_add(crate::digest::block_digest(id, offset, n, checksum));
        f.size = f.size.max(offset + u64::from(n));
        f.data_bytes += u64::from(n);
        let what = match fate {
            Fate::Send => ItemKind::Data { offset, data: data.into_owned(), checksum },
            Fate::Reference => ItemKind::Mark { offset, len: n, checksum, flag: crate::wire::data_flags::REF },
            Fate::Zero => ItemKind::Mark { offset, len: n, checksum, flag: crate::wire::data_flags::ZERO },
        };
        let item = Item { file_id: id, path: Arc::clone(&f.path), what };
        self.push(item)
    }

    /// Queues file `id`'s end.
    fn queue_end(&mut self, id: u32) -> Result<()> {
        let f = self.files.remove(&id).expect("a file ends once");
        if let Some(d) = &self.delta {
            d.book.forget(id);
        }
        self.push(Item { file_id: id, path: f.path, what: ItemKind::End { size: f.size, data_bytes: f.data_bytes, digest: f.digest } })
    }

    /// Queues what waits for fingerprints, in order: each block whose
    /// fingerprints have arrived (or, with `all` or a full window, once
    /// they arrive), cut into pieces.
    fn release(&mut self, all: bool) -> Result<()> {
        loop {
            let Some(d) = &mut self.delta else { return Ok(()) };
            let Some((id, block)) = d.pending.front() else { return Ok(()) };
            let id = *id;
            let Some((offset, data)) = block else {
                d.pending.pop_front();
                self.queue_end(id)?;
                continue;
            };
            let pages = crate::delta::pages_within(*offset, data.len() as u32);
            let must = all || d.bytes > DELTA_WINDOW;
            if !must && !d.book.ready(id, pages.clone()) {
                return Ok(());
            }
            let abort = Arc::clone(&self.abort);
            let started = std::time::Instant::now();
            let prints = if pages.is_empty() { Vec::new() } else { d.book.take(id, pages.clone(), d.wait, &|| abort.is_set()) };
            d.waited += started.elapsed();
            if self.abort.is_set() {
                return Err(Abort::error());
            }
            let (_, block) = d.pending.pop_front().expect("looked at above");
            let (offset, data) = block.expect("a block");
            d.bytes -= data.len();
            let fates = crate::delta::fates(&data, offset, pages.start, &prints);
            let pieces = crate::delta::split(offset, data.len() as u32, &fates);
            if let [whole] = pieces[..] {
                // One piece: the block itself travels (or not) as it is.
                self.queue(id, offset, Cow::Owned(data), whole.fate)?;
                continue;
            }
            for p in pieces {
                let at = (p.offset - offset) as usize;
                self.queue(id, p.offset, Cow::Borrowed(&data[at..at + p.len as usize]), p.fate)?;
            }
        }
    }

    /// Queues `data` for the file `path` at `offset` (the file is announced
    /// on first use).
    pub fn data(&mut self, path: &[u8], offset: u64, data: &[u8]) -> Result<()> {
        let id = self.file(path)?;
        let block = self.block_size;
        let mut pos = 0;
        while pos < data.len() {
            let n = (data.len() - pos).min(block);
            let at = offset + pos as u64;
            match &mut self.delta {
                None => self.queue(id, at, Cow::Borrowed(&data[pos..pos + n]), Fate::Send)?,
                Some(d) => {
                    d.pending.push_back((id, Some((at, data[pos..pos + n].to_vec()))));
                    d.bytes += n;
                    self.release(false)?;
                }
            }
            self.bytes += n as u64;
            pos += n;
        }
        Ok(())
    }

    /// Ends the file `path` (an empty file if it had no data).
    pub fn end(&mut self, path: &[u8]) -> Result<()> {
        let id = self.file(path)?;
        self.open.remove(path);
        self.ended.insert(path.to_vec());
        match &mut self.delta {
            None => self.queue_end(id),
            Some(d) => {
                d.pending.push_back((id, None));
                self.release(false)
            }
        }
    }

    /// Sends a whole small file.
    pub fn file_bytes(&mut self, path: &[u8], data: &[u8]) -> Result<()> {
        self.data(path, 0, data)?;
        self.end(path)
    }

    /// Data bytes queued so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Checks that every file was ended and queues what still waits for
    /// fingerprints; returns (files, data bytes).
    pub(crate) fn finish(&mut self) -> Result<(u64, u64)> {
        if let Some(path) = self.open.keys().min() {
            return Err(Error::Config(format!("the source ended while {} was still open", String::from_utf8_lossy(path))));
        }
        self.release(true)?;
        if let Some(d) = &self.delta {
            tracing::info!("delta: the source waited {:.2} s in all for the receiver's fingerprints", d.waited.as_secs_f64());
        }
        Ok((self.ended.len() as u64, self.bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{PRINT_PAGE, data_flags};

    const P: usize = PRINT_PAGE as usize;

    #[test]
    fn a_delta_feeder_announces_first_waits_for_fingerprints_and_digests_its_pieces() {
        let (tx, rx) = crossbeam_channel::bounded::<Item>(64);
        let book = Arc::new(Book::streamed());
        let mut feeder = Feeder::new(tx, 1 << 20, Arc::new(Abort::default())).with_delta(Arc::clone(&book), Duration::from_secs(10));
        // Pages 0 and 1 as the receiver holds them, 2 all zeros (where the
        // receiver holds something else), 3 changed, and a partial page at
        // the end.
        let mut data: Vec<u8> = (0..4 * P + 100).map(|i| (i % 251) as u8).collect();
        data[2 * P..3 * P].fill(0);
        let old: Vec<_> = [&data[..P], &data[P..2 * P], &[9u8; P][..], &[7u8; P][..]].map(crate::fingerprint::of).to_vec();
        let receiver = std::thread::spawn(move || {
            let mut items = Vec::new();
            while let Ok(item) = rx.recv() {
                if matches!(item.what, ItemKind::Announce) {
                    // The receiver answers the announcement.
                    book.add(0, item.file_id, true, 0, old.clone()).unwrap();
                }
                items.push(item);
            }
            items
        });
        feeder.data(b"db/t.ibd", 0, &data).unwrap();
        feeder.end(b"db/t.ibd").unwrap();
        assert_eq!(feeder.finish().unwrap(), (1, data.len() as u64));
        drop(feeder);
        let items = receiver.join().unwrap();
        let mut digest = 0u64;
        let mut shape = Vec::new();
        for item in &items {
            match &item.what {
                ItemKind::Announce => shape.push(("announce", 0, 0)),
                ItemKind::Mark { offset, len, checksum, flag } => {
                    let at = *offset as usize;
                    assert_eq!(*checksum, crate::digest::checksum(&data[at..at + *len as usize]));
                    digest = digest.wrapping_add(crate::digest::block_digest(0, *offset, *len, *checksum));
                    shape.push((if *flag == data_flags::REF { "ref" } else { "zero" }, *offset, *len as usize));
                }
                ItemKind::Data { offset, data: bytes, checksum } => {
                    assert_eq!(&data[*offset as usize..*offset as usize + bytes.len()], &bytes[..]);
                    digest = digest.wrapping_add(crate::digest::block_digest(0, *offset, bytes.len() as u32, *checksum));
                    shape.push(("data", *offset, bytes.len()));
                }
                ItemKind::End { size, data_bytes, digest: d } => {
                    assert_eq!((*size, *data_bytes, *d), (data.len() as u64, data.len() as u64, digest), "the digest covers the pieces");
                    shape.push(("end", 0, 0));
                }
            }
        }
        assert_eq!(
            shape,
            vec![("announce", 0, 0), ("ref", 0, 2 * P), ("zero", 2 * PRINT_PAGE, P), ("data", 3 * PRINT_PAGE, P + 100), ("end", 0, 0)]
        );
    }

    #[test]
    fn without_delta_blocks_go_at_once_and_cut_at_the_block_size() {
        let (tx, rx) = crossbeam_channel::bounded::<Item>(64);
        let mut feeder = Feeder::new(tx, 1000, Arc::new(Abort::default()));
        feeder.file_bytes(b"a", &[1u8; 2500]).unwrap();
        assert_eq!(feeder.finish().unwrap(), (1, 2500));
        drop(feeder);
        let lens: Vec<Option<usize>> = rx
            .iter()
            .map(|i| match i.what {
                ItemKind::Data { data, .. } => Some(data.len()),
                ItemKind::End { .. } => None,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(lens, vec![Some(1000), Some(1000), Some(500), None]);
    }
}
