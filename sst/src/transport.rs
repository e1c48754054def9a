//! The `[sst]` transport options mapped onto the engine
//! (shared/SST-PROTOCOL.md §4.2, §5.2): compressor (unset: adaptive lz4,
//! `none` turns it off), encryption (`encrypt=1`
//! → sealing; `encrypt=2|3|4` and `ssl-mode` → TLS, the joiner being the
//! server), `rlimit`, `sockopt`, `streams`. Pure: decides, does no I/O
//! beyond reading a key file.

use std::path::PathBuf;

use sluice_engine::codec::Compression;
use sluice_engine::codec::seal::SealKey;
use sluice_engine::net::SockOpts;
use sluice_engine::net::tls::{TlsMode, TlsOptions};

use crate::args::Role;
use crate::error::SstError;
use crate::options::SstOptions;

/// How this node moves the data.
#[derive(Debug, Clone, Default)]
pub struct Transport {
    pub compress: Compression,
    pub seal_key: Option<SealKey>,
    pub tls: TlsOptions,
    pub rate_limit: Option<u64>,
    pub sockopt: SockOpts,
    /// A compressor sluice has no codec for, run per block (donor).
    pub filter: Option<String>,
    /// Its inverse, `decompressor` (joiner).
    pub unfilter: Option<String>,
    /// Things worth a log line (substitutions, ignored parts).
    pub notes: Vec<String>,
}

/// Recognises an lz4 or zstd command line (`lz4 -z`, `zstd -1 -T2 -c`,
/// `zstd --fast=3`, `pzstd -3`, `zstdmt`) and returns the in-process codec
/// at the same level; `None` for any other program.
pub fn codec_for(command: &str) -> Option<Compression> {
    let mut words = command.split_whitespace();
    let program = words.next()?.rsplit('/').next()?;
    match program {
        "lz4" | "lz4c" => Some(Compression::Lz4),
        "zstd" | "zstdmt" | "pzstd" => {
            let mut level = 3;
            for w in words {
                if let Some(n) = w.strip_prefix("--fast=") {
                    level = -n.parse::<i32>().ok()?;
                } else if let Some(n) = w.strip_prefix('-').filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())) {
                    level = n.parse().ok()?;
                }
            }
            Some(Compression::Zstd(level.clamp(-7, 19)))
        }
        _ => None,
    }
}

/// Parses socat-style `sockopt` (`,pf=ip6,keepalive`); items sluice has no
/// equivalent for are reported, not fatal.
/// Whether `target` (`host:port`) names this host only: every address it
/// resolves to is a loopback one (a name that does not resolve is not).
pub fn is_this_host(target: &str) -> bool {
    use std::net::ToSocketAddrs;
    target.to_socket_addrs().is_ok_and(|a| {
        let a: Vec<_> = a.collect();
        !a.is_empty() && a.iter().all(|x| x.ip().is_loopback())
    })
}

fn sockopt(s: &str, notes: &mut Vec<String>) -> SockOpts {
    let mut kept = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        if item.parse::<SockOpts>().is_ok() {
            kept.push(item);
        } else {
            notes.push(format!("sockopt item {item:?} has no sluice equivalent and is ignored"));
        }
    }
    kept.join(",").parse().unwrap_or_default()
}

fn needs(what: &str, why: &str) -> SstError {
    SstError::Incompatible(format!("{why} needs {what} in [sst]"))
}

/// [`from_options`], with its notes logged as warnings.
pub fn logged(o: &SstOptions, role: Role, joiner_host: &str) -> Result<Transport, SstError> {
    let t = from_options(o, role, joiner_host)?;
    for n in &t.notes {
        tracing::warn!("{n}");
    }
    Ok(t)
}

