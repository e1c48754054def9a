//! The mbstream codec against the real tools (package mariadb-backup,
//! installed by .ci/run): streams made by `mbstream -c` extract correctly
//! with our code, and streams made by our writer extract correctly with
//! `mbstream -x`.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use sluice_sst::mbstream;

const FILES: &[&str] = &["ibdata1", "db1/t1.ibd", "empty.txt", "sub/dir/deep.frm"];

fn content(name: &str) -> Vec<u8> {
    match name {
        "ibdata1" => (0..25_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect(),
        "empty.txt" => Vec::new(),
        other => other.repeat(1000).into_bytes(),
    }
}

fn fill(dir: &Path) {
    for f in FILES {
        let p = dir.join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content(f)).unwrap();
    }
}

fn check(dir: &Path, files: &[&str]) {
    for f in files {
        assert_eq!(std::fs::read(dir.join(f)).unwrap(), content(f), "{f}");
    }
}

#[test]
fn our_codec_and_the_real_mbstream_agree_both_ways() {
    if Command::new("mbstream").arg("--help").output().is_err() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "mbstream is missing in CI: .ci/run must install mariadb-backup");
        eprintln!("SKIPPED: mbstream is not installed (apt-get install mariadb-backup)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fill(&src);

    // Real writer → our extractor.
    let out = Command::new("mbstream").arg("-c").args(FILES).current_dir(&src).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout.len() > 25_000_000);
    let ours = tmp.path().join("ours");
    let bytes = mbstream::extract(&out.stdout[..], &ours).unwrap();
    assert_eq!(bytes, FILES.iter().map(|f| content(f).len() as u64).sum::<u64>());
    check(&ours, FILES);

    // Our writer → real extractor. `mbstream -x` creates only the immediate
    // parent directory (one mkdir), so nested paths are left out here, as
    // mariadb-backup never produces them.
    let flat: Vec<&str> = FILES.iter().copied().filter(|f| f.matches('/').count() <= 1).collect();
    let mut w = mbstream::Writer::new(Vec::new());
    for f in &flat {
        w.write(f, &content(f)).unwrap();
        w.finish_file(f).unwrap();
    }
    let stream = w.into_inner();
    let theirs = tmp.path().join("theirs");
    std::fs::create_dir_all(&theirs).unwrap();
    let mut child = Command::new("mbstream").args(["-x", "-C"]).arg(&theirs).stdin(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(&stream).unwrap();
    let done = child.wait_with_output().unwrap();
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    check(&theirs, &flat);

    // The real stream, cut short in the middle of a chunk or at a chunk
    // boundary, is refused (mbstream -x accepts the latter silently).
    let cut = mbstream::extract(&out.stdout[..out.stdout.len() / 2], &tmp.path().join("cut"));
    assert!(cut.is_err());
}
