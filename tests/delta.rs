//! Delta transfers over real loopback sockets: the receiver holds an older
//! copy (in its destination, or in a base directory), and only the pages
//! that differ travel. Every copy must end byte-identical to the source,
//! whatever the old copy holds.

mod common;

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use common::{pattern, transfer_with};
use sluice_engine::codec::Compression;
use sluice_engine::codec::seal::SealKey;
use sluice_engine::delta::Base;
use sluice_engine::{ReceiveConfig, SendConfig};

const PAGE: u64 = 16 << 10;

/// A datadir-like tree: a 24 MiB system tablespace, 30 small tables, a
/// nested directory, a symlink and an empty file.
fn tree(root: &Path) -> PathBuf {
    let src = root.join("src");
    fs::create_dir_all(src.join("db/sub")).unwrap();
    fs::write(src.join("ibdata1"), pattern(24 << 20, 11)).unwrap();
    for i in 0..30 {
        fs::write(src.join(format!("db/t{i}.ibd")), pattern(96 << 10 | (i * 1000), 100 + i as u32)).unwrap();
    }
    fs::write(src.join("db/sub/odd.ibd"), pattern(3 * PAGE as usize + 777, 5)).unwrap();
    fs::write(src.join("db/empty"), b"").unwrap();
    std::os::unix::fs::symlink("ibdata1", src.join("link")).unwrap();
    src
}

/// Changes the source the way a node that was down misses writes: one
/// page in twenty of the tablespace rewritten in part, a table grown, one
/// shrunk, one new, the tablespace extended by 1 MiB of zeros. Returns
/// the bytes that must travel at least: the
/// changed pages, what lies beyond the old copy's last whole page of the
/// grown table, the new table. (A file's partial last page always
/// travels too; InnoDB's files have none.)
fn age(src: &Path) -> u64 {
    let mut f = fs::OpenOptions::new().write(true).open(src.join("ibdata1")).unwrap();
    let pages = (24 << 20) / PAGE;
    // InnoDB extends its tablespace with written zeros (64 MiB at a time).
    f.seek(SeekFrom::Start(24 << 20)).unwrap();
    f.write_all(&vec![0u8; 1 << 20]).unwrap();
    let mut changed = 0;
    for p in (0..pages).step_by(20) {
        f.seek(SeekFrom::Start(p * PAGE + 300)).unwrap();
        f.write_all(&pattern(500, p as u32 + 7)).unwrap();
        changed += PAGE;
    }
    let old_len = fs::metadata(src.join("db/t3.ibd")).unwrap().len();
    let mut grown = fs::OpenOptions::new().append(true).open(src.join("db/t3.ibd")).unwrap();
    grown.write_all(&pattern(5 * PAGE as usize, 77)).unwrap();
    changed += old_len + 5 * PAGE - old_len / PAGE * PAGE;
    fs::OpenOptions::new().write(true).open(src.join("db/t4.ibd")).unwrap().set_len(2 * PAGE).unwrap();
    fs::write(src.join("db/new.ibd"), pattern(4 * PAGE as usize, 99)).unwrap();
    changed + 4 * PAGE
}

/// A source, and a full copy of it left behind while the source ages.
fn stale_copy(tmp: &Path, dest: &str) -> (PathBuf, PathBuf, u64) {
    let src = tree(tmp);
    let dest = tmp.join(dest);
    full_copy(&src, &dest);
    let changed = age(&src);
    (src, dest, changed)
}

fn full_copy(src: &Path, dest: &Path) {
    let (s, r) = transfer_with(src, dest, ReceiveConfig::default(), &SendConfig::default());
    s.unwrap();
    r.unwrap();
}

fn identical(src: &Path, dest: &Path, what: &str) {
    let n = sluice_engine::diff::compare(src, dest).unwrap_or_else(|d| panic!("{what}: the copy differs: {d}"));
    assert!(n >= 35, "{what}: {n} entries compared");
    assert!(!dest.join(".sluice-incomplete").exists(), "{what}: marker left after success");
}

