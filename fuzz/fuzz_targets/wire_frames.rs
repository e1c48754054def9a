//! Every wire decoder on arbitrary bytes: frame headers, DATA sub-headers
//! and control-frame bodies. They must return errors, never panic, and
//! never allocate past their per-kind bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_engine::wire::{DATA_HEADER_LEN, DataHeader, FRAME_HEADER_LEN, Frame, FrameHeader};

fuzz_target!(|data: &[u8]| {
    if data.len() < FRAME_HEADER_LEN {
        return;
    }
    let (h, body) = data.split_at(FRAME_HEADER_LEN);
    if let Ok(h) = FrameHeader::decode(h.try_into().expect("8 bytes")) {
        if let Ok(b) = <&[u8; DATA_HEADER_LEN]>::try_from(body.get(..DATA_HEADER_LEN).unwrap_or(&[])) {
            let _ = DataHeader::decode(h.len, h.flags, b);
        }
        let _ = Frame::decode(FrameHeader { len: body.len() as u32, ..h }, body);
        if let Ok(f) = Frame::decode(h, body) {
            // What decodes re-encodes to the same bytes.
            let mut out = Vec::new();
            f.encode(&mut out);
            assert_eq!(&out[FRAME_HEADER_LEN..], body, "{f:?}");
        }
    }
});
