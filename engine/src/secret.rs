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

/// A keyed fingerprint of `data` (HMAC-SHA256 under `context`, first 16
/// bytes): two nodes compare keys without showing them, and a fingerprint
/// from one context says nothing about another's.
pub fn fingerprint(context: &[u8], data: &[u8]) -> [u8; 16] {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, context);
    let tag = aws_lc_rs::hmac::sign(&key, data);
    let mut out = [0u8; 16];
    out.copy_from_slice(&tag.as_ref()[..16]);
    out
}

/// Decrypts what `openssl enc -aes-256-cbc -md sha1 -k <password>` wrote
/// (`Salted__`, 8 bytes of salt, then the ciphertext; key and IV from one
/// round of EVP_BytesToKey with SHA-1) — the format MariaDB's
/// file_key_management reads when `file_key_management_filekey` is set.
pub fn openssl_decrypt(data: &[u8], password: &[u8]) -> Result<Vec<u8>> {
    use aws_lc_rs::cipher::{AES_256, DecryptionContext, PaddedBlockDecryptingKey, UnboundCipherKey};
    use aws_lc_rs::digest::{SHA1_FOR_LEGACY_USE_ONLY, digest};
    let bad = |why: &str| Error::Config(format!("cannot decrypt the key file: {why}"));
    let rest = data.strip_prefix(b"Salted__").ok_or_else(|| bad("it does not start with openssl's \"Salted__\" header"))?;
    if rest.len() < 8 + 16 || (rest.len() - 8) % 16 != 0 {
        return Err(bad("its length is not that of AES-CBC output"));
    }
    let (salt, body) = rest.split_at(8);
    // EVP_BytesToKey: D_i = SHA1(D_{i-1} || password || salt) until 48 bytes.
    let mut material = Vec::with_capacity(60);
    let mut prev: Vec<u8> = Vec::new();
    while material.len() < 48 {
        let mut input = prev.clone();
        input.extend_from_slice(password);
        input.extend_from_slice(salt);
        prev = digest(&SHA1_FOR_LEGACY_USE_ONLY, &input).as_ref().to_vec();
        material.extend_from_slice(&prev);
    }
    let key = UnboundCipherKey::new(&AES_256, &material[..32]).map_err(|_| bad("bad key"))?;
    let key = PaddedBlockDecryptingKey::cbc_pkcs7(key).map_err(|_| bad("bad key"))?;
    let mut iv = [0u8; 16];
    iv.copy_from_slice(&material[32..48]);
    let mut buf = body.to_vec();
    let plain =
        key.decrypt(&mut buf, DecryptionContext::Iv128(iv.into())).map_err(|_| bad("wrong file key (the padding does not check)"))?;
    Ok(plain.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_depend_on_context_and_data() {
        let a = fingerprint(b"ctx", b"key");
        assert_eq!(a, fingerprint(b"ctx", b"key"));
        assert_ne!(a, fingerprint(b"ctx2", b"key"));
        assert_ne!(a, fingerprint(b"ctx", b"key2"));
    }

    #[test]
    fn openssl_enc_output_decrypts_with_the_right_password_only() {
        // printf '1;0102\n' | openssl enc -aes-256-cbc -md sha1 -pass pass:secret
        let enc = hex(OPENSSL_SAMPLE);
        assert_eq!(openssl_decrypt(&enc, b"secret").unwrap(), b"1;0102\n");
        assert!(openssl_decrypt(&enc, b"wrong").is_err());
        assert!(openssl_decrypt(b"plain text", b"secret").unwrap_err().to_string().contains("Salted__"));
    }

    const OPENSSL_SAMPLE: &str = "53616c7465645f5f8d92f864ccc34552d17203b6f0a37241bfd5e5b1382d74cc";

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }
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
