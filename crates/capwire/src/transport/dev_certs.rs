//! A throwaway certificate authority for development and tests: a server
//! certificate for the names it is reached by, client certificates for
//! mutual TLS, all signed by one CA that both sides are told to trust.
//! (`capwire certs DIR` writes such a set to files.)

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use super::tls::{CertIdentity, TlsError, TrustRoots};

fn failed(e: rcgen::Error) -> TlsError {
    TlsError::Config(format!("cannot generate a certificate: {e}"))
}

/// A throwaway certificate authority for development and tests: server
/// and client certificates signed by one CA that both sides trust
/// (`capwire certs DIR` writes such a set to files).
///
/// ```
/// use capwire::transport::{ClientTls, DevCa, ServerTls};
/// let ca = DevCa::new("example dev CA")?;
/// let server = ServerTls::new(ca.server(&["localhost", "127.0.0.1"])?.identity()?)?;
/// let client = ClientTls::new(ca.trust()?)?;
/// # Ok::<(), capwire::transport::TlsError>(())
/// ```
pub struct DevCa {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa").finish_non_exhaustive()
    }
}

/// A certificate and its private key, in PEM.
#[derive(Clone)]
pub struct DevCert {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for DevCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCert").finish_non_exhaustive()
    }
}

impl DevCert {
    /// The certificate and key, for [`ServerTls`](super::ServerTls) or
    /// [`ClientTls::with_identity`](super::ClientTls::with_identity).
    pub fn identity(&self) -> Result<CertIdentity, TlsError> {
        CertIdentity::from_pem(self.cert_pem.as_bytes(), self.key_pem.as_bytes())
    }
}

/// Valid from 2025 to 2035: long enough for development, not forever.
fn validity(params: &mut CertificateParams) {
    params.not_before = date_time_ymd(2025, 1, 1);
    params.not_after = date_time_ymd(2035, 1, 1);
}

impl DevCa {
    /// A new CA whose certificate's common name is `name`.
    pub fn new(name: &str) -> Result<DevCa, TlsError> {
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity(&mut params);
        let key = KeyPair::generate().map_err(failed)?;
        let cert = params.self_signed(&key).map_err(failed)?;
        Ok(DevCa {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, in PEM: what both sides trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA as trusted roots.
    pub fn trust(&self) -> Result<TrustRoots, TlsError> {
        TrustRoots::from_pem(self.cert_pem.as_bytes())
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn server(&self, names: &[&str]) -> Result<DevCert, TlsError> {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone()).map_err(failed)?;
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, first);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate whose common name is `identity`: the identity
    /// a mutual-TLS server sees in the attestation.
    pub fn client(&self, identity: &str) -> Result<DevCert, TlsError> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, identity);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, mut params: CertificateParams) -> Result<DevCert, TlsError> {
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params);
        let key = KeyPair::generate().map_err(failed)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(failed)?;
        Ok(DevCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}