#[test]
fn an_in_place_delta_sends_only_the_changed_pages_with_every_transform() {
    let tmp = tempfile::tempdir().unwrap();
    let key = || Some(SealKey::parse(&[9u8; 32]).unwrap());
    let cases: [(&str, u16, Compression, Option<SealKey>); 4] = [
        ("plain, 2 streams", 2, Compression::None, None),
        ("one stream", 1, Compression::None, None),
        ("lz4, 4 streams", 4, Compression::Lz4, None),
        ("sealed + zstd, 3 streams", 3, Compression::Zstd(1), key()),
    ];
    for (i, (what, streams, compress, seal_key)) in cases.into_iter().enumerate() {
        let root = tmp.path().join(format!("case{i}"));
        let (src, dest, changed) = stale_copy(&root, "dest");
        let total: u64 = walk_bytes(&src);
        let send = SendConfig { streams, compress, seal_key: seal_key.clone(), delta: true, ..SendConfig::default() };
        let recv = ReceiveConfig { seal_key, delta: Some(Base::InPlace), ..ReceiveConfig::default() };
        let (s, r) = transfer_with(&src, &dest, recv, &send);
        let (s, r) = (s.unwrap_or_else(|e| panic!("{what}: sender: {e}")), r.unwrap_or_else(|e| panic!("{what}: receiver: {e}")));
        identical(&src, &dest, what);
        assert_eq!(s.bytes, total, "{what}: every data byte is accounted for");
        assert_eq!(s.reused, r.reused, "{what}: both ends count the same references");
        assert_eq!((s.zeros, r.zeros), (1 << 20, 1 << 20), "{what}: the tablespace's extension went as zeros");
        let travelled = s.bytes - s.reused - s.zeros;
        let tails = 34 * PAGE;
        assert!(
            (changed..changed + tails).contains(&travelled),
            "{what}: {travelled} bytes travelled; the changed pages are {changed}, partial last pages at most {tails} more"
        );
        assert!(r.wire_bytes < total / 5, "{what}: {} wire bytes for {total} data bytes", r.wire_bytes);
    }
}

fn walk_bytes(dir: &Path) -> u64 {
    tree_entries(dir).iter().filter(|(_, t)| t.is_file()).map(|(p, _)| fs::metadata(p).unwrap().len()).sum()
}

/// Every entry under `dir` (recursively, not following symlinks) and its type.
fn tree_entries(dir: &Path) -> Vec<(PathBuf, fs::FileType)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            }
            out.push((e.path(), t));
        }
    }
    out
}

/// Tears and poisons the old copy `old` of `src`: a truncated tablespace,
/// a table holding another table's bytes, a renamed table, garbage pages,
/// a symlink (to a file with the right bytes, at `outside`) and a
/// directory where tables were.
fn tear(src: &Path, old: &Path, outside: &Path) {
    fs::OpenOptions::new().write(true).open(old.join("ibdata1")).unwrap().set_len((10 << 20) + 5).unwrap();
    fs::copy(old.join("db/t1.ibd"), old.join("db/t2.ibd")).unwrap();
    fs::rename(old.join("db/t5.ibd"), old.join("db/t5-renamed.ibd")).unwrap();
    let mut g = fs::OpenOptions::new().write(true).open(old.join("db/t6.ibd")).unwrap();
    g.seek(SeekFrom::Start(PAGE)).unwrap();
    g.write_all(&pattern(2 * PAGE as usize, 1234)).unwrap();
    drop(g);
    fs::copy(src.join("db/t7.ibd"), outside).unwrap();
    fs::remove_file(old.join("db/t7.ibd")).unwrap();
    std::os::unix::fs::symlink(outside, old.join("db/t7.ibd")).unwrap();
    fs::remove_file(old.join("db/t8.ibd")).unwrap();
    fs::create_dir(old.join("db/t8.ibd")).unwrap();
}

#[test]
fn a_base_directory_is_only_read_and_torn_or_hostile_old_files_still_give_an_identical_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, old, _) = stale_copy(tmp.path(), "old");
    tear(&src, &old, &tmp.path().join("outside.ibd"));
    let before = snapshot(&old);
    let dest = tmp.path().join("dest");
    let send = SendConfig { streams: 3, delta: true, ..SendConfig::default() };
    let recv = ReceiveConfig { delta: Some(Base::Dir(old.clone())), ..ReceiveConfig::default() };
    let (s, r) = transfer_with(&src, &dest, recv, &send);
    let (s, r) = (s.unwrap(), r.unwrap());
    identical(&src, &dest, "hostile base");
    assert_eq!(snapshot(&old), before, "the base directory was written to");
    assert!(r.reused > 10 << 20, "the intact part of the tablespace was reused: {} bytes", r.reused);
    // What the symlink and the directory stand for travelled.
    let t7 = fs::metadata(src.join("db/t7.ibd")).unwrap().len();
    assert!(s.bytes - s.reused >= t7, "the symlinked table was taken from outside the base");
}

