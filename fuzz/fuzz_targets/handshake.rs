//! The receiver's side of a connection fed arbitrary bytes: the frame
//! reader as a stream (headers, DATA sub-headers, bodies, sealed bodies
//! opened with a session key), and the HELLO admission rules.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_engine::codec::seal::{Binding, Direction, SealKey, Sealer};
use sluice_engine::net;
use sluice_engine::wire::{Frame, Kind};

fuzz_target!(|data: &[u8]| {
    let (sealed, bytes) = match data.split_first() {
        Some((b, rest)) => (b & 1 == 1, rest),
        None => return,
    };
    let key = SealKey::parse(&[7; 32]).expect("32 bytes");
    let binding = Binding { sender_salt: &[1; 16], receiver_nonce: &[2; 16], token: &[3; 16], capabilities: 4, streams: 1 };
    let mut opener = sealed.then(|| Sealer::new(key.session(&binding), Direction::ToReceiver, 0));
    let mut r = bytes;
    for _ in 0..64 {
        let Ok(h) = net::read_header(&mut r, "fuzz", "fuzzing") else { return };
        if h.kind == Kind::Data {
            let Ok((d, wire_len)) = net::read_data_header(&mut r, "fuzz", h) else { return };
            let _ = (d, wire_len);
            return;
        }
        match net::read_body(&mut r, "fuzz", h, opener.as_mut()) {
            Ok(Frame::Hello(hello)) => {
                let _ = sluice_engine::recv::hello_refusal(&hello, sealed, false);
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
});
