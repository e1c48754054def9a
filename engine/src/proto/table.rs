//! A manifest session's file table on the receiver, without I/O: which
//! entry a DATA frame writes into (its range inside one data extent),
//! the per-file tally, and when a file is complete. The driver opens and
//! finishes the files ([`crate::sink::Sink`]); this decides.

use crate::manifest::{Entry, EntryKind};
use crate::plan::{Completion, RecvTally, TallyError};
use crate::{Error, Result};

/// The entries of a manifest session and their tallies.
#[derive(Debug, Clone, Copy)]
pub struct ManifestTable<'a> {
    pub entries: &'a [Entry],
    pub tally: &'a RecvTally,
}

impl<'a> ManifestTable<'a> {
    /// The entry a DATA frame of `len` bytes at `offset` for file `id`
    /// writes into, its range checked against the entry's extents.
    pub fn target(&self, id: u32, offset: u64, len: u32, peer: &str) -> Result<&'a Entry> {
        let entry = self.entries.get(id as usize).ok_or_else(|| Error::peer(peer, format!("sent data for unknown file id {id}")))?;
        RecvTally::check_range(entry, offset, len).map_err(|e| Error::Verify { path: entry.display_path(), reason: e.to_string() })?;
        Ok(entry)
    }

    /// A verified block of `entry`: whether the file is now complete.
    pub fn block(&self, entry: &Entry, offset: u64, len: u32, sum: u64) -> Result<Completion> {
        Self::settled(entry, self.tally.record_block(entry.id, offset, len, sum))
    }

    /// The sender's FILE_DONE for file `id`: the entry, and whether it is
    /// now complete.
    pub fn done(&self, id: u32, digest: u64, peer: &str) -> Result<(&'a Entry, Completion)> {
        let entry = self
            .entries
            .get(id as usize)
            .filter(|e| e.kind == EntryKind::File && !e.extents.is_empty())
            .ok_or_else(|| Error::peer(peer, format!("sent FILE_DONE for file id {id}, which carries no data")))?;
        Ok((entry, Self::settled(entry, self.tally.record_done(id, digest))?))
    }

    /// After END: the first file still missing data or its digest.
    pub fn check_complete(&self) -> Result<()> {
        match self.tally.incomplete().first() {
            Some((id, got, want)) => Err(Error::Verify {
                path: self.entries[*id as usize].display_path(),
                reason: format!("{got} of {want} data bytes arrived and verified"),
            }),
            None => Ok(()),
        }
    }

    fn settled(entry: &Entry, state: std::result::Result<Completion, TallyError>) -> Result<Completion> {
        state.map_err(|e| Error::Verify { path: entry.display_path(), reason: e.to_string() })
    }
}
