//! The SST method as mysqld runs it, without mysqld: the multi-call name,
//! the stdout protocol, exit codes, the parent watch, and a donor/joiner
//! pair over a real socket in IST (bypass) mode. The full SST with
//! mariadb-backup on a real cluster is in tests/galera.rs.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const UUID: &str = "5ddc2d84-e57f-11f1-bdb1-3269f43d81db";

fn sluice() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_sluice"))
}

/// The binary under its SST name, as an install creates it.
fn script(dir: &Path) -> std::path::PathBuf {
    let s = dir.join("wsrep_sst_sluice");
    std::os::unix::fs::symlink(sluice(), &s).unwrap();
    s
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn ist_bypass_runs_end_to_end_with_mysqlds_line_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let (jdata, ddata) = (dir.path().join("joiner"), dir.path().join("donor"));
    std::fs::create_dir_all(&ddata).unwrap();
    std::fs::create_dir_all(&jdata).unwrap();
    std::fs::write(jdata.join("ibdata1"), b"keep me: IST must not touch the datadir").unwrap();
    let port = free_port();
    let s = script(dir.path());
    let (mut joiner, mut out, addr) = common::start_sst_joiner(&s, port, &jdata, "--wsrep-new-cluster");
    assert!(addr.starts_with(&format!("127.0.0.1:{port}/sluice2_")) && addr.ends_with("//1"), "{addr}");
    assert!(addr.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-:/[]".contains(&b)), "mysqld's address_char set: {addr}");

    let mut donor = Command::new(&s)
        .args(["--role", "donor", "--address", &addr, "--local-port", "3306", "--socket", "/nonexistent.sock", "--progress", "0"])
        .arg("--datadir")
        .arg(&ddata)
        .args(["--gtid", &format!("{UUID}:16"), "--gtid-domain-id", "0", "--bypass", "--mysqld-args", "--x"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A newer mysqld writes the credentials on the donor's stdin and closes it.
    std::io::Write::write_all(&mut donor.stdin.take().unwrap(), b"sst_user=wsrep.sst.x\nsst_password=p4ss word\nsst_bogus=1\n").unwrap();
    let donor = donor.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&donor.stderr);
    assert!(donor.status.success(), "donor failed: {stderr}");
    assert_eq!(String::from_utf8_lossy(&donor.stdout), format!("continue\ndone {UUID}:16\n"));
    assert!(stderr.lines().all(|l| l.starts_with("WSREP_SST: [")), "every stderr line is a WSREP_SST line:\n{stderr}");
    assert!(stderr.contains("unrecognized input from mysqld on stdin: sst_bogus"), "stdin was read:\n{stderr}");
    assert!(!stderr.contains("p4ss"), "a password reached the log");

    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let status = joiner.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut joiner.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "joiner failed: {err}");
    assert_eq!(rest, format!("{UUID}:16 0\n"), "the joiner's final line");
    assert!(err.contains("running IST"), "{err}");
    assert_eq!(std::fs::read(jdata.join("ibdata1")).unwrap(), b"keep me: IST must not touch the datadir");
    assert!(!jdata.join(".sst").exists() && !jdata.join("sst_in_progress").exists());
}

#[test]
fn a_donor_refuses_a_joiner_that_runs_another_method() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(sluice())
        .args(["sst", "--role", "donor", "--address", "127.0.0.1:4444/xtrabackup_sst//1", "--datadir"])
        .arg(dir.path())
        .args(["--gtid", &format!("{UUID}:1"), "--gtid-domain-id", "0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(22));
    assert!(out.stdout.is_empty(), "nothing but protocol lines on stdout");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("WSREP_SST: [ERROR]") && err.contains("runs a different SST method"), "{err}");
}

#[test]
fn bad_arguments_exit_with_the_stock_codes() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| Command::new(sluice()).arg("sst").args(args).stdin(Stdio::null()).output().unwrap();
    let no_datadir = run(&["--role", "joiner", "--address", "127.0.0.1:1"]);
    assert_eq!(no_datadir.status.code(), Some(2));
    let d = dir.path().to_str().unwrap();
    let bad_role = run(&["--role", "observer", "--datadir", d]);
    assert_eq!(bad_role.status.code(), Some(22));
    assert!(String::from_utf8_lossy(&bad_role.stderr).contains("invalid --role"));
    let cnf = dir.path().join("my.cnf");
    std::fs::write(&cnf, "[sst]\nencrypt=9\n").unwrap();
    let bad_opt = run(&["--role", "joiner", "--address", "127.0.0.1:1", "--datadir", d, "--defaults-file", cnf.to_str().unwrap()]);
    assert_eq!(bad_opt.status.code(), Some(22));
    let err = String::from_utf8_lossy(&bad_opt.stderr);
    assert!(err.contains("`encrypt`") && err.contains("my.cnf:2"), "names key and file:line: {err}");
    // Encryption without its certificates fails closed: no ready line, no plaintext transfer.
    std::fs::write(&cnf, "[sst]\nencrypt=3\n").unwrap();
    let unsupported = run(&["--role", "joiner", "--address", "127.0.0.1:1", "--datadir", d, "--defaults-file", cnf.to_str().unwrap()]);
    assert_eq!(unsupported.status.code(), Some(22));
    assert!(String::from_utf8_lossy(&unsupported.stderr).contains("encrypt=3 needs tcert and tkey"));
    assert!(unsupported.stdout.is_empty(), "no ready line for an SST that cannot be done");
    // A cpat that would delete the staging directory is refused up front.
    std::fs::write(&cnf, "[sst]\ncpat=.*/grastate\\.dat\n").unwrap();
    let cpat = run(&["--role", "joiner", "--address", "127.0.0.1:1", "--datadir", d, "--defaults-file", cnf.to_str().unwrap()]);
    assert_eq!(cpat.status.code(), Some(22));
    assert!(String::from_utf8_lossy(&cpat.stderr).contains("would delete the staging directory"));
}

#[test]
fn a_joiner_whose_mysqld_dies_exits_32() {
    let dir = tempfile::tempdir().unwrap();
    let mut parent = Command::new("sleep").arg("30").spawn().unwrap();
    let port = free_port();
    let mut joiner = Command::new(sluice())
        .args(["sst", "--role", "joiner", "--address", &format!("127.0.0.1:{port}"), "--datadir"])
        .arg(dir.path())
        .args(["--parent", &parent.id().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    BufReader::new(joiner.stdout.take().unwrap()).read_line(&mut ready).unwrap();
    assert!(ready.starts_with("ready "), "{ready}");
    parent.kill().unwrap();
    parent.wait().unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(s) = joiner.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "the joiner outlived its parent");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(32));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut joiner.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains(&format!("parent mysqld process (pid {}) terminated unexpectedly", parent.id())), "{err}");
}
