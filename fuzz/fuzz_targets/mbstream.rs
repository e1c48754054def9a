//! The mbstream reader on arbitrary bytes: bounded lengths, checksums,
//! confined paths; errors, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_sst::mbstream::Reader;

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data).with_max_payload(1 << 20);
    for _ in 0..1024 {
        match r.next_chunk() {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return,
        }
    }
});
