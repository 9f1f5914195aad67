//! TLS for `tls://`, `wss://` and `https://`, on rustls (with the `ring`
//! provider) for both sides.
//!
//! A server needs a [`ServerTls`]: its certificate chain and key
//! ([`CertIdentity`]), and, for mutual TLS, the roots its clients'
//! certificates must chain to. A client needs a [`ClientTls`]: the roots it
//! trusts (the system's, or a given CA) and, for mutual TLS, its own
//! certificate. Both go in [`TransportConfig`](super::TransportConfig).
//! A verified client certificate reaches the connection's
//! [`Attestation`]: `tls`, `certificate` and, from the certificate's first
//! subject alternative name (or its common name), `identity`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

use super::TransportError;
use crate::attestation::Attestation;

/// How long a peer may take to complete the TLS handshake.
pub(super) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The first byte of every TLS record that starts a handshake.
const HANDSHAKE_RECORD: u8 = 0x16;

/// A TLS configuration that could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read or holds no usable item.
    #[error("{}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// PEM text held no certificate, or no private key.
    #[error("{0}")]
    Pem(String),
    /// rustls refused the configuration (a key that does not match the
    /// certificate, an unsupported key type, …).
    #[error("TLS configuration refused: {0}")]
    Config(String),
    /// The system's trusted roots could not be loaded.
    #[error("no system root certificates could be loaded: {0}")]
    SystemRoots(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

fn in_file(path: &Path, e: TlsError) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(format!("bad PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::Pem(
            "no certificate (`-----BEGIN CERTIFICATE-----`) in the PEM text".into(),
        ));
    }
    Ok(certs)
}

/// A certificate chain and its private key: what a server presents, or a
/// client under mutual TLS.
pub struct CertIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Clone for CertIdentity {
    fn clone(&self) -> CertIdentity {
        CertIdentity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl fmt::Debug for CertIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertIdentity")
            .field("certificates", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl CertIdentity {
    /// From PEM text: the certificate chain (leaf first) and the private key
    /// (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem(chain: &[u8], key: &[u8]) -> Result<CertIdentity, TlsError> {
        let chain = certificates(chain)?;
        let key = PrivateKeyDer::from_pem_slice(key)
            .map_err(|e| TlsError::Pem(format!("no usable private key in the PEM text: {e}")))?;
        Ok(CertIdentity { chain, key })
    }

    /// From PEM files: the certificate chain and the private key.
    pub fn from_pem_files(
        chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<CertIdentity, TlsError> {
        let (chain, key) = (chain.as_ref(), key.as_ref());
        let certs = certificates(&read_file(chain)?).map_err(|e| in_file(chain, e))?;
        let key_der = PrivateKeyDer::from_pem_slice(&read_file(key)?).map_err(|e| {
            in_file(
                key,
                TlsError::Pem(format!("no usable private key in the file: {e}")),
            )
        })?;
        Ok(CertIdentity {
            chain: certs,
            key: key_der,
        })
    }
}

/// The certificate authorities a side trusts.
#[derive(Clone)]
pub struct TrustRoots(RootCertStore);

impl fmt::Debug for TrustRoots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustRoots({} roots)", self.0.len())
    }
}

impl TrustRoots {
    /// The operating system's trusted roots.
    pub fn system() -> Result<TrustRoots, TlsError> {
        let found = rustls_native_certs::load_native_certs();
        let mut store = RootCertStore::empty();
        let (added, _) = store.add_parsable_certificates(found.certs);
        if added == 0 {
            let why = found
                .errors
                .first()
                .map_or_else(|| "none found".to_owned(), ToString::to_string);
            return Err(TlsError::SystemRoots(why));
        }
        Ok(TrustRoots(store))
    }

    /// The CA certificates in PEM text.
    pub fn from_pem(pem: &[u8]) -> Result<TrustRoots, TlsError> {
        let mut store = RootCertStore::empty();
        for cert in certificates(pem)? {
            store
                .add(cert)
                .map_err(|e| TlsError::Pem(format!("not a usable CA certificate: {e}")))?;
        }
        Ok(TrustRoots(store))
    }

