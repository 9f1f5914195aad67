//! The peer libraries, each with the smallest equivalent service: tarpc,
//! tonic, jsonrpsee and capnp-rpc; and capwire's JSON-RPC dialect under
//! jsonrpsee's client. (capnp-rpc's `!Send` objects cannot be
//! held by the idle measurement's `Send` handles; it is left out there.)

mod capnp_peer;
mod capwire_jsonrpc;
mod jsonrpsee_peer;
mod tarpc_peer;
mod tonic_peer;

use crate::measure::Sample;
use crate::net::{Endpoint, Net};
use crate::work::{Opts, Work};

/// The peers this build includes.
pub const PEERS: &[&str] = &[
    "tarpc",
    "tonic",
    "jsonrpsee",
    "capwire-jsonrpc",
    "capnp-rpc",
];

/// Runs `work` on `peer`.
pub async fn run(peer: &str, work: Work, net: Net, opts: &Opts) -> anyhow::Result<Option<Sample>> {
    match peer {
        "tarpc" => tarpc_peer::run(work, net, opts).await,
        "jsonrpsee" => jsonrpsee_peer::run(work, net, opts).await,
        "tonic" => tonic_peer::run(work, net, opts).await,
        "capnp-rpc" => capnp_peer::run(work, net, opts).await,
        "capwire-jsonrpc" => capwire_jsonrpc::run(work, net, opts).await,
        other => anyhow::bail!("unknown peer {other}"),
    }
}

/// Starts `peer`'s server for the idle measurement (Unix socket where the
/// peer has one, else TCP).
pub async fn idle_server(peer: &str) -> anyhow::Result<Endpoint> {
    match peer {
        "tarpc" => tarpc_peer::server(Net::Unix).await,
        "tonic" => tonic_peer::server(Net::Unix).await,
        "jsonrpsee" => {
            let (ep, handle) = jsonrpsee_peer::server().await?;
            // Served until the process ends.
            std::mem::forget(handle);
            Ok(ep)
        }
        other => anyhow::bail!("unknown peer {other}"),
    }
}

/// One idle connection to `peer`, after one round trip.
pub async fn idle_client(
    peer: &str,
    ep: &Endpoint,
) -> anyhow::Result<Box<dyn std::any::Any + Send>> {
    use jsonrpsee::core::client::ClientT;
    Ok(match peer {
        "tarpc" => {
            let c = tarpc_peer::client(ep).await?;
            c.echo(tarpc::context::current(), "x".into()).await?;
            Box::new(c)
        }
        "tonic" => {
            let mut c = tonic_peer::client(ep).await?;
            c.echo(tonic_peer::pb::Msg { s: "x".into() }).await?;
            Box::new(c)
        }
        "jsonrpsee" => {
            let c = jsonrpsee_peer::client(ep).await?;
            let _: String = c.request("echo", jsonrpsee::rpc_params!["x"]).await?;
            Box::new(c)
        }
        other => anyhow::bail!("unknown peer {other}"),
    })
}

/// jsonrpsee's server (for the JSON-RPC server comparison).
pub async fn jsonrpsee_server() -> anyhow::Result<(Endpoint, jsonrpsee::server::ServerHandle)> {
    jsonrpsee_peer::server().await
}

/// capwire's JSON-RPC server (for the JSON-RPC server comparison).
pub async fn capwire_jsonrpc_server() -> anyhow::Result<(Endpoint, capwire::dialect::Server)> {
    capwire_jsonrpc::server().await
}

/// jsonrpsee's WebSocket client.
pub async fn jsonrpsee_client(ep: &Endpoint) -> anyhow::Result<jsonrpsee::ws_client::WsClient> {
    jsonrpsee_peer::client(ep).await
}