/// Every file's path, size and bytes hash under `dir` (symlinks by target).
fn snapshot(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out: Vec<(PathBuf, String)> = tree_entries(dir)
        .into_iter()
        .map(|(p, t)| {
            let what = if t.is_dir() {
                "dir".to_string()
            } else if t.is_symlink() {
                format!("-> {}", fs::read_link(&p).unwrap().display())
            } else {
                format!("{:x}", sluice_engine::digest::checksum(&fs::read(&p).unwrap()))
            };
            (p, what)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn without_an_old_copy_or_without_asking_everything_travels() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tree(tmp.path());
    let total = walk_bytes(&src);
    // The receiver has no old copy: DELTA is not granted.
    let dest = tmp.path().join("fresh");
    let (s, r) = transfer_with(&src, &dest, ReceiveConfig::default(), &SendConfig { delta: true, ..SendConfig::default() });
    let (s, r) = (s.unwrap(), r.unwrap());
    identical(&src, &dest, "no old copy");
    assert_eq!((s.reused, r.reused, r.bytes), (0, 0, total));
    // A receiver with an old copy and a sender that does not ask.
    age(&src);
    let (s, r) =
        transfer_with(&src, &dest, ReceiveConfig { delta: Some(Base::InPlace), ..ReceiveConfig::default() }, &SendConfig::default());
    s.unwrap();
    let r = r.unwrap();
    identical(&src, &dest, "not asked");
    assert_eq!(r.reused, 0);
}

#[test]
fn the_cli_copies_with_delta_and_says_what_it_reused() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dest, _) = stale_copy(tmp.path(), "dest");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice")).arg("copy").arg("--delta").arg(&src).arg(&dest).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    identical(&src, &dest, "sluice copy --delta");
    for want in ["MiB were taken from the older copy", "delta: fingerprinted 32 old files"] {
        assert!(log.contains(want), "the log does not say `{want}`:\n{log}");
    }
}

/// Every regular file under `dir`, by path relative to it, sorted.
fn regular_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = tree_entries(dir)
        .into_iter()
        .filter(|(_, t)| t.is_file())
        .map(|(p, _)| (p.strip_prefix(dir).unwrap().to_string_lossy().into_owned(), fs::read(&p).unwrap()))
        .collect();
    out.sort();
    out
}

/// One streamed delta case.
struct Case {
    what: &'static str,
    streams: u16,
    compress: Compression,
    seal_key: Option<SealKey>,
    chunk: usize,
    /// The old copy, if any.
    base: Option<PathBuf>,
}