    /// The CA certificates in a PEM file.
    pub fn from_pem_file(path: impl AsRef<Path>) -> Result<TrustRoots, TlsError> {
        let path = path.as_ref();
        TrustRoots::from_pem(&read_file(path)?).map_err(|e| in_file(path, e))
    }
}

/// What a TLS server presents (its certificate chain and key) and, for
/// mutual TLS, the roots its clients' certificates must chain to.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: TlsAcceptor,
    mutual: bool,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("mutual", &self.mutual)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// A server presenting `identity`, asking clients for no certificate.
    pub fn new(identity: CertIdentity) -> Result<ServerTls, TlsError> {
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(identity.chain, identity.key)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        Ok(ServerTls::from_rustls(Arc::new(config)))
    }

    /// Mutual TLS: a server presenting `identity` that accepts only clients
    /// whose certificate chains to `clients`.
    pub fn mutual(identity: CertIdentity, clients: TrustRoots) -> Result<ServerTls, TlsError> {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(clients.0),
            provider(),
        )
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(identity.chain, identity.key)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let mut tls = ServerTls::from_rustls(Arc::new(config));
        tls.mutual = true;
        Ok(tls)
    }

    /// Any rustls server configuration.
    pub fn from_rustls(config: Arc<ServerConfig>) -> ServerTls {
        ServerTls {
            acceptor: TlsAcceptor::from(config),
            mutual: false,
        }
    }
}

/// What a TLS client trusts (the system's roots or a given CA) and, for
/// mutual TLS, the certificate it presents.
#[derive(Clone)]
pub struct ClientTls {
    connector: TlsConnector,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls").finish_non_exhaustive()
    }
}

impl ClientTls {
    /// A client trusting `roots`, presenting no certificate.
    pub fn new(roots: TrustRoots) -> Result<ClientTls, TlsError> {
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(roots.0)
            .with_no_client_auth();
        Ok(ClientTls::from_rustls(Arc::new(config)))
    }

    /// A client trusting `roots` and presenting `identity` (mutual TLS).
    pub fn with_identity(roots: TrustRoots, identity: CertIdentity) -> Result<ClientTls, TlsError> {
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(roots.0)
            .with_client_auth_cert(identity.chain, identity.key)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        Ok(ClientTls::from_rustls(Arc::new(config)))
    }

    /// A client trusting the system's roots: what `tls://`, `wss://` and
    /// `https://` use when the configuration names none.
    pub fn system() -> Result<ClientTls, TlsError> {
        ClientTls::new(TrustRoots::system()?)
    }

    /// Any rustls client configuration.
    pub fn from_rustls(config: Arc<ClientConfig>) -> ClientTls {
        ClientTls {
            connector: TlsConnector::from(config),
        }
    }
}

/// A peer's certificate, as a verified TLS handshake showed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerCertificate {
    /// The subject's distinguished name, e.g. `CN=alice, O=example`.
    pub subject: String,
    /// The subject alternative names: DNS names, URIs, e-mail addresses
    /// and IP addresses, as text.
    pub names: Vec<String>,
    /// The SHA-256 fingerprint of the certificate (DER), in lowercase hex.
    pub sha256: String,
}

impl PeerCertificate {
    fn parse(der: &CertificateDer<'_>) -> PeerCertificate {
        use x509_parser::extensions::GeneralName;
        let digest = ring::digest::digest(&ring::digest::SHA256, der.as_ref());
        let sha256 = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        let mut subject = String::new();
        let mut names = Vec::new();
        if let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) {
            subject = cert.subject().to_string();
            if let Some(cn) = cert
                .subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
            {
                names.push(cn.to_owned());
            }
            let common_name = names.pop();
            if let Ok(Some(san)) = cert.subject_alternative_name() {
                for name in &san.value.general_names {
                    match name {
                        GeneralName::DNSName(s)
                        | GeneralName::URI(s)
                        | GeneralName::RFC822Name(s) => {
                            names.push((*s).to_owned());
                        }
                        GeneralName::IPAddress(ip) => {
                            if let Ok(v4) = <[u8; 4]>::try_from(*ip) {
                                names.push(std::net::Ipv4Addr::from(v4).to_string());
                            } else if let Ok(v6) = <[u8; 16]>::try_from(*ip) {
                                names.push(std::net::Ipv6Addr::from(v6).to_string());
                            }
                        }
                        _ => {}
                    }
                }
            }
            if names.is_empty() {
                names.extend(common_name);
            }
        }
        PeerCertificate {
            subject,
            names,
            sha256,
        }
    }

    /// The identity the certificate proves: its first subject alternative
    /// name, or its common name when it has none.
    pub fn identity(&self) -> Option<&str> {
        self.names.first().map(String::as_str)
    }
}

