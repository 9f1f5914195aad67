//! TLS from the command line: the flags of servers and clients, and
//! `capwire certs`, which writes a development CA and certificates signed
//! by it.

use std::path::{Path, PathBuf};

use anyhow::Context;
use capwire::transport::{CertIdentity, ClientTls, DevCa, ServerTls, TransportConfig, TrustRoots};

use crate::Usage;

/// A server's TLS flags: used when it listens on `tls://`, `wss://` or `https://`.
#[derive(clap::Args, Debug, Default, Clone)]
pub(crate) struct ServerTlsArgs {
    /// The server's certificate chain (PEM), for tls://, wss:// and https://.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Mutual TLS: accept only clients whose certificate chains to this CA
    /// (PEM); the certificate's name becomes the caller's identity.
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
}

impl ServerTlsArgs {
    /// `config` with the server certificate, when one was given.
    pub(crate) fn apply(&self, config: TransportConfig) -> anyhow::Result<TransportConfig> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(config);
        };
        let identity = CertIdentity::from_pem_files(cert, key)?;
        let tls = match &self.tls_client_ca {
            Some(ca) => ServerTls::mutual(identity, TrustRoots::from_pem_file(ca)?)?,
            None => ServerTls::new(identity)?,
        };
        Ok(config.tls_server(tls))
    }
}

/// A client's TLS flags: used when it connects to `tls://`, `wss://` or `https://`.
#[derive(clap::Args, Debug, Default, Clone)]
pub(crate) struct ClientTlsArgs {
    /// Trust this CA (PEM) instead of the system's roots.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// Mutual TLS: present this certificate (PEM).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

impl ClientTlsArgs {
    /// `config` with what the client trusts and presents, when flags were given.
    pub(crate) fn apply(&self, config: TransportConfig) -> anyhow::Result<TransportConfig> {
        if self.tls_ca.is_none() && self.tls_cert.is_none() {
            return Ok(config);
        }
        let roots = match &self.tls_ca {
            Some(ca) => TrustRoots::from_pem_file(ca)?,
            None => TrustRoots::system()?,
        };
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                ClientTls::with_identity(roots, CertIdentity::from_pem_files(cert, key)?)?
            }
            _ => ClientTls::new(roots)?,
        };
        Ok(config.tls_client(tls))
    }
}

/// `capwire certs DIR`: a CA, a server certificate for `hosts` and one
/// client certificate per name in `clients`, as PEM files in `dir`.
pub(crate) fn write_certs(dir: &Path, hosts: &[String], clients: &[String]) -> anyhow::Result<()> {
    if hosts.is_empty() {
        return Err(Usage("name at least one host (--host localhost)".into()).into());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let ca = DevCa::new("capwire development CA")?;
    write(dir, "ca.pem", ca.cert_pem(), false)?;
    let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let server = ca.server(&hosts)?;
    write(dir, "server.pem", &server.cert_pem, false)?;
    write(dir, "server.key", &server.key_pem, true)?;
    for name in clients {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
        {
            return Err(Usage(format!(
                "client name `{name}`: use letters, digits and - _ . @ (it names the files)"
            ))
            .into());
        }
        let client = ca.client(name)?;
        write(dir, &format!("{name}.pem"), &client.cert_pem, false)?;
        write(dir, &format!("{name}.key"), &client.key_pem, true)?;
    }
    Ok(())
}

/// Writes one file; private keys are readable by their owner only.
fn write(dir: &Path, name: &str, text: &str, private: bool) -> anyhow::Result<()> {
    let path = dir.join(name);
    let written = match private {
        true => capwire::auth::write_secret(&path, text.as_bytes()),
        false => std::fs::write(&path, text),
    };
    written.with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
