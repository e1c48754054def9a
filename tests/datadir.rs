//! The cpat cleanup against the real GNU find: for each pattern, the set
//! of entries sluice deletes equals what the stock command
//! `find -L DIRS -mindepth 1 -prune -regex CPAT -o -exec rm -rf {} +`
//! would delete (listed here with -print instead of rm).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use sluice_sst::datadir::{self, KeepPattern};

#[test]
fn cleanup_deletes_exactly_what_find_would() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let undo = tmp.path().join("undo");
    for d in [&data, &undo, &data.join(".sst"), &data.join("mysql"), &data.join("db (1)")] {
        std::fs::create_dir_all(d).unwrap();
    }
    for f in [
        "ibdata1",
        "ib_logfile0",
        "grastate.dat",
        "gvwstate.dat",
        "galera.cache",
        "server-key.pem",
        "node.err",
        "mariabackup.move.log",
        "sst_in_progress",
        "a b.log",
        "t1.ibd",
        "mysql-bin.000001",
        "RPM_UPGRADE_MARKER",
        "grastate.dat.old",
        "x|y",
        ".sst/keep",
        "mysql/user.frm",
    ] {
        std::fs::write(data.join(f), b"x").unwrap();
    }
    std::fs::write(undo.join("undo001"), b"x").unwrap();
    std::fs::write(undo.join("undo.log"), b"x").unwrap();
    std::os::unix::fs::symlink(tmp.path(), data.join("link-out")).unwrap();
    let dirs = vec![data.clone(), undo.clone()];

    let patterns = [
        KeepPattern::stock_default().source().to_string(),
        r".*\.ibd$\|.*grastate\.dat$\|.*\.sst$".to_string(),
        r".*/\(ib\|undo\)[^/]*$\|.*\.sst".to_string(),
        r".*[0-9]$".to_string(),
        r".*(1)$\|.*x|y$".to_string(),
    ];
    for cpat in &patterns {
        let keep = KeepPattern::parse(cpat).unwrap();
        let ours: BTreeSet<PathBuf> = datadir::doomed(&dirs, &keep).unwrap().into_iter().collect();
        let out =
            Command::new("find").arg("-L").args(&dirs).args(["-mindepth", "1", "-prune", "-regex", cpat, "-o", "-print"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let theirs: BTreeSet<PathBuf> = String::from_utf8(out.stdout).unwrap().lines().map(PathBuf::from).collect();
        assert_eq!(ours, theirs, "cpat {cpat:?}");
    }

    // The real deletion keeps what the default keeps, and never follows the symlink.
    let removed = datadir::clean(&dirs, &KeepPattern::stock_default()).unwrap();
    assert!(removed.contains(&data.join("ibdata1")) && removed.contains(&data.join("link-out")));
    assert!(data.join("grastate.dat").exists() && data.join(".sst/keep").exists() && !data.join("mysql").exists());
    assert!(tmp.path().join("undo").exists(), "the symlink's target survived");
}
