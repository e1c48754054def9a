//! The receiver's journal parser on arbitrary bytes (a journal torn by a
//! crash, or written by someone else into the destination): it returns
//! what came before the first bad record or an error, never panics, and
//! `carry` of what it parsed against a small manifest stays consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_engine::journal::{self, Held};
use sluice_engine::manifest::{Entry, EntryKind};

fuzz_target!(|data: &[u8]| {
    let mut bytes = b"SLUICEJ1".to_vec();
    bytes.extend_from_slice(data);
    let _ = journal::ranges(&bytes[..]);
    if let Ok(held) = Held::parse(&bytes[..]) {
        let entries = vec![Entry::new(0, EntryKind::Dir, b"d", 0), Entry::new(1, EntryKind::File, b"d/f", 1 << 20)];
        let c = held.carry(&entries);
        assert!(c.bytes() <= 1 << 20);
        let _ = held.bytes();
    }
});
