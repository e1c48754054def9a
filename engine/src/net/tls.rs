//! TLS configuration with rustls and the aws-lc-rs provider: the modes of
//! the stock `ssl-mode` option, PEM certificates and keys, CA files or
//! directories, and error messages that say which file or check failed.
//!
//! The receiver is the TLS server (as the stock joiner is). The sender
//! presents a client certificate when it has one; a receiver with a CA
//! requires and verifies one (mutual TLS). TLS 1.3 is preferred, 1.2 is
//! allowed for older peers. There is never a plaintext fallback.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::{Error, Result};

/// The stock `ssl-mode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMode {
    #[default]
    Disabled,
    /// Encrypt; do not verify the receiver's certificate.
    Required,
    /// Verify the receiver's chain against the CA, not its name.
    VerifyCa,
    /// Verify the chain and that the certificate names the receiver.
    VerifyIdentity,
}

impl FromStr for TlsMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "disabled" => Self::Disabled,
            "required" => Self::Required,
            "verify-ca" => Self::VerifyCa,
            "verify-identity" => Self::VerifyIdentity,
            _ => return Err(Error::Config(format!("unknown TLS mode {s:?}: use disabled, required, verify-ca or verify-identity"))),
        })
    }
}

/// Everything `--tls-*` says.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    pub mode: TlsMode,
    /// Own certificate chain (PEM); may also hold the key.
    pub cert: Option<PathBuf>,
    /// Own private key (PEM: PKCS#1, PKCS#8 or SEC1); default: from `cert`.
    pub key: Option<PathBuf>,
    /// CA certificates: a PEM file or a directory of them.
    pub ca: Option<PathBuf>,
    /// Name the receiver's certificate must carry (verify-identity);
    /// default: the host part of the address.
    pub name: Option<String>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn bad(path: &Path, what: &str) -> Error {
    Error::Config(format!("{}: {what}", path.display()))
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(path, &format!("cannot read certificates: {e}")))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| bad(path, &format!("not a valid PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(bad(path, "holds no PEM certificate (-----BEGIN CERTIFICATE-----)"));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    // A private key file must be private (SECURITY.md F15).
    let pem = crate::secret::read(path, "TLS private key file")?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| bad(path, &format!("holds no usable private key (PKCS#1, PKCS#8 or SEC1 PEM): {e}")))
}

fn load_roots(path: &Path) -> Result<RootCertStore> {
    let mut files = Vec::new();
    if path.is_dir() {
        let rd = std::fs::read_dir(path).map_err(|e| bad(path, &format!("cannot list the CA directory: {e}")))?;
        for entry in rd.flatten() {
            let p = entry.path();
            if p.extension().is_some_and(|x| x == "pem" || x == "crt") || p.file_name().is_some_and(|n| n.len() == 10) {
                files.push(p);
            }
        }
    } else {
        files.push(path.to_path_buf());
    }
    let mut roots = RootCertStore::empty();
    for f in &files {
        for c in load_certs(f)? {
            roots.add(c).map_err(|e| bad(f, &format!("not a usable CA certificate: {e}")))?;
        }
    }
    if roots.is_empty() {
        return Err(bad(path, "holds no CA certificate"));
    }
    Ok(roots)
}

impl TlsOptions {
    pub fn enabled(&self) -> bool {
        self.mode != TlsMode::Disabled
    }

    fn own_identity(&self) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>> {
        let Some(cert) = &self.cert else {
            if let Some(k) = &self.key {
                return Err(bad(k, "a key was given without --tls-cert"));
            }
            return Ok(None);
        };
        let certs = load_certs(cert)?;
        let key = load_key(self.key.as_deref().unwrap_or(cert))?;
        Ok(Some((certs, key)))
    }

