//! Receiver restart: a `sluice recv` process SIGKILLed mid-transfer is
//! started again with `--resume` on the same directory, the sender is run
//! again with the new token, and it sends only what the receiver's
//! journal does not hold as verified and durable. Every run ends
//! byte-identical (`diff::compare`), on every backend and with sealing and
//! compression; the journal never lists a byte twice; the bytes held plus
//! the bytes sent are exactly the tree's data. A streamed backup cannot be
//! rewound, and `--resume` says so.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{io_of, methods, pattern, write_private};
use sluice_engine::codec::Compression;
use sluice_engine::codec::seal::SealKey;
use sluice_engine::journal;
use sluice_engine::manifest::{Extent, INCOMPLETE_MARKER, JOURNAL_FILE};
use sluice_engine::send::send_streamed;
use sluice_engine::{IoMode, Journaling, Method, ReceiveConfig, SendConfig, Summary};

const SEAL_KEY: &str = "4f7e3c2a9d1b8e6f0a5c7d3e2b1f9a8c6d4e2f0a1b3c5d7e9f8a6b4c2d0e1f3a";

/// A tree of ~72 MiB: three large files, 150 small ones, a sparse file, an
/// empty file, a symlink.
fn tree(root: &Path) -> PathBuf {
    let src = root.join("src");
    std::fs::create_dir_all(src.join("db/sub")).unwrap();
    std::fs::write(src.join("ibdata1"), pattern(40 << 20, 3)).unwrap();
    std::fs::write(src.join("db/t1.ibd"), pattern(20 << 20, 5)).unwrap();
    std::fs::write(src.join("db/sub/t2.ibd"), pattern(9 << 20, 9)).unwrap();
    for i in 0..150 {
        std::fs::write(src.join(format!("db/s{i}.frm")), pattern(2000 + i * 37, i as u32 + 11)).unwrap();
    }
    let sparse = std::fs::File::create(src.join("db/sparse")).unwrap();
    sparse.set_len(16 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, &pattern(1 << 20, 77), 8 << 20).unwrap();
    std::fs::write(src.join("db/empty"), b"").unwrap();
    std::os::unix::fs::symlink("t1.ibd", src.join("db/link")).unwrap();
    src
}

/// The tree's data bytes as the sender scans them (holes excluded).
fn data_bytes(src: &Path) -> u64 {
    sluice_engine::source::scan(&[src.to_path_buf()]).unwrap().data_bytes()
}

/// `sluice send` of `src` to `recv`, rate-limited so that a kill lands
/// mid-transfer.
fn spawn_send(src: &Path, recv: &common::Recv, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["send", "--to", &recv.addr, "--rate-limit", "8M", "--block-size", "256K"])
        .args(extra)
        .arg(src)
        .env("SLUICE_TOKEN", &recv.token)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// What the journal in `dest` holds, once it holds at least `min` bytes