/// A streamed session (the SST donor's mariadb-backup stream): files are
/// announced as the source reaches them and their chunks interleave, as
/// with `mariadb-backup --parallel`; the receiver fingerprints each old
/// file as it is announced and the sender compares block by block. The
/// copy is identical, the base is only read, and only what changed
/// travels.
#[test]
fn a_streamed_backup_is_compared_file_by_file_as_its_files_are_announced() {
    use sluice_engine::send::{Feeder, send_streamed};
    let tmp = tempfile::tempdir().unwrap();
    let (src, old, changed) = stale_copy(tmp.path(), "old");
    let files = regular_files(&src);
    let total: u64 = files.iter().map(|(_, d)| d.len() as u64).sum();
    let before = snapshot(&old);
    let key = || Some(SealKey::parse(&[5u8; 32]).unwrap());
    // A second old copy, torn and poisoned.
    let torn = tmp.path().join("torn");
    full_copy(&old, &torn);
    tear(&src, &torn, &tmp.path().join("outside.ibd"));
    let torn_before = snapshot(&torn);
    let case = |what, streams, compress, seal_key, chunk, base: Option<&PathBuf>| Case {
        what,
        streams,
        compress,
        seal_key,
        chunk,
        base: base.cloned(),
    };
    let cases = [
        case("plain, 2 streams, page-aligned chunks", 2, Compression::None, None, 1 << 20, Some(&old)),
        case("sealed + lz4, 3 streams, odd chunks", 3, Compression::Lz4, key(), 300_001, Some(&old)),
        case("a torn and hostile old copy", 2, Compression::None, None, 1 << 20, Some(&torn)),
        case("no old copy", 2, Compression::None, None, 1 << 20, None),
    ];
    for (i, Case { what, streams, compress, seal_key, chunk, base }) in cases.into_iter().enumerate() {
        let dest = tmp.path().join(format!("dest{i}"));
        let recv = ReceiveConfig { seal_key: seal_key.clone(), delta: base.clone().map(Base::Dir), ..ReceiveConfig::default() };
        let (addr, token, h) = common::spawn_receiver(recv, &dest);
        let send = SendConfig { streams, compress, seal_key, delta: true, ..SendConfig::default() };
        let sent = send_streamed(&addr.to_string(), &token, &send, |f: &mut Feeder| {
            // Three "threads" of the backup program, each on its own files,
            // their chunks interleaved.
            let mut lanes: Vec<Vec<&(String, Vec<u8>)>> = vec![Vec::new(); 3];
            for (k, file) in files.iter().enumerate() {
                lanes[k % 3].push(file);
            }
            let mut at = [(0usize, 0usize); 3];
            loop {
                let mut busy = false;
                for (lane, (file, pos)) in lanes.iter().zip(at.iter_mut()) {
                    let Some((path, data)) = lane.get(*file) else { continue };
                    busy = true;
                    let n = (data.len() - *pos).min(chunk);
                    if n > 0 {
                        f.data(path.as_bytes(), *pos as u64, &data[*pos..*pos + n])?;
                    }
                    *pos += n;
                    if *pos == data.len() {
                        f.end(path.as_bytes())?;
                        (*file, *pos) = (*file + 1, 0);
                    }
                }
                if !busy {
                    return Ok(());
                }
            }
        });
        let (s, r) =
            (sent.unwrap_or_else(|e| panic!("{what}: sender: {e}")), h.join().unwrap().unwrap_or_else(|e| panic!("{what}: receiver: {e}")));
        assert_eq!(regular_files(&dest), files, "{what}: the copy differs");
        assert_eq!(snapshot(&old), before, "{what}: the base directory was written to");
        assert_eq!(snapshot(&torn), torn_before, "{what}: the torn base directory was written to");
        assert_eq!((s.bytes, r.bytes), (total, total), "{what}: every data byte is accounted for");
        assert_eq!((s.reused, s.zeros), (r.reused, r.zeros), "{what}: both ends count the same references and zeros");
        if base.as_ref() == Some(&torn) {
            assert!(s.reused > 10 << 20, "{what}: the intact part of the tablespace was reused: {} bytes", s.reused);
            let t7 = fs::metadata(src.join("db/t7.ibd")).unwrap().len();
            assert!(s.bytes - s.reused >= t7, "{what}: the symlinked table was taken from outside the base");
            continue;
        }
        if base.is_none() {
            assert_eq!((s.reused, s.zeros), (0, 0), "{what}: nothing to compare with, nothing reused");
            assert!(r.wire_bytes >= total, "{what}: everything travelled");
            continue;
        }
        // Partial pages travel: each file's last, and with odd chunks each
        // block's edges.
        let aligned = chunk % PAGE as usize == 0;
        let edges = if aligned { 34 * PAGE } else { 2 * PAGE * (total / chunk as u64 + 40) };
        if aligned {
            assert_eq!(s.zeros, 1 << 20, "{what}: the tablespace's extension went as zeros");
        } else {
            assert!(s.zeros > 1 << 19 && s.zeros <= 1 << 20, "{what}: {} bytes of the tablespace's extension went as zeros", s.zeros);
        }
        let travelled = s.bytes - s.reused - s.zeros;
        assert!(
            (changed..changed + edges).contains(&travelled),
            "{what}: {travelled} bytes travelled; the changed pages are {changed}, partial pages at most {edges} more"
        );
        assert!(r.wire_bytes < total / 4, "{what}: {} wire bytes for {total} data bytes", r.wire_bytes);
    }
}

/// Issue 13: a table renamed since the old copy was taken (`RENAME TABLE
/// a TO z` renames `a.ibd`) is assembled from its old name, not sent
/// whole: the new path has no old copy, the old file's name is no longer
/// in the new tree, and they share a directory, an extension and a size.
#[test]
fn a_renamed_table_is_taken_from_its_old_name() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("db")).unwrap();
    fs::write(src.join("db/a.ibd"), pattern(4 << 20, 21)).unwrap();
    fs::write(src.join("db/b.ibd"), pattern(1 << 20, 22)).unwrap();
    let old = tmp.path().join("old");
    full_copy(&src, &old);
    fs::rename(src.join("db/a.ibd"), src.join("db/z.ibd")).unwrap();
    let dest = tmp.path().join("dest");
    let send = SendConfig { streams: 2, delta: true, ..SendConfig::default() };
    let recv = ReceiveConfig { delta: Some(Base::Dir(old.clone())), ..ReceiveConfig::default() };
    let (s, r) = transfer_with(&src, &dest, recv, &send);
    let (s, r) = (s.unwrap(), r.unwrap());
    assert_eq!(fs::read(dest.join("db/z.ibd")).unwrap(), fs::read(src.join("db/z.ibd")).unwrap());
    assert_eq!(fs::read(dest.join("db/b.ibd")).unwrap(), fs::read(src.join("db/b.ibd")).unwrap());
    assert!(!dest.join("db/a.ibd").exists(), "the old name is not part of the new tree");
    assert_eq!(r.reused, 5 << 20, "both tables reused whole, the renamed one from its old name");
    assert_eq!(s.bytes - s.reused - s.zeros, 0, "nothing travelled as data");
    assert!(old.join("db/a.ibd").exists(), "the old copy is only read");
}
