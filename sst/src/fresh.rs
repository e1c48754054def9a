//! Files that root creates in directories another user can write (the
//! datadir belongs to `mysql`): never through a symlink planted under the
//! name, never into a file someone else prepared (SECURITY.md F4). Each
//! file is created new (`O_CREAT | O_EXCL | O_NOFOLLOW`) after whatever
//! stood under its name is removed (`unlink` removes a symlink itself, never
//! its target), or written under a fresh temporary name and renamed over
//! the old one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Creates `path` new with `mode`, removing whatever stood there first.
pub fn create(path: &Path, mode: u32) -> io::Result<File> {
    let open = || OpenOptions::new().write(true).create_new(true).mode(mode).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC).open(path);
    match open() {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            fs::remove_file(path)?;
            open()
        }
        r => r,
    }
}

/// Opens `path` for appending without following a symlink in its last
/// component, creating it (mode 0644) if it does not exist.
pub fn append(path: &Path) -> io::Result<File> {
    OpenOptions::new().append(true).create(true).mode(0o644).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC).open(path)
}

/// Writes `contents` as a new file at `path` (see [`create`]).
pub fn write(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    create(path, mode)?.write_all(contents)
}

/// Replaces `path` with `contents` atomically: written and synced under a
/// fresh temporary name beside it (see [`create`]), then renamed over it (a
/// rename replaces a planted symlink, never its target).
pub fn replace(path: &Path, contents: &[u8]) -> io::Result<()> {
    replace_with(path, contents, true)
}

/// [`replace`] without the sync (a status file rewritten every second
/// needs atomicity, not durability).
pub fn replace_unsynced(path: &Path, contents: &[u8]) -> io::Result<()> {
    replace_with(path, contents, false)
}

fn replace_with(path: &Path, contents: &[u8], sync: bool) -> io::Result<()> {
    let nonce: [u8; 8] = sluice_engine::net::random_bytes()?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.sluice-{:016x}", u64::from_le_bytes(nonce)));
    let written = create(&tmp, 0o644)
        .and_then(|mut f| f.write_all(contents).and_then(|()| if sync { f.sync_all() } else { Ok(()) }))
        .and_then(|()| fs::rename(&tmp, path));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Copies the regular file `from` to a new file `to` (see [`create`]) with
/// `from`'s permission bits, synced.
pub fn copy(from: &Path, to: &Path) -> io::Result<()> {
    let mut src = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(from)?;
    let mode = src.metadata()?.permissions();
    let mut dst = create(to, 0o600)?;
    io::copy(&mut src, &mut dst)?;
    dst.set_permissions(mode)?;
    dst.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planted_symlinks_are_replaced_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        for (i, f) in [&(|p: &Path| write(p, b"new", 0o644)) as &dyn Fn(&Path) -> io::Result<()>, &|p: &Path| {
            let src = p.with_extension("src");
            fs::write(&src, b"new")?;
            copy(&src, p)
        }]
        .iter()
        .enumerate()
        {
            let planted = dir.path().join(format!("planted{i}"));
            std::os::unix::fs::symlink(&victim, &planted).unwrap();
            f(&planted).unwrap();
            assert_eq!(fs::read(&victim).unwrap(), b"precious");
            assert_eq!(fs::read(&planted).unwrap(), b"new");
            assert!(!fs::symlink_metadata(&planted).unwrap().file_type().is_symlink());
        }
        let link = dir.path().join("appendlink");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        assert!(append(&link).is_err(), "append followed a symlink");
    }
}