/// (polled; fails after 60 s).
fn await_journal(dest: &Path, min: u64, log: &Path) -> u64 {
    let t = Instant::now();
    loop {
        let held = std::fs::File::open(dest.join(JOURNAL_FILE)).ok().and_then(|f| journal::Held::parse(f).ok()).map_or(0, |h| h.bytes());
        if held >= min {
            return held;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the journal in {} never reached {min} bytes (at {held}); receiver log:\n{}",
            dest.display(),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The journal's RANGE records overlap nowhere: no byte was journaled as
/// verified twice. Returns the bytes they cover.
fn journal_never_repeats(dest: &Path) -> u64 {
    let ranges = journal::ranges(std::fs::File::open(dest.join(JOURNAL_FILE)).unwrap()).unwrap();
    let mut by_file: std::collections::HashMap<Vec<u8>, Vec<Extent>> = std::collections::HashMap::new();
    for (p, x) in ranges {
        by_file.entry(p).or_default().push(x);
    }
    let mut total = 0;
    for (p, mut xs) in by_file {
        xs.sort_by_key(|x| x.offset);
        for w in xs.windows(2) {
            assert!(w[0].offset + w[0].len <= w[1].offset, "{}: journaled twice: {:?} and {:?}", String::from_utf8_lossy(&p), w[0], w[1]);
        }
        total += xs.iter().map(|x| x.len).sum::<u64>();
    }
    total
}

/// Starts a CLI receiver and a rate-limited CLI sender, SIGKILLs the
/// receiver once its journal holds `min` bytes, and waits for the sender
/// to fail. Returns the bytes the journal holds.
fn killed_receiver(src: &Path, dest: &Path, log: &Path, recv_args: &[&str], send_args: &[&str], min: u64) -> u64 {
    let mut recv = common::start_recv(dest, log, recv_args);
    let send = spawn_send(src, &recv, send_args);
    let held = await_journal(dest, min, log);
    recv.child.kill().unwrap();
    recv.child.wait().unwrap();
    let t = Instant::now();
    let out = send.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the sender cannot succeed without its receiver:\n{err}");
    assert!(t.elapsed() < Duration::from_secs(15), "the sender waited {:?} for a dead receiver:\n{err}", t.elapsed());
    assert!(dest.join(INCOMPLETE_MARKER).exists(), "a killed receive must look incomplete");
    held.max(await_journal(dest, 0, log))
}

fn resumed_recv(io: IoMode, sealed: bool) -> ReceiveConfig {
    ReceiveConfig {
        io,
        journal: Journaling::Resume,
        seal_key: sealed.then(|| SealKey::parse(SEAL_KEY.as_bytes()).unwrap()),
        ..ReceiveConfig::default()
    }
}

/// Runs the resumed session in process (exact figures); returns the
/// sender's and the receiver's summaries.
fn resume_in_process(src: &Path, dest: &Path, recv: ReceiveConfig, send: &SendConfig) -> (Summary, Summary) {
    match common::transfer_with(src, dest, recv, send) {
        (Ok(s), Ok(r)) => (s, r),
        (s, r) => {
            panic!("the resumed session failed: sender {:?}, receiver {:?}", s.err().map(|e| e.to_string()), r.err().map(|e| e.to_string()))
        }
    }
}

#[test]
fn a_killed_receiver_resumes_on_every_backend_and_the_sender_sends_only_the_rest() {
    let mut variants: Vec<(String, Method, bool, Compression, u16)> =
        methods().into_iter().map(|m| (format!("{m}"), m, false, Compression::None, 2)).collect();
    variants.push(("sealed lz4, 1 stream".into(), Method::Copy, true, Compression::Lz4, 1));
    for (name, method, sealed, compress, streams) in variants {
        let tmp = tempfile::tempdir().unwrap();
        let src = tree(tmp.path());
        let dest = tmp.path().join("dest");
        let key = tmp.path().join("seal.key");
        write_private(&key, SEAL_KEY);
        let io = format!("{method}");
        let key_arg = key.to_str().unwrap();
        let mut recv_args = vec!["--io", io.as_str()];
        let mut send_args = vec!["--streams", if streams == 1 { "1" } else { "2" }];
        if sealed {
            recv_args.extend(["--encrypt-key-file", key_arg]);
            send_args.extend(["--encrypt-key-file", key_arg, "--compress", "lz4"]);
        }
        let held = killed_receiver(&src, &dest, &tmp.path().join("recv.log"), &recv_args, &send_args, 8 << 20);
        assert_eq!(journal_never_repeats(&dest), held, "{name}");
        let total = data_bytes(&src);
        assert!(held < total, "{name}: the kill came too late ({held} of {total})");

        let send = SendConfig {
            streams,
            io: io_of(method),
            compress,
            seal_key: sealed.then(|| SealKey::parse(SEAL_KEY.as_bytes()).unwrap()),
            ..SendConfig::default()
        };
        let (s, r) = resume_in_process(&src, &dest, resumed_recv(io_of(method), sealed), &send);
        sluice_engine::diff::compare(&src, &dest).unwrap_or_else(|d| panic!("{name}: the resumed copy differs: {d}"));
        assert_eq!((s.held, r.held), (held, held), "{name}: both ends count what the journal held");
        assert_eq!(s.bytes + held, total, "{name}: the held bytes were not sent again, the rest was sent once");
        assert_eq!(r.bytes, s.bytes, "{name}");
        assert!(!dest.join(JOURNAL_FILE).exists() && !dest.join(INCOMPLETE_MARKER).exists(), "{name}: journal or marker left");
        eprintln!("{name}: held {held} of {total}; sent {}", s.bytes);
    }
}

/// A resumed receive killed again resumes again; the CLI logs what it held.
#[test]
fn a_receiver_killed_twice_resumes_twice_and_the_cli_says_what_it_held() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tree(tmp.path());
    let dest = tmp.path().join("dest");
    let first = killed_receiver(&src, &dest, &tmp.path().join("recv1.log"), &[], &[], 8 << 20);
    let second = killed_receiver(&src, &dest, &tmp.path().join("recv2.log"), &["--resume"], &[], first + (8 << 20));
    assert!(second > first, "the second run added to the journal ({first} → {second})");
    assert_eq!(journal_never_repeats(&dest), second);
    let log2 = std::fs::read_to_string(tmp.path().join("recv2.log")).unwrap();
    assert!(log2.contains("resuming into"), "{log2}");

    let log = tmp.path().join("recv3.log");
    let mut recv = common::start_recv(&dest, &log, &["--resume"]);
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["send", "--to", &recv.addr])
        .arg(&src)
        .env("SLUICE_TOKEN", &recv.token)
        .output()
        .unwrap();
    let status = recv.child.wait().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let rlog = std::fs::read_to_string(&log).unwrap();
    assert!(out.status.success() && status.success(), "sender:\n{err}\nreceiver:\n{rlog}");
    sluice_engine::diff::compare(&src, &dest).unwrap_or_else(|d| panic!("the copy differs: {d}"));
    let held_mib = format!("{:.1} MiB the receiver held from the interrupted transfer were not sent again", second as f64 / 1_048_576.0);
    assert!(err.contains(&held_mib), "the sender's log says what it did not send again ({held_mib}):\n{err}");
    assert!(rlog.contains("resuming into") && rlog.contains(&held_mib), "{rlog}");
}

/// Files that changed at the source since the interruption are received
/// again from the start, files gone from the source are removed, new ones
/// arrive: the result is the source as it is now.
#[test]
fn a_source_that_changed_since_the_interruption_is_copied_as_it_is_now() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tree(tmp.path());
    let dest = tmp.path().join("dest");
    // Wait until the largest file (sent first) is partly journaled and
    // the next has begun.
    let held = killed_receiver(&src, &dest, &tmp.path().join("recv.log"), &[], &[], 8 << 20);
    let journaled = journal::Held::parse(std::fs::File::open(dest.join(JOURNAL_FILE)).unwrap()).unwrap();
    assert_eq!(journaled.bytes(), held);
    // ibdata1 rewritten (new content, new mtime), t1.ibd removed, a new file.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(src.join("ibdata1"), pattern(40 << 20, 1234)).unwrap();
    std::fs::remove_file(src.join("db/t1.ibd")).unwrap();
    std::fs::remove_file(src.join("db/link")).unwrap();
    std::fs::write(src.join("db/new.ibd"), pattern(3 << 20, 42)).unwrap();
    let (s, _) = resume_in_process(&src, &dest, resumed_recv(IoMode::Auto, false), &SendConfig::default());
    sluice_engine::diff::compare(&src, &dest).unwrap_or_else(|d| panic!("the copy is not the source as it is now: {d}"));
    assert!(s.held < held, "the rewritten ibdata1 was not taken from the journal ({} of {held})", s.held);
    assert_eq!(s.bytes + s.held, data_bytes(&src));
}

