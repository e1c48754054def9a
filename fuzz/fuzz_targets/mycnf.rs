//! The option-file parser on arbitrary text, with includes resolved in
//! memory (the input may include itself).
#![no_main]

use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use sluice_sst::mycnf::{Files, Sources, load};

struct One(String);

impl Files for One {
    fn read(&self, _: &Path) -> std::io::Result<String> {
        Ok(self.0.clone())
    }
    fn list(&self, _: &Path) -> std::io::Result<Vec<String>> {
        Ok(vec!["a.cnf".into(), "b.cnf".into()])
    }
}

fuzz_target!(|data: &[u8]| {
    let files = One(String::from_utf8_lossy(data).into_owned());
    let sources = Sources {
        defaults_file: Some(PathBuf::from("/fuzz/my.cnf")),
        extra_file: None,
        group_suffix: Some(".n1".into()),
        home: None,
        mariadb_home: None,
    };
    let _ = load(&files, &sources, &["sst", "mysqld", "client"]);
});
