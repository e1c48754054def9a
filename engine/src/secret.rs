//! Reading secret files (sealing keys, TLS private keys) the way OpenSSH
//! reads private keys: a file that group or others may read or write, or
//! that a user other than root and us owns, is refused with the chmod or
//! chown that fixes it (SECURITY.md F15). Symlinks are followed (secret
//! stores such as Kubernetes mount them as links) and the file they lead to
//! is what is checked, on the descriptor that is then read.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::{Error, Result};

/// Largest secret file read (a PEM chain with a key is far below this).
const MAX_SECRET: u64 = 1 << 20;

/// Reads the secret file `path`; `what` names it in errors ("key file").
pub fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    let shown = path.display();
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(format!("reading the {what} {shown}"), e))?;
    let m = f.metadata().map_err(|e| Error::io(format!("reading the {what} {shown}"), e))?;
    check(&m, &shown.to_string(), what)?;
    let mut bytes = Vec::new();
    (&mut f).take(MAX_SECRET + 1).read_to_end(&mut bytes).map_err(|e| Error::io(format!("reading the {what} {shown}"), e))?;
    if bytes.len() as u64 > MAX_SECRET {
        return Err(Error::Config(format!("the {what} {shown} is larger than {MAX_SECRET} bytes; is it the right file?")));
    }
    Ok(bytes)
}

/// The permission rule, on metadata of the opened file.
fn check(m: &std::fs::Metadata, path: &str, what: &str) -> Result<()> {
    if !m.is_file() {
        return Err(Error::Config(format!("the {what} {path} is not a regular file")));
    }
    let mode = m.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(Error::Config(format!(
            "the {what} {path} is accessible by other users (mode {mode:04o}); it must be private: run `chmod 600 {path}`"
        )));
    }
    let me = crate::backend::sys::euid();
    if m.uid() != me && m.uid() != 0 {
        return Err(Error::Config(format!(
            "the {what} {path} belongs to uid {} but this process runs as uid {me}; run `chown {me} {path}` (or root)",
            m.uid()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn private_files_are_read_and_shared_ones_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, b"secret").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read(&p, "key file").unwrap(), b"secret");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(read(&p, "key file").unwrap(), b"secret");
        for mode in [0o640, 0o604, 0o620, 0o644] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = read(&p, "key file").unwrap_err().to_string();
            assert!(e.contains(&format!("chmod 600 {}", p.display())) && e.contains(&format!("{mode:04o}")), "{e}");
        }
        // A symlink to a private file is fine: the target is checked.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let l = dir.path().join("link");
        std::os::unix::fs::symlink(&p, &l).unwrap();
        assert_eq!(read(&l, "key file").unwrap(), b"secret");
        assert!(read(dir.path(), "key file").unwrap_err().to_string().contains("not a regular file"));
    }
}
