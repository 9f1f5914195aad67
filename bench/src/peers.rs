//! The peer libraries (tarpc, tonic, jsonrpsee, capnp-rpc), each with the
//! smallest equivalent service.

use crate::measure::Sample;
use crate::net::{Endpoint, Net};
use crate::work::{Opts, Work};

/// The peers this build includes.
pub const PEERS: &[&str] = &[];

/// Runs `work` on `peer`.
pub async fn run(peer: &str, work: Work, net: Net, opts: &Opts) -> anyhow::Result<Option<Sample>> {
    let _ = (work, net, opts);
    anyhow::bail!("unknown peer {peer}")
}

/// Starts `peer`'s server on a Unix socket, for the idle measurement.
pub async fn idle_server(peer: &str) -> anyhow::Result<Endpoint> {
    anyhow::bail!("unknown peer {peer}")
}

/// One idle connection to `peer`.
pub async fn idle_client(
    peer: &str,
    ep: &Endpoint,
) -> anyhow::Result<Box<dyn std::any::Any + Send>> {
    let _ = ep;
    anyhow::bail!("unknown peer {peer}")
}
