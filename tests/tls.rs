//! TLS end to end: certificates generated here (rcgen, nothing that can
//! expire in a fixture), real sockets, every failure named.

mod common;

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use sluice_engine::codec::Compression;
use sluice_engine::codec::seal::SealKey;
use sluice_engine::net::tls::{TlsMode, TlsOptions};
use sluice_engine::{ReceiveConfig, Receiver, SendConfig};

struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// A CA, a receiver certificate for localhost/127.0.0.1, a client
    /// certificate, an expired receiver certificate and an unrelated CA.
    fn new(dir: &Path) -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "sluice test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf = |names: Vec<String>, file: &str, expired: bool| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(names).unwrap();
            p.distinguished_name.push(DnType::CommonName, "localhost");
            if expired {
                p.not_before = rcgen::date_time_ymd(2000, 1, 1);
                p.not_after = rcgen::date_time_ymd(2001, 1, 1);
            }
            let cert = p.signed_by(&key, &issuer).unwrap();
            std::fs::write(dir.join(format!("{file}.pem")), cert.pem()).unwrap();
            common::write_private(&dir.join(format!("{file}.key")), key.serialize_pem());
        };
        leaf(vec!["localhost".into(), "127.0.0.1".into()], "server", false);
        leaf(vec!["sluice-client".into()], "client", false);
        leaf(vec!["localhost".into(), "127.0.0.1".into()], "expired", true);
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        let other_key = KeyPair::generate().unwrap();
        let mut op = CertificateParams::new(Vec::<String>::new()).unwrap();
        op.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        std::fs::write(dir.join("other-ca.pem"), op.self_signed(&other_key).unwrap().pem()).unwrap();
        // A combined cert + key file, as the stock encrypt=2 uses.
        let combined = [std::fs::read(dir.join("server.pem")).unwrap(), std::fs::read(dir.join("server.key")).unwrap()].concat();
        common::write_private(&dir.join("combined.pem"), combined);
        Self { dir: dir.to_path_buf() }
    }

    fn p(&self, f: &str) -> PathBuf {
        self.dir.join(f)
    }

    fn receiver(&self, cert: &str, ca: Option<&str>) -> TlsOptions {
        TlsOptions {
            mode: TlsMode::Required,
            cert: Some(self.p(&format!("{cert}.pem"))),
            key: Some(self.p(&format!("{cert}.key"))),
            ca: ca.map(|c| self.p(c)),
            name: None,
        }
    }

    fn sender(&self, mode: TlsMode, ca: &str, client: bool, name: Option<&str>) -> TlsOptions {
        TlsOptions {
            mode,
            cert: client.then(|| self.dir.join("client.pem")),
            key: client.then(|| self.dir.join("client.key")),
            ca: Some(self.p(ca)),
            name: name.map(String::from),
        }
    }
}

fn run(
    src: &Path,
    dest: &Path,
    recv: TlsOptions,
    send: TlsOptions,
    streams: u16,
    compress: Compression,
    key: Option<SealKey>,
) -> (String, String) {
    let r = Receiver::bind("127.0.0.1:0", ReceiveConfig { tls: recv, seal_key: key.clone(), ..ReceiveConfig::default() }).unwrap();
    let addr = r.local_addr().unwrap().to_string();
    let token = r.token().clone();
    let cancel = r.cancel_handle();
    let d = dest.to_path_buf();
    let h = std::thread::spawn(move || r.run(&d));
    let cfg = SendConfig { streams, tls: send, compress, seal_key: key, block_size: common::BLOCK, ..SendConfig::default() };
    let s = sluice_engine::send(&addr, &token, &[src.to_path_buf()], &cfg);
    if s.is_err() {
        cancel.store(true, std::sync::atomic::Ordering::Release);
    }
    let show = |x: sluice_engine::Result<sluice_engine::Summary>| x.map_or_else(|e| e.to_string(), |_| "ok".to_string());
    (show(s), show(h.join().unwrap()))
}

