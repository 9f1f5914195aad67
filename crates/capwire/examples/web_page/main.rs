//! A web page that calls a Rust server: `web_page [ADDRESS] [CAPNWEB_JS]`.
//!
//! One port serves the page (`GET /`), the npm `capnweb` client's browser
//! bundle (`GET /capnweb.js`, read from CAPNWEB_JS, by default from
//! `interop/node_modules` after `npm ci --prefix interop`) and the
//! WebSocket the page opens (`/rpc`). The page squares a number, makes a
//! counter and increments it in one round trip (pipelining), and passes a
//! JavaScript function the server calls back. Open the printed address in
//! a browser; CI loads it in headless Chromium (`interop/browser/check.mjs`).

use bytes::Bytes;
use capwire::dialect::{ServeConfig, Server};
use capwire::transport::{GetRoute, Listener, TransportConfig};
use capwire::{Registry, Status};
use std::sync::atomic::{AtomicI64, Ordering};

/// What the page calls.
#[capwire::interface(name = "page", version = "1.0")]
pub trait Page {
    /// `n * n`.
    async fn square(&self, n: i64) -> Result<i64, Status>;
    /// A new counter starting at `start`.
    async fn make_counter(&self, start: i64) -> Result<CounterClient, Status>;
    /// Greets `name` through the page's own function `shout`.
    async fn greet_with(&self, shout: ShoutClient, name: String) -> Result<String, Status>;
}

/// A counter the page holds a reference to.
#[capwire::interface(name = "counter", version = "1.0")]
pub trait Counter {
    /// Adds `by`; the new value.
    async fn increment(&self, by: i64) -> Result<i64, Status>;
}

/// A function of the page's (a capnweb callback is a stub whose call is
/// the method `call`).
#[capwire::interface(name = "shout", version = "1.0")]
pub trait Shout {
    /// Calls the function with `text`.
    async fn call(&self, text: String) -> Result<String, Status>;
}

struct PageImpl;

impl Page for PageImpl {
    async fn square(&self, n: i64) -> Result<i64, Status> {
        n.checked_mul(n)
            .ok_or_else(|| Status::new(capwire::Code::InvalidArgument, "overflow"))
    }
    async fn make_counter(&self, start: i64) -> Result<CounterClient, Status> {
        Ok(CounterClient::from_impl(CounterImpl(AtomicI64::new(start))))
    }
    async fn greet_with(&self, shout: ShoutClient, name: String) -> Result<String, Status> {
        shout.call(format!("hello, {name}")).await
    }
}

struct CounterImpl(AtomicI64);

impl Counter for CounterImpl {
    async fn increment(&self, by: i64) -> Result<i64, Status> {
        Ok(self.0.fetch_add(by, Ordering::Relaxed) + by)
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("web_page: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let address = args.next().unwrap_or_else(|| "ws://127.0.0.1:8080/".into());
    let script = args.next().unwrap_or_else(|| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../interop/node_modules/capnweb/dist/index.js"
        )
        .into()
    });
    let capnweb_js = std::fs::read(&script).map_err(|e| {
        format!("cannot read the capnweb client {script} ({e}): run `npm ci --prefix interop`")
    })?;

    let mut config = TransportConfig::default();
    let page = Bytes::from_static(include_bytes!("index.html"));
    config.get_routes = vec![
        GetRoute::fixed("/", "text/html; charset=utf-8", page),
        GetRoute::fixed("/capnweb.js", "text/javascript", Bytes::from(capnweb_js)),
    ];
    let registry = Registry::new();
    let _served = registry.serve_interface(PageServer::new(PageImpl))?;
    let listener = Listener::bind(&address.parse()?, config).await?;
    let url = listener.local_addr().to_string().replacen("ws", "http", 1);
    println!("serving the page at {url}");
    let mut serve = ServeConfig::default();
    serve.capnweb_main = Some("page".into());
    let server = Server::start(listener, registry, serve);
    capwire::dialect::shutdown_signal().await?; // Ctrl-C or SIGTERM
    server.shutdown().await;
    Ok(())
}