/// Maps the options for `role`. `joiner_host` is the joiner's address
/// (unbracketed), for the peer-name rule of `encrypt=3`.
pub fn from_options(o: &SstOptions, role: Role, joiner_host: &str) -> Result<Transport, SstError> {
    let mut t = Transport { rate_limit: if role == Role::Donor { o.rlimit } else { None }, ..Transport::default() };
    if let Some(s) = &o.sockopt {
        t.sockopt = sockopt(s, &mut t.notes);
    }
    match o.compressor.as_deref().map(str::trim) {
        // Unset: compress per chunk only while it pays (chunks that shrink,
        // a link slower than the codec).
        None | Some("") => t.compress = Compression::Auto,
        Some(c) if ["none", "off", "no", "0"].contains(&c.to_ascii_lowercase().as_str()) => {}
        Some(c) => match codec_for(c) {
            Some(codec) => t.compress = codec,
            None if role == Role::Donor => {
                t.notes.push(format!(
                    "compressor {c:?} is not lz4 or zstd: running it as an external filter on every block (one process per block; lz4 and zstd run in-process and are much faster)"
                ));
                t.filter = Some(c.to_string());
            }
            None => {}
        },
    }
    if role == Role::Joiner {
        // The joiner decodes whatever the session negotiated; an external
        // filter needs the configured inverse.
        t.compress = Compression::None;
        t.unfilter = o.decompressor.clone().filter(|d| !d.trim().is_empty());
    }
    if o.compress.as_deref().is_some_and(|c| !c.is_empty() && c != "none" && c != "0") {
        return Err(SstError::Incompatible(
            "[sst] compress (mariadb-backup's native qpress compression) is not supported: unset it and set compressor=\"zstd -1\" (or lz4), which sluice runs in-process".into(),
        ));
    }
    match o.encrypt {
        0 | 2..=4 => {}
        1 => {
            let secret = match (&o.encrypt_key, &o.encrypt_key_file) {
                (Some(k), _) => k.as_bytes().to_vec(),
                (None, Some(f)) => sluice_engine::secret::read(f, "encrypt-key-file").map_err(|e| SstError::Incompatible(e.to_string()))?,
                (None, None) => return Err(SstError::Incompatible("encrypt=1 needs encrypt-key or encrypt-key-file".into())),
            };
            let secret = secret.strip_suffix(b"\n").unwrap_or(&secret);
            t.seal_key = Some(SealKey::derive(secret, "sluice sst encrypt=1"));
            if let Some(a) = &o.encrypt_algo {
                t.notes.push(format!("encrypt-algo {a:?}: sluice seals every chunk with AES-256-GCM instead"));
            }
        }
        n => return Err(SstError::Incompatible(format!("encrypt={n} is not a known mode"))),
    }
    t.tls = tls(o, joiner_host)?;
    Ok(t)
}

