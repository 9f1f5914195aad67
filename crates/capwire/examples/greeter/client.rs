//! The greeter client: `greeter_client ADDRESS [CERT_DIR [NAME]]`.
//!
//! Calls `hello` and reads the `count_to` stream. With CERT_DIR it trusts
//! the CA in `CERT_DIR/ca.pem` (instead of the system's roots); with NAME
//! it presents `CERT_DIR/NAME.pem` and `NAME.key` (mutual TLS). See
//! docs/tutorial.md.

#[path = "interface.rs"]
mod interface;

use capwire::transport::{self, CertIdentity, ClientTls, TransportConfig, TrustRoots};
use capwire::{Registry, Session, SessionConfig};
use interface::GreeterClient;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("greeter_client: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let address = args.next().unwrap_or_else(|| "tcp://127.0.0.1:7000".into());
    let cert_dir = args.next().map(std::path::PathBuf::from);
    let name = args.next();

    let mut config = TransportConfig::default();
    if let Some(dir) = &cert_dir {
        let roots = TrustRoots::from_pem_file(dir.join("ca.pem"))?;
        let tls = match &name {
            Some(name) => ClientTls::with_identity(
                roots,
                CertIdentity::from_pem_files(
                    dir.join(format!("{name}.pem")),
                    dir.join(format!("{name}.key")),
                )?,
            )?,
            None => ClientTls::new(roots)?,
        };
        config = config.tls_client(tls);
    }

    let connection = transport::connect(&address.parse()?, &config).await?;
    let session = Session::new(connection, Registry::new(), SessionConfig::default());
    let greeter = GreeterClient::bootstrap(&session).await?;

    println!("{}", greeter.hello("world".into()).await?);
    let numbers = greeter.count_to(5).collect_all().await?;
    println!("counted {numbers:?}");

    session.close().await;
    Ok(())
}