#[test]
fn tls_transfers_copy_exactly_in_every_mode_and_with_every_transform() {
    let tmp = tempfile::tempdir().unwrap();
    let src = common::fixture(tmp.path());
    let pki = Pki::new(tmp.path());
    let key = || Some(SealKey::parse(&[4u8; 32]).unwrap());
    let cases = [
        ("required", pki.receiver("server", None), pki.sender(TlsMode::Required, "none", false, None), Compression::None, None),
        ("verify-ca", pki.receiver("server", None), pki.sender(TlsMode::VerifyCa, "ca.pem", false, None), Compression::None, None),
        (
            "verify-identity+mtls",
            pki.receiver("server", Some("ca.pem")),
            pki.sender(TlsMode::VerifyIdentity, "ca.pem", true, None),
            Compression::None,
            None,
        ),
        (
            "lz4+sealed+tls",
            pki.receiver("server", Some("ca.pem")),
            pki.sender(TlsMode::VerifyIdentity, "ca.pem", true, Some("localhost")),
            Compression::Lz4,
            key(),
        ),
    ];
    for (name, recv, send, compress, k) in cases {
        for streams in [1u16, 4] {
            let dest = tmp.path().join(format!("{name}-{streams}"));
            let send = TlsOptions { ca: send.ca.clone().filter(|p| p.exists()), ..send.clone() };
            let (s, r) = run(&src, &dest, recv.clone(), send, streams, compress, k.clone());
            assert_eq!((s.as_str(), r.as_str()), ("ok", "ok"), "{name} x{streams}");
            common::assert_copy(&src, &dest);
        }
    }
    // A combined certificate + key file works without --tls-key.
    let recv = TlsOptions { key: None, cert: Some(pki.p("combined.pem")), ..pki.receiver("server", None) };
    let (s, r) =
        run(&src, &tmp.path().join("combined"), recv, pki.sender(TlsMode::VerifyCa, "ca.pem", false, None), 2, Compression::None, None);
    assert_eq!((s.as_str(), r.as_str()), ("ok", "ok"));
}

#[test]
fn tls_failures_are_named_and_never_fall_back_to_plaintext() {
    let tmp = tempfile::tempdir().unwrap();
    let src = common::fixture(tmp.path());
    let pki = Pki::new(tmp.path());
    let d = |n: &str| tmp.path().join(n);

    let (s, _) = run(
        &src,
        &d("wrong-ca"),
        pki.receiver("server", None),
        pki.sender(TlsMode::VerifyCa, "other-ca.pem", false, None),
        1,
        Compression::None,
        None,
    );
    eprintln!("wrong CA -> {s}");
    assert!(s.contains("not signed by a CA in --tls-ca"), "{s}");

    let (s, _) = run(
        &src,
        &d("name"),
        pki.receiver("server", None),
        pki.sender(TlsMode::VerifyIdentity, "ca.pem", false, Some("db7.example")),
        1,
        Compression::None,
        None,
    );
    assert!(s.contains("expected name"), "{s}");

    let (s, _) = run(
        &src,
        &d("no-client-cert"),
        pki.receiver("server", Some("ca.pem")),
        pki.sender(TlsMode::VerifyCa, "ca.pem", false, None),
        1,
        Compression::None,
        None,
    );
    eprintln!("no client certificate -> {s}");
    assert!(s.contains("requires a client certificate") && s.contains("--tls-cert"), "{s}");

    let (s, _) = run(
        &src,
        &d("expired"),
        pki.receiver("expired", None),
        pki.sender(TlsMode::VerifyCa, "ca.pem", false, None),
        1,
        Compression::None,
        None,
    );
    eprintln!("expired -> {s}");
    assert!(s.contains("expired"), "{s}");

    let plain = TlsOptions::default();
    let (s, _) = run(&src, &d("plaintext"), pki.receiver("server", None), plain, 1, Compression::None, None);
    eprintln!("plaintext sender -> {s}");
    assert!(s.contains("TLS"), "a plaintext sender must be told the receiver wants TLS: {s}");

    let required = TlsOptions { ca: None, ..pki.sender(TlsMode::Required, "none", false, None) };
    let (s, _) = run(&src, &d("tls-to-plain"), TlsOptions::default(), required, 1, Compression::None, None);
    eprintln!("TLS sender to plain receiver -> {s}");
    assert!(s.contains("does not speak TLS"), "{s}");

    for dir in ["wrong-ca", "name", "no-client-cert", "expired", "plaintext", "tls-to-plain"] {
        assert!(!d(dir).join("big.bin").exists(), "{dir}: data was written despite the failed handshake");
    }

    let err = TlsOptions { cert: Some(pki.p("ca.pem")), key: Some(pki.p("client.key")), ..pki.receiver("server", None) }
        .server_config()
        .unwrap_err()
        .to_string();
    assert!(err.contains("ca.pem") && err.contains("do not match"), "{err}");
    // A key file others can read is refused with the chmod that fixes it
    // (SECURITY.md F15); a private file without a key says so.
    let err = TlsOptions { key: Some(pki.p("ca.pem")), ..pki.receiver("server", None) }.server_config().unwrap_err().to_string();
    assert!(err.contains(&format!("chmod 600 {}", pki.p("ca.pem").display())), "{err}");
    let not_a_key = pki.p("not-a-key.pem");
    common::write_private(&not_a_key, std::fs::read(pki.p("ca.pem")).unwrap());
    let err = TlsOptions { key: Some(not_a_key), ..pki.receiver("server", None) }.server_config().unwrap_err().to_string();
    assert!(err.contains("not-a-key.pem") && err.contains("holds no usable private key"), "{err}");
}
