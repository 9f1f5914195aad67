//! The demo service as JSON-RPC clients see it on `capwire demo serve`'s
//! port: `demo/square`, `demo/add`, … (the contract the JSON-RPC interop
//! tests rely on). Each connection gets its own instance: it remembers the
//! connection's notifications and calls the connection's client back.

use std::sync::Mutex;
use std::time::Duration;

use capwire::dialect::jsonrpc::{JsonRpcConfig, JsonRpcPeer};
use capwire::typed::ItemsOf;
use capwire::{Code, Registry, Status};
use futures_util::StreamExt;

/// One tick of `demo/ticks`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub(crate) struct Tick {
    /// Its position, from 0.
    pub(crate) seq: u64,
}

/// The demo's JSON-RPC face.
#[capwire::interface(name = "demo", version = "1.0")]
pub(crate) trait DemoRpc {
    /// `n * n`, for any JSON number (an integer stays one unless it overflows).
    async fn square(&self, n: serde_json::Number) -> Result<serde_json::Number, Status>;
    /// `a + b`.
    async fn add(&self, a: i64, b: i64) -> Result<i64, Status>;
    /// Returns `value` unchanged.
    async fn echo(&self, value: serde_json::Value) -> Result<serde_json::Value, Status>;
    /// Always fails: `bad thing`, `data.code` `E_BAD`.
    async fn fail(&self) -> Result<(), Status>;
    /// `"slept"`, after `ms` milliseconds.
    async fn sleep(&self, ms: u64) -> Result<String, Status>;
    /// `n` notifications `demo/tick` `{"seq": i}`; the response is `n`.
    #[capwire(stream, item = "tick")]
    async fn ticks(&self, n: u64) -> Result<ItemsOf<Tick>, Status>;
    /// Asks the client for `client/double` `{"x": x}` and returns its result + 1.
    async fn call_me_back(&self, x: i64) -> Result<i64, Status>;
    /// Remembers `tag` (a notification).
    #[capwire(notification)]
    async fn notify(&self, tag: String) -> Result<(), Status>;
    /// The tags notified on this connection, in order.
    async fn notified(&self) -> Result<Vec<String>, Status>;
    /// What the server knows of the caller: the identity a token or a TLS
    /// client certificate proved, and whether the connection is TLS.
    async fn whoami(&self) -> Result<Caller, Status>;
}

/// The answer of `demo/whoami`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub(crate) struct Caller {
    /// The proved identity, if any.
    pub(crate) identity: Option<String>,
    /// Whether the connection runs over TLS.
    pub(crate) tls: bool,
}

/// What the demo calls on its JSON-RPC clients (they implement it; the
/// server only calls it).
#[capwire::interface(name = "client", version = "1.0")]
#[allow(dead_code)]
pub(crate) trait DemoClientRole {
    /// `2 * x`, computed by the client.
    async fn double(&self, x: i64) -> Result<i64, Status>;
}

struct Connection {
    peer: DemoClientRoleClient,
    tags: Mutex<Vec<String>>,
}

impl DemoRpc for Connection {
    async fn square(&self, n: serde_json::Number) -> Result<serde_json::Number, Status> {
        if let Some(sq) = n.as_i64().and_then(|i| i.checked_mul(i)) {
            return Ok(sq.into());
        }
        let f = n.as_f64().unwrap_or(f64::NAN);
        serde_json::Number::from_f64(f * f).ok_or_else(|| {
            Status::new(
                Code::InvalidArgument,
                format!("{n} squared is not a finite number"),
            )
        })
    }
    async fn add(&self, a: i64, b: i64) -> Result<i64, Status> {
        a.checked_add(b)
            .ok_or_else(|| Status::new(Code::InvalidArgument, "a + b overflows a 64-bit integer"))
    }
    async fn echo(&self, value: serde_json::Value) -> Result<serde_json::Value, Status> {
        Ok(value)
    }
    async fn fail(&self) -> Result<(), Status> {
        Err(Status::new(Code::InvalidArgument, "bad thing")
            .with_details(serde_json::json!({ "name": "RangeError", "code": "E_BAD" })))
    }
    async fn sleep(&self, ms: u64) -> Result<String, Status> {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok("slept".to_owned())
    }
    async fn ticks(&self, n: u64) -> Result<ItemsOf<Tick>, Status> {
        Ok(futures_util::stream::iter((0..n).map(|seq| Ok(Tick { seq }))).boxed())
    }
    async fn call_me_back(&self, x: i64) -> Result<i64, Status> {
        let r = self.peer.double(x).await?;
        r.checked_add(1)
            .ok_or_else(|| Status::new(Code::InvalidArgument, "the result overflows"))
    }
    async fn notify(&self, tag: String) -> Result<(), Status> {
        self.tags
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tag);
        Ok(())
    }
    async fn notified(&self) -> Result<Vec<String>, Status> {
        Ok(self.tags.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }
    async fn whoami(&self) -> Result<Caller, Status> {
        let ctx = capwire::typed::context()
            .ok_or_else(|| Status::new(Code::Internal, "no call context"))?;
        let att = ctx.attestation();
        Ok(Caller {
            identity: att.identity.clone(),
            tls: att.tls,
        })
    }
}

/// The registry a JSON-RPC connection gets: the demo, bound to its peer.
fn for_connection(peer: &JsonRpcPeer) -> Registry {
    let registry = Registry::new();
    let demo = DemoRpcServer::new(Connection {
        peer: peer.client("client"),
        tags: Mutex::new(Vec::new()),
    });
    match registry.serve_interface(demo) {
        // Served for as long as the connection's registry lives.
        Ok(handle) => handle.forget(),
        Err(status) => tracing::error!(%status, "the JSON-RPC demo could not be served"),
    }
    registry
}

/// The JSON-RPC side of `capwire demo serve`.
pub(crate) fn config() -> JsonRpcConfig {
    JsonRpcConfig::new().per_connection(for_connection)
}