    /// The sender's configuration.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>> {
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Config(format!("TLS setup: {e}")))?;
        let verifier: Arc<dyn ServerCertVerifier> = match self.mode {
            TlsMode::Disabled => return Err(Error::Config("TLS is disabled".into())),
            TlsMode::Required => Arc::new(Verifier { chain: None, provider: Arc::clone(&provider) }),
            TlsMode::VerifyCa | TlsMode::VerifyIdentity => {
                let ca = self.ca.as_deref().ok_or_else(|| {
                    Error::Config(
                        "--tls-mode verify-ca and verify-identity need --tls-ca (the CA that signed the receiver's certificate)".into(),
                    )
                })?;
                let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(load_roots(ca)?), Arc::clone(&provider))
                    .build()
                    .map_err(|e| bad(ca, &format!("cannot build a verifier: {e}")))?;
                if self.mode == TlsMode::VerifyCa {
                    Arc::new(Verifier { chain: Some(webpki), provider: Arc::clone(&provider) })
                } else {
                    webpki
                }
            }
        };
        let builder = builder.dangerous().with_custom_certificate_verifier(verifier);
        let mut cfg = match self.own_identity()? {
            Some((certs, key)) => builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| bad(self.cert.as_deref().unwrap_or(Path::new("?")), &format!("certificate and key do not match: {e}")))?,
            None => builder.with_no_client_auth(),
        };
        cfg.enable_sni = false;
        Ok(Arc::new(cfg))
    }

    /// The receiver's configuration.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>> {
        let provider = provider();
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Config(format!("TLS setup: {e}")))?;
        let builder = match &self.ca {
            Some(ca) => builder.with_client_cert_verifier(
                WebPkiClientVerifier::builder_with_provider(Arc::new(load_roots(ca)?), provider)
                    .build()
                    .map_err(|e| bad(ca, &format!("cannot build a client verifier: {e}")))?,
            ),
            None => builder.with_no_client_auth(),
        };
        let (certs, key) = self
            .own_identity()?
            .ok_or_else(|| Error::Config("a TLS receiver needs --tls-cert (and --tls-key unless the cert file holds the key)".into()))?;
        let mut cfg = builder
            .with_single_cert(certs, key)
            .map_err(|e| bad(self.cert.as_deref().unwrap_or(Path::new("?")), &format!("certificate and key do not match: {e}")))?;
        cfg.send_tls13_tickets = 0;
        Ok(Arc::new(cfg))
    }

    /// The name the receiver's certificate must carry, from `--tls-name`
    /// or the host of `addr`.
    pub fn server_name(&self, addr: &str) -> Result<ServerName<'static>> {
        let host = self.name.clone().unwrap_or_else(|| {
            let h = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
            h.trim_start_matches('[').trim_end_matches(']').to_string()
        });
        ServerName::try_from(host.clone()).map_err(|_| Error::Config(format!("{host:?} is not a valid TLS server name")))
    }
}

/// Explains a failed TLS handshake in terms of the options involved.
pub fn explain(e: &std::io::Error, sender: bool) -> String {
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return format!("{e} (is the other end using TLS with matching --tls-mode?)");
    };
    let hint = match tls {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) if sender => {
            "the receiver's certificate is not signed by a CA in --tls-ca"
        }
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => "the sender's certificate is not signed by a CA in --tls-ca",
        rustls::Error::InvalidCertificate(CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }) => {
            "the receiver's certificate does not carry the expected name (--tls-name, or the host in --to)"
        }
        rustls::Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => {
            "the peer's certificate has expired"
        }
        rustls::Error::InvalidCertificate(CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. }) => {
            "the peer's certificate is not valid yet (check the clocks)"
        }
        rustls::Error::NoCertificatesPresented | rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired) => {
            "the receiver requires a client certificate: give the sender --tls-cert and --tls-key"
        }
        rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA | rustls::AlertDescription::BadCertificate) => {
            "the other end rejected this side's certificate (see its log)"
        }
        rustls::Error::InvalidMessage(_) => "the other end does not speak TLS (is it running with --tls-mode disabled?)",
        _ => "TLS handshake failed",
    };
    format!("{hint} ({tls})")
}

/// The sender's check of the receiver's certificate for `required` (no
/// chain: accept any certificate) and `verify-ca` (the webpki chain check,
/// ignoring only the name). Either way the handshake signatures are checked
/// against the certificate presented, with the provider's algorithms.
#[derive(Debug)]
struct Verifier {
    chain: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end: &CertificateDer<'_>,
        inter: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else { return Ok(ServerCertVerified::assertion()) };
        match chain.verify_server_cert(end, inter, name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. })) => {
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(m, c, d, &self.provider.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(m, c, d, &self.provider.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_like_ssl_mode() {
        assert_eq!("VERIFY_IDENTITY".parse::<TlsMode>().unwrap(), TlsMode::VerifyIdentity);
        assert_eq!("verify-ca".parse::<TlsMode>().unwrap(), TlsMode::VerifyCa);
        assert!("PREFERRED".parse::<TlsMode>().unwrap_err().to_string().contains("PREFERRED"));
    }

    #[test]
    fn missing_files_are_named() {
        let o = TlsOptions { mode: TlsMode::VerifyCa, ca: Some("/nonexistent/ca.pem".into()), ..TlsOptions::default() };
        assert!(o.client_config().unwrap_err().to_string().contains("/nonexistent/ca.pem"));
        let o = TlsOptions { mode: TlsMode::Required, ..TlsOptions::default() };
        assert!(o.server_config().unwrap_err().to_string().contains("--tls-cert"));
        assert_eq!(o.server_name("127.0.0.1:4444").unwrap(), ServerName::try_from("127.0.0.1").unwrap());
        assert_eq!(o.server_name("[::1]:4444").unwrap(), ServerName::try_from("::1").unwrap());
    }
}
