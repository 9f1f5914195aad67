//! capwire's JSON-RPC dialect, driven by jsonrpsee's WebSocket client: the
//! same client as the jsonrpsee cells, so the two rows compare the servers.
//! The service mirrors jsonrpsee's (`bench/echo`, and a chain of three
//! awaited calls). Streams are left out: jsonrpsee's subscriptions are its
//! own protocol on top of JSON-RPC.

use jsonrpsee::core::client::ClientT;
use jsonrpsee::rpc_params;

use capwire::dialect::{ServeConfig, Server};
use capwire::transport::{Listener, TransportConfig};
use capwire::{Registry, Status};

use crate::measure::{self, Sample};
use crate::net::{Endpoint, Net};
use crate::work::{payload, Opts, Work, DEPTH};

/// The service, as JSON-RPC methods `bench/…`.
#[capwire::interface(name = "bench", version = "1.0")]
pub trait JsonBench {
    /// Returns its argument.
    async fn echo(&self, s: String) -> Result<String, Status>;
    /// The first stage of a chain.
    async fn stage(&self) -> Result<u64, Status>;
    /// The next stage.
    async fn next(&self, id: u64) -> Result<u64, Status>;
    /// The chain's value.
    async fn value(&self, id: u64) -> Result<String, Status>;
}

struct Impl;

impl JsonBench for Impl {
    async fn echo(&self, s: String) -> Result<String, Status> {
        Ok(s)
    }
    async fn stage(&self) -> Result<u64, Status> {
        Ok(1)
    }
    async fn next(&self, id: u64) -> Result<u64, Status> {
        Ok(id + 1)
    }
    async fn value(&self, _id: u64) -> Result<String, Status> {
        Ok(payload())
    }
}

/// Starts the server on 127.0.0.1 (WebSocket).
pub async fn server() -> anyhow::Result<(Endpoint, Server)> {
    let registry = Registry::new();
    registry
        .serve_interface(JsonBenchServer::new(Impl))?
        .forget();
    let listener =
        Listener::bind(&"ws://127.0.0.1:0/".parse()?, TransportConfig::default()).await?;
    let addr = match listener.local_addr() {
        capwire::transport::Address::Ws { authority, .. } => authority.parse()?,
        other => anyhow::bail!("unexpected address {other}"),
    };
    let server = Server::start(listener, registry, ServeConfig::default());
    Ok((Endpoint::Tcp(addr), server))
}

/// Runs `work` (TCP only, like jsonrpsee; no streams).
pub async fn run(work: Work, net: Net, opts: &Opts) -> anyhow::Result<Option<Sample>> {
    if net != Net::Tcp || matches!(work, Work::Stream(_)) {
        return Ok(None);
    }
    let (ep, server) = server().await?;
    let ep = work.endpoint(net, ep).await?;
    let client = super::jsonrpsee_peer::client(&ep).await?;
    let arg = payload();
    let sample = match work {
        Work::Unary | Work::UnaryDelayed => {
            measure::sequential(opts.budget, || async {
                let _: String = client
                    .request("bench/echo", rpc_params![arg.clone()])
                    .await?;
                Ok(())
            })
            .await?
        }
        Work::InFlight => {
            measure::in_flight(DEPTH, opts.budget, || async {
                let _: String = client
                    .request("bench/echo", rpc_params![arg.clone()])
                    .await?;
                Ok(())
            })
            .await?
        }
        Work::Chain | Work::ChainDelayed => {
            measure::sequential(opts.budget, || async {
                let a: u64 = client.request("bench/stage", rpc_params![]).await?;
                let b: u64 = client.request("bench/next", rpc_params![a]).await?;
                let _: String = client.request("bench/value", rpc_params![b]).await?;
                Ok(())
            })
            .await?
        }
        Work::Stream(_) => return Ok(None),
    };
    drop(client);
    server.shutdown().await;
    Ok(Some(sample))
}
