//! The greeter server: `greeter_server ADDRESS [CERT_DIR [--mutual]]`.
//!
//! Serves `greeter` on ADDRESS until Ctrl-C, then drains: no new
//! connections, calls in flight finish. With CERT_DIR (written by
//! `capwire certs CERT_DIR`) it presents `server.pem`/`server.key` on
//! `tls://` or `wss://`; with `--mutual` it accepts only clients whose
//! certificate is signed by `ca.pem`, and the certificate's name is the
//! caller's identity. See docs/tutorial.md.

#[path = "interface.rs"]
mod interface;

use capwire::dialect::{ServeConfig, Server};
use capwire::transport::{CertIdentity, Listener, ServerTls, TransportConfig, TrustRoots};
use capwire::typed::ItemsOf;
use capwire::{Registry, Status};
use futures_util::StreamExt;
use interface::{Greeter, GreeterServer};

struct Greetings;

impl Greeter for Greetings {
    async fn hello(&self, name: String) -> Result<String, Status> {
        // What the transport proved about this connection.
        let ctx = capwire::typed::context().expect("called by a session");
        let att = ctx.attestation();
        let who = att.identity.as_deref().unwrap_or("someone unidentified");
        let over = if att.tls { "over TLS" } else { "in plain text" };
        Ok(format!("hello, {name}! (you are {who}, {over})"))
    }

    async fn count_to(&self, n: u32) -> Result<ItemsOf<u32>, Status> {
        Ok(futures_util::stream::iter((1..=n).map(Ok)).boxed())
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("greeter_server: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let address = args.next().unwrap_or_else(|| "tcp://127.0.0.1:7000".into());
    let cert_dir = args.next().map(std::path::PathBuf::from);
    let mutual = args.next().as_deref() == Some("--mutual");

    let mut config = TransportConfig::default();
    if let Some(dir) = &cert_dir {
        let identity =
            CertIdentity::from_pem_files(dir.join("server.pem"), dir.join("server.key"))?;
        let tls = if mutual {
            ServerTls::mutual(identity, TrustRoots::from_pem_file(dir.join("ca.pem"))?)?
        } else {
            ServerTls::new(identity)?
        };
        config = config.tls_server(tls);
    }

    let registry = Registry::new();
    let _served = registry.serve_interface(GreeterServer::new(Greetings))?;
    let listener = Listener::bind(&address.parse()?, config).await?;
    println!("listening on {}", listener.local_addr());
    let server = Server::start(listener, registry, ServeConfig::default());
    capwire::dialect::shutdown_signal().await?; // Ctrl-C or SIGTERM
    server.shutdown().await;
    Ok(())
}
