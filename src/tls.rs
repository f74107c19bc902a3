//! TLS on both sides, with rustls and its `ring` provider: the listener's acceptor
//! (`[listen.tls]`) and the upstream connector (`rediss://`, `[upstream.tls]`).
//!
//! Building either one reads and checks its PEM files (present, parseable, key matching
//! certificate). Configuration validation builds them too, so `--check-config` and a
//! reload report a bad file with its key before a start would fail on it.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::{Config, ListenTls, UpstreamTls};

/// A problem with one key of a TLS section: `key` is the key's name within it
/// (`certificate`, `ca`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError {
    pub key: &'static str,
    pub message: String,
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

fn error(key: &'static str, message: impl Into<String>) -> TlsError {
    TlsError {
        key,
        message: message.into(),
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The acceptor for `[listen.tls]`: cachet's certificate, and client certificates
/// required and verified when `client_ca` is set.
/// The TLS settings' problems, found as a start would find them (reading and parsing
/// every file they name): a [`Check`](crate::config::Check) for the loader.
pub fn check(config: &Config) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(tls) = &config.listen.tls
        && tls.certificate.is_some()
        && tls.key.is_some()
        && let Err(e) = acceptor(tls)
    {
        out.push((format!("listen.tls.{}", e.key), e.message));
    }
    let upstream = &config.upstream;
    if upstream.url.tls && !upstream.url.host.is_empty() {
        let tls = upstream.tls.clone().unwrap_or_default();
        if let Err(e) = connector(&upstream.url.host, &tls) {
            let key = match e.key {
                "url" => "upstream.url".to_owned(),
                key => format!("upstream.tls.{key}"),
            };
            out.push((key, e.message));
        }
    }
    out
}

pub fn acceptor(tls: &ListenTls) -> Result<TlsAcceptor, TlsError> {
    let certificate = tls
        .certificate
        .as_deref()
        .ok_or_else(|| error("certificate", "missing required key"))?;
    let key_path = tls
        .key
        .as_deref()
        .ok_or_else(|| error("key", "missing required key"))?;
    let chain = certificates("certificate", certificate)?;
    let key = private_key("key", key_path)?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| error("certificate", e.to_string()))?;
    let builder = match &tls.client_ca {
        Some(path) => {
            let roots = roots("client_ca", path)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| error("client_ca", e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| key_error(key_path, e))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// How cachet opens TLS connections to the upstream: the client configuration and the
/// name the upstream's certificate must carry.
#[derive(Clone)]
pub struct Connector {
    pub connector: TlsConnector,
    pub server_name: ServerName<'static>,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// The connector for a `rediss://` upstream at `host` with `[upstream.tls]` settings
/// (the defaults when the section is absent).
pub fn connector(host: &str, tls: &UpstreamTls) -> Result<Connector, TlsError> {
    let name = tls.server_name.as_deref().unwrap_or(host);
    let server_name = ServerName::try_from(name.to_owned()).map_err(|_| {
        let key = if tls.server_name.is_some() {
            "server_name"
        } else {
            "url"
        };
        error(
            key,
            format!("{name:?} is not a valid DNS name or IP address"),
        )
    })?;
    if tls.insecure && tls.ca.is_some() {
        return Err(error(
            "insecure",
            "insecure = true skips verification, so ca would be ignored; remove one of them",
        ));
    }
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| error("ca", e.to_string()))?;
    let builder = if tls.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(
                provider.signature_verification_algorithms,
            )))
    } else {
        let roots = match &tls.ca {
            Some(path) => roots("ca", path)?,
            None => RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
        };
        builder.with_root_certificates(roots)
    };
    let config = match (&tls.certificate, &tls.key) {
        (Some(certificate), Some(key_path)) => {
            let chain = certificates("certificate", certificate)?;
            let key = private_key("key", key_path)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| key_error(key_path, e))?
        }
        // Blamed on the key that is written, so the error has its line.
        (Some(_), None) => {
            return Err(error("certificate", "needs key (its private key) as well"));
        }
        (None, Some(_)) => return Err(error("key", "needs certificate as well")),
        (None, None) => builder.with_no_client_auth(),
    };
    Ok(Connector {
        connector: TlsConnector::from(Arc::new(config)),
        server_name,
    })
}

/// Every certificate in a PEM file; at least one.
fn certificates(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let shown = path.display();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| error(key, pem_message(path, &e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(key, pem_message(path, &e)))?;
    if certs.is_empty() {
        return Err(error(
            key,
            format!("no certificate in {shown} (expected PEM \"BEGIN CERTIFICATE\" blocks)"),
        ));
    }
    Ok(certs)
}

/// The first private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
fn private_key(key: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => error(
            key,
            format!(
                "no private key in {} (expected a PEM \"BEGIN PRIVATE KEY\" block)",
                path.display()
            ),
        ),
        e => error(key, pem_message(path, &e)),
    })
}

/// CA certificates from a PEM file, each one checked to be usable as a trust anchor.
fn roots(key: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in certificates(key, path)? {
        store.add(cert).map_err(|e| {
            error(
                key,
                format!("{}: not a usable CA certificate: {e}", path.display()),
            )
        })?;
    }
    Ok(store)
}

fn pem_message(path: &Path, e: &rustls_pki_types::pem::Error) -> String {
    match e {
        rustls_pki_types::pem::Error::Io(io) => format!("cannot read {}: {io}", path.display()),
        e => format!("{}: not valid PEM: {e}", path.display()),
    }
}

/// A certificate/key pairing failure is the key's fault as far as the operator can tell.
fn key_error(key_path: &Path, e: rustls::Error) -> TlsError {
    let message = match e {
        rustls::Error::InconsistentKeys(_) => format!(
            "{} does not match the certificate's public key",
            key_path.display()
        ),
        e => format!("{}: {e}", key_path.display()),
    };
    error("key", message)
}

/// `insecure = true`: accepts any upstream certificate. Handshake signatures are still
/// checked, so the connection is at least encrypted to whoever holds the presented key.
#[derive(Debug)]
struct NoVerification(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// A digest of the contents of every TLS file `config` names (a missing file counts as
/// empty): the running TLS settings were built from these bytes, so a reload compares
/// digests to tell that rotated files need a restart.
pub fn files_digest(config: &Config) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let listen = config
        .listen
        .tls
        .iter()
        .flat_map(|t| [&t.certificate, &t.key, &t.client_ca]);
    let upstream = config
        .upstream
        .tls
        .iter()
        .flat_map(|t| [&t.ca, &t.certificate, &t.key]);
    for path in listen.chain(upstream) {
        path.hash(&mut hasher);
        if let Some(path) = path {
            std::fs::read(path).unwrap_or_default().hash(&mut hasher);
        }
    }
    hasher.finish()
}