/// Marks `att` as TLS and, when the peer showed a verified certificate,
/// records it and the identity it proves.
fn attest(att: &mut Attestation, peer_certs: Option<&[CertificateDer<'static>]>) {
    att.tls = true;
    if let Some(leaf) = peer_certs.and_then(|c| c.first()) {
        let cert = PeerCertificate::parse(leaf);
        att.identity = cert.identity().map(str::to_owned);
        att.certificate = Some(cert);
    }
}

/// The server side of the handshake on an accepted TCP connection. A peer
/// that sends plain text instead is answered (when it is HTTP or raw
/// capwire/1) with where to go, and refused.
pub(super) async fn accept(
    mut tcp: TcpStream,
    tls: &ServerTls,
    att: &mut Attestation,
    scheme: &str,
) -> Result<server::TlsStream<TcpStream>, TransportError> {
    let mut first = [0u8; 8];
    let n = tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.peek(&mut first))
        .await
        .map_err(|_| TransportError::Tls("no TLS handshake within 10 s".into()))??;
    if n > 0 && first[0] != HANDSHAKE_RECORD {
        let hint = format!("this port speaks TLS: connect with {scheme}");
        refuse_plaintext(&mut tcp, &first[..n], &hint).await;
        return Err(TransportError::Tls(format!(
            "a peer sent plain text to a TLS port ({hint})"
        )));
    }
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.acceptor.accept(tcp))
        .await
        .map_err(|_| TransportError::Tls("TLS handshake not finished within 10 s".into()))?
        .map_err(|e| TransportError::Tls(format!("TLS handshake failed: {e}")))?;
    attest(att, stream.get_ref().1.peer_certificates());
    Ok(stream)
}

/// Tells a plain-text peer on a TLS port where to go: an HTTP response for
/// an HTTP request, a capwire/1 `goaway` for a raw capwire client.
async fn refuse_plaintext(tcp: &mut TcpStream, first: &[u8], hint: &str) {
    if first.first().is_some_and(u8::is_ascii_uppercase) {
        let body = format!("{hint}\n");
        let response = format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain;charset=UTF-8\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = tcp.write_all(response.as_bytes()).await;
    } else {
        super::http::refuse_raw_capwire(tcp, first, hint).await;
    }
    let _ = tcp.shutdown().await;
}

/// Whether bytes read at the start of a plain connection are a TLS
/// client's first record.
pub(super) fn is_client_hello(first: &[u8]) -> bool {
    matches!(first, [HANDSHAKE_RECORD, 3, ..])
}

/// The client side of the handshake, to `authority` (`HOST:PORT`).
pub(super) async fn connect(
    tcp: TcpStream,
    authority: &str,
    tls: Option<&ClientTls>,
    att: &mut Attestation,
) -> Result<client::TlsStream<TcpStream>, TransportError> {
    let system;
    let tls = match tls {
        Some(tls) => tls,
        None => {
            system = ClientTls::system().map_err(|e| TransportError::Tls(e.to_string()))?;
            &system
        }
    };
    let host = authority
        .rsplit_once(':')
        .map_or(authority, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let name = ServerName::try_from(host.to_owned())
        .map_err(|_| TransportError::Tls(format!("`{host}` is not a valid TLS server name")))?;
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.connector.connect(name, tcp))
        .await
        .map_err(|_| TransportError::Tls(format!("no TLS handshake from {authority} within 10 s")))?
        .map_err(|e| TransportError::Tls(handshake_failure(authority, &e)))?;
    attest(att, stream.get_ref().1.peer_certificates());
    Ok(stream)
}

/// A client's failed handshake, in the user's words.
fn handshake_failure(authority: &str, e: &std::io::Error) -> String {
    let text = e.to_string();
    let plain = text.contains("InvalidContentType")
        || text.contains("corrupt message")
        || matches!(
            e.kind(),
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
        );
    if plain {
        return format!(
            "{authority} did not answer in TLS ({text}): it is probably a plain port \
             (use tcp://, ws:// or http://)"
        );
    }
    format!("TLS handshake with {authority} failed: {text}")
}
