//! mysqld's SST arguments and the joiner address: arbitrary argv (split at
//! NUL bytes) and arbitrary address strings.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_sst::args::{SstAddress, parse};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let argv: Vec<String> = text.split('\0').map(str::to_string).collect();
    let _ = parse(&argv);
    let _ = SstAddress::parse(&text);
});
