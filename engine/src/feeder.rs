//! The producer side of a streamed session: [`Feeder`] takes the files a
//! source discovers as it goes (a backup stream, say) and hands them to the
//! sender's streams as blocks, each checksummed, with each file's digest
//! kept for its FILE_END. Bounded: a few blocks per stream are queued, and
//! a full queue holds the producer back.

use std::sync::Arc;
use std::time::Duration;

use crate::pipeline::Abort;
use crate::{Error, Result};

/// One unit of work for a streamed session's sender streams.
#[derive(Debug)]
pub(crate) struct Item {
    pub file_id: u32,
    pub path: Arc<[u8]>,
    pub what: ItemKind,
}

#[derive(Debug)]
pub(crate) enum ItemKind {
    Data { offset: u64, data: Vec<u8>, checksum: u64 },
    End { size: u64, data_bytes: u64, digest: u64 },
}

/// Hands a streamed session's data to its sender streams: assigns file ids,
/// splits data into blocks, checksums them and keeps each file's digest.
#[derive(Debug)]
pub struct Feeder {
    tx: crossbeam_channel::Sender<Item>,
    block_size: usize,
    abort: Arc<Abort>,
    open: std::collections::HashMap<Vec<u8>, OpenFile>,
    ended: std::collections::HashSet<Vec<u8>>,
    next_id: u32,
    bytes: u64,
}

#[derive(Debug)]
struct OpenFile {
    id: u32,
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
            open: std::collections::HashMap::new(),
            ended: std::collections::HashSet::new(),
            next_id: 0,
            bytes: 0,
        }
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

    fn file(&mut self, path: &[u8]) -> Result<&mut OpenFile> {
        if !self.open.contains_key(path) {
            crate::manifest::validate_rel_path(path)
                .map_err(|reason| Error::Config(format!("the source names a file {:?}: {reason}", String::from_utf8_lossy(path))))?;
            if self.ended.contains(path) {
                return Err(Error::Config(format!("the source sent more data for {} after ending it", String::from_utf8_lossy(path))));
            }
            let id = self.next_id;
            self.next_id = id.checked_add(1).ok_or_else(|| Error::Config("more than 2^32 files in one stream".into()))?;
            self.open.insert(path.to_vec(), OpenFile { id, path: path.into(), size: 0, data_bytes: 0, digest: 0 });
        }
        Ok(self.open.get_mut(path).expect("inserted above"))
    }

    /// Queues `data` for the file `path` at `offset` (the file is announced
    /// on first use).
    pub fn data(&mut self, path: &[u8], offset: u64, data: &[u8]) -> Result<()> {
        let block = self.block_size;
        let mut pos = 0;
        while pos < data.len() {
            let n = (data.len() - pos).min(block);
            let chunk = data[pos..pos + n].to_vec();
            let at = offset + pos as u64;
            let checksum = crate::digest::checksum(&chunk);
            let f = self.file(path)?;
            f.digest = f.digest.wrapping_add(crate::digest::block_digest(f.id, at, n as u32, checksum));
            f.size = f.size.max(at + n as u64);
            f.data_bytes += n as u64;
            let item = Item { file_id: f.id, path: Arc::clone(&f.path), what: ItemKind::Data { offset: at, data: chunk, checksum } };
            self.bytes += n as u64;
            self.push(item)?;
            pos += n;
        }
        Ok(())
    }

    /// Ends the file `path` (an empty file if it had no data).
    pub fn end(&mut self, path: &[u8]) -> Result<()> {
        self.file(path)?;
        let f = self.open.remove(path).expect("opened above");
        self.ended.insert(path.to_vec());
        self.push(Item { file_id: f.id, path: f.path, what: ItemKind::End { size: f.size, data_bytes: f.data_bytes, digest: f.digest } })
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

    /// Checks that every file was ended; returns (files, data bytes).
    pub(crate) fn finish(&mut self) -> Result<(u64, u64)> {
        if let Some(path) = self.open.keys().min() {
            return Err(Error::Config(format!("the source ended while {} was still open", String::from_utf8_lossy(path))));
        }
        Ok((self.ended.len() as u64, self.bytes))
    }
}
