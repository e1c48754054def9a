//! The cpat translation (GNU find emacs regex to Rust regex) on arbitrary
//! patterns, and matching with what it produced.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_sst::datadir::KeepPattern;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (pattern, path) = text.split_once('\n').unwrap_or((&text, "/var/lib/mysql/ibdata1"));
    if let Ok(k) = KeepPattern::parse(pattern) {
        let _ = k.keeps(path);
    }
});
