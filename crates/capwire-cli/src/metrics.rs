//! `--metrics`: capwire's metrics in Prometheus' text format, served at
//! `GET /metrics` on the server's WebSocket/HTTP port.

use std::time::Duration;

use capwire::transport::{Address, GetRoute, TransportConfig};
use metrics_exporter_prometheus::PrometheusBuilder;

use crate::Usage;

/// Latency buckets, in seconds: 100 µs to 10 s.
const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Where the endpoint answers.
pub(crate) const PATH: &str = "/metrics";

/// Installs the Prometheus recorder, turns capwire's metrics on, and adds
/// the endpoint to `config` (a `ws://`, `wss://`, `http://` or `https://`
/// listener's).
pub(crate) fn serve_on(
    listen: &Address,
    config: TransportConfig,
) -> anyhow::Result<TransportConfig> {
    if !matches!(listen, Address::Ws { .. } | Address::Http { .. }) {
        return Err(Usage(format!(
            "--metrics serves GET {PATH} on an HTTP port: listen on ws:// or http:// (not {listen})"
        ))
        .into());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets(&BUCKETS)?
        .install_recorder()?;
    capwire::metrics::enable();
    // Histograms keep their recent samples until upkeep drains them.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    let mut config = config;
    config
        .get_routes
        .push(GetRoute::metrics(PATH, move || handle.render()));
    Ok(config)
}
