//! `capwire call --dialect jsonrpc`: one JSON-RPC request to any JSON-RPC
//! server (capwire's or another), printing the result as JSON.

use std::time::Duration;

use capwire::dialect::jsonrpc::{JsonRpcConfig, JsonRpcSession};
use capwire::transport::{self, TransportConfig};
use capwire::Registry;

use crate::phases::Phases;

/// Sends `name/method` with `args` (an array: params by position; an
/// object: by name) and prints the result. Errors come back as the status
/// the error object maps to.
pub(crate) async fn call(
    address: &str,
    name: &str,
    method: &str,
    args: serde_json::Value,
    timeout_ms: u64,
    mut config: TransportConfig,
) -> anyhow::Result<()> {
    let phases = Phases::new(Duration::from_millis(timeout_ms), address);
    config.bearer = crate::call::bearer_token();
    let addr = address.parse()?;
    let t = phases
        .run("connecting to", transport::connect(&addr, &config))
        .await??;
    let session = JsonRpcSession::connect(t, Registry::new(), JsonRpcConfig::new());
    let params = match args {
        serde_json::Value::Array(a) if a.is_empty() => None,
        other => Some(other),
    };
    let full = format!("{name}/{method}");
    let result = phases
        .run(
            "waiting for the call at",
            session
                .peer()
                .request(&full, params, Some(phases.call_deadline())),
        )
        .await?;
    session.close().await;
    let value = result?;
    outln!("{}", serde_json::to_string_pretty(&value)?);
    Ok(())
}