#[test]
fn resume_refuses_what_it_cannot_continue() {
    let tmp = tempfile::tempdir().unwrap();
    let sluice = env!("CARGO_BIN_EXE_sluice");
    let run = |args: &[&str]| {
        let out = Command::new(sluice).args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} must fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // Nothing was interrupted here.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = run(&["recv", "--listen", "127.0.0.1:0", "--resume", "--dir", empty.to_str().unwrap()]);
    assert!(e.contains("holds no interrupted transfer") && e.contains("without --resume"), "{e}");
    let e = run(&["recv", "--listen", "127.0.0.1:0", "--resume", "--dir", tmp.path().join("missing").to_str().unwrap()]);
    assert!(e.contains("--resume: cannot open"), "{e}");
    // A streamed backup cannot be rewound.
    let e = run(&["recv", "--listen", "127.0.0.1:0", "--resume", "--prepare", "--datadir", empty.to_str().unwrap()]);
    assert!(e.contains("cannot be rewound"), "{e}");

    // An interrupted streamed session leaves a marker and no journal.
    let streamed = tmp.path().join("streamed");
    let (addr, token, h) = common::spawn_receiver(ReceiveConfig { journal: Journaling::Write, ..ReceiveConfig::default() }, &streamed);
    let sent = send_streamed(&addr.to_string(), &token, &SendConfig::default(), |f| {
        f.file_bytes(b"ibdata1", &pattern(3 << 20, 1))?;
        Err(sluice_engine::Error::Aborted("the backup program failed".into()))
    });
    assert!(sent.is_err() && h.join().unwrap().is_err());
    assert!(streamed.join(INCOMPLETE_MARKER).exists() && !streamed.join(JOURNAL_FILE).exists());
    let e = run(&["recv", "--listen", "127.0.0.1:0", "--resume", "--dir", streamed.to_str().unwrap()]);
    assert!(e.contains("no journal") && e.contains("streamed backup") && e.contains("from the start"), "{e}");

    // A resuming receiver refuses a streamed session, naming why, on both ends.
    let resumable = tmp.path().join("resumable");
    let src = tree(tmp.path());
    let held = killed_receiver(&src, &resumable, &tmp.path().join("recv.log"), &[], &[], 1);
    let (addr, token, h) = common::spawn_receiver(resumed_recv(IoMode::Auto, false), &resumable);
    let sent = send_streamed(&addr.to_string(), &token, &SendConfig::default(), |f| f.file_bytes(b"ibdata1", &pattern(1 << 20, 1)));
    let received = h.join().unwrap();
    let e = sent.expect_err("refused").to_string();
    assert!(e.contains("streamed backup, which cannot be rewound"), "{e}");
    assert!(received.unwrap_err().to_string().contains("cannot be rewound"));
    // The refusal touched nothing: the journal still holds what it held.
    assert_eq!(journal::Held::parse(std::fs::File::open(resumable.join(JOURNAL_FILE)).unwrap()).unwrap().bytes(), held);
}