fn tls(o: &SstOptions, joiner_host: &str) -> Result<TlsOptions, SstError> {
    // tca/tcapath/tcert/tkey win; the ssl-* keys are the fallback.
    let own = o.tca.is_some() || o.tcapath.is_some() || o.tcert.is_some() || o.tkey.is_some();
    let (ca, cert, key): (Option<PathBuf>, Option<PathBuf>, Option<PathBuf>) = if own {
        (o.tca.clone().or_else(|| o.tcapath.clone()), o.tcert.clone(), o.tkey.clone())
    } else {
        (o.ssl_ca.clone().or_else(|| o.ssl_capath.clone()), o.ssl_cert.clone(), o.ssl_key.clone())
    };
    let mut encrypt = o.encrypt;
    if encrypt < 2 && o.ssl_mode != TlsMode::Disabled {
        if cert.is_none() || key.is_none() {
            return Err(needs("tcert and tkey (or ssl-cert and ssl-key)", &format!("ssl-mode={:?}", o.ssl_mode)));
        }
        encrypt = 3;
    }
    let mode = match encrypt {
        0 | 1 => return Ok(TlsOptions::default()),
        2 => {
            let cert = cert.clone().ok_or_else(|| needs("tcert (certificate and key in one PEM)", "encrypt=2"))?;
            if ca.is_none() {
                return Err(needs("tca or tcapath", "encrypt=2"));
            }
            return Ok(TlsOptions { mode: TlsMode::VerifyCa, cert: Some(cert), key: key.clone(), ca, name: None });
        }
        4 if ca.is_none() => return Err(needs("tca or tcapath", "encrypt=4")),
        4 => TlsMode::VerifyCa,
        _ => match (o.ssl_mode, ca.is_some()) {
            (TlsMode::VerifyIdentity, _) | (TlsMode::Disabled, true) => TlsMode::VerifyIdentity,
            (TlsMode::VerifyCa, _) => TlsMode::VerifyCa,
            (TlsMode::Required, _) | (TlsMode::Disabled, false) => TlsMode::Required,
        },
    };
    if cert.is_none() || key.is_none() {
        return Err(needs("tcert and tkey (or ssl-cert and ssl-key)", &format!("encrypt={encrypt}")));
    }
    if matches!(mode, TlsMode::VerifyCa | TlsMode::VerifyIdentity) && ca.is_none() {
        return Err(needs("tca or tcapath", &format!("ssl-mode={mode:?}")));
    }
    // REQUIRED verifies nothing, as the stock script clears the CA.
    let ca = if mode == TlsMode::Required { None } else { ca };
    // The stock donor checks a local joiner's certificate for `localhost`.
    let local = joiner_host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()) || joiner_host == "localhost";
    let name = (mode == TlsMode::VerifyIdentity && local).then(|| "localhost".to_string());
    Ok(TlsOptions { mode, cert, key, ca, name })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(cnf: &str) -> SstOptions {
        SstOptions::from_cnf(cnf).unwrap()
    }

    #[test]
    fn only_loopback_addresses_are_this_host() {
        assert!(is_this_host("127.0.0.1:4444") && is_this_host("[::1]:4444") && is_this_host("127.0.0.2:1"));
        assert!(!is_this_host("10.77.0.2:4444") && !is_this_host("192.0.2.1:4444"));
        assert!(!is_this_host("no-such-host.invalid:4444"), "a name that does not resolve");
    }

    #[test]
    fn compressor_command_lines_map_to_in_process_codecs() {
        assert_eq!(codec_for("lz4 -z"), Some(Compression::Lz4));
        assert_eq!(codec_for("/usr/bin/zstd -1 -T2 -c"), Some(Compression::Zstd(1)));
        assert_eq!(codec_for("zstd --fast=3"), Some(Compression::Zstd(-3)));
        assert_eq!(codec_for("zstd"), Some(Compression::Zstd(3)));
        assert_eq!(codec_for("pigz -1"), None);
        let t = from_options(&opts("[sst]\ncompressor=\"pigz -1\"\ndecompressor=\"pigz -dc\"\nrlimit=50M\n"), Role::Donor, "h").unwrap();
        assert_eq!((t.compress, t.rate_limit, t.filter.as_deref()), (Compression::None, Some(50 << 20), Some("pigz -1")));
        assert!(t.notes[0].contains("external filter"), "{:?}", t.notes);
        let j = from_options(&opts("[sst]\ncompressor=\"pigz -1\"\ndecompressor=\"pigz -dc\"\n"), Role::Joiner, "h").unwrap();
        assert_eq!((j.filter, j.unfilter.as_deref()), (None, Some("pigz -dc")));
        assert_eq!(from_options(&opts(""), Role::Donor, "h").unwrap().compress, Compression::Auto, "unset: adaptive");
        assert_eq!(from_options(&opts("[sst]\ncompressor=none\n"), Role::Donor, "h").unwrap().compress, Compression::None);
        assert!(from_options(&opts("[sst]\ncompressor=none\n"), Role::Donor, "h").unwrap().filter.is_none(), "none is no filter");
        let j = from_options(&opts("[sst]\ncompressor=\"lz4 -z\"\nrlimit=50M\n"), Role::Joiner, "10.0.0.2").unwrap();
        assert_eq!((j.compress, j.rate_limit), (Compression::None, None), "rlimit and compression are the donor's");
    }

    #[test]
    fn encryption_modes_map_to_sealing_and_tls_with_the_stock_rules() {
        let t = from_options(&opts("[sst]\nencrypt=1\nencrypt-key=s3cret\n"), Role::Donor, "h").unwrap();
        assert!(t.seal_key.is_some() && t.tls.mode == TlsMode::Disabled);
        assert!(from_options(&opts("[sst]\nencrypt=1\n"), Role::Donor, "h").is_err());
        let pem = "[sst]\ntcert=/c.pem\ntkey=/k.pem\n";
        let t = from_options(&opts(&format!("{pem}encrypt=3\n")), Role::Donor, "10.0.0.2").unwrap();
        assert_eq!((t.tls.mode, t.tls.ca.is_none()), (TlsMode::Required, true), "encrypt=3 without a CA verifies nothing");
        let t = from_options(&opts(&format!("{pem}encrypt=3\ntca=/ca.pem\n")), Role::Donor, "127.0.0.1").unwrap();
        assert_eq!((t.tls.mode, t.tls.name.as_deref()), (TlsMode::VerifyIdentity, Some("localhost")));
        let t = from_options(&opts(&format!("{pem}encrypt=3\ntca=/ca.pem\nssl-mode=VERIFY_CA\n")), Role::Donor, "h").unwrap();
        assert_eq!(t.tls.mode, TlsMode::VerifyCa);
        assert!(from_options(&opts(&format!("{pem}encrypt=4\n")), Role::Donor, "h").is_err(), "encrypt=4 needs a CA");
        let t = from_options(&opts(&format!("{pem}encrypt=4\ntca=/ca.pem\n")), Role::Joiner, "h").unwrap();
        assert_eq!((t.tls.mode, t.tls.ca.as_deref()), (TlsMode::VerifyCa, Some(std::path::Path::new("/ca.pem"))));
        // ssl-mode with the [mysqld] ssl-* fallbacks switches TLS on.
        let t = from_options(
            &opts("[mysqld]\nssl-cert=/s.pem\nssl-key=/sk.pem\nssl-ca=/sca.pem\n[sst]\nssl-mode=REQUIRED\n"),
            Role::Donor,
            "h",
        )
        .unwrap();
        assert_eq!(
            (t.tls.mode, t.tls.cert.as_deref(), t.tls.ca.is_none()),
            (TlsMode::Required, Some(std::path::Path::new("/s.pem")), true)
        );
        assert!(from_options(&opts("[sst]\nencrypt=2\ntcert=/c.pem\n"), Role::Donor, "h").is_err(), "encrypt=2 needs a CA");
        assert!(from_options(&opts("[sst]\ncompress=quicklz\n"), Role::Donor, "h").unwrap_err().to_string().contains("compressor"));
    }

    #[test]
    fn sockopt_keeps_what_sluice_understands() {
        let t = from_options(&opts("[sst]\nsockopt=\",pf=ip6,keepalive,cipher=AES\"\n"), Role::Donor, "h").unwrap();
        assert!(t.sockopt.keepalive && t.sockopt.family.is_some());
        assert!(t.notes.iter().any(|n| n.contains("cipher=AES")), "{:?}", t.notes);
    }
}
