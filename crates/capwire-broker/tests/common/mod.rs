//! What the broker's integration tests share: a daemon on a directory, and
//! an endpoint registered for this process.

// Each test binary uses what it needs of this.
#![allow(dead_code, unreachable_pub)]

use capwire_broker::daemon::{Daemon, DaemonConfig};
use capwire_broker::store::EndpointId;
use capwire_broker::{Client, Limits};

/// This process's id: what a test plugin registers with.
pub fn pid() -> u32 {
    std::process::id()
}

/// A daemon on `dir` with `limits`.
pub async fn start(dir: &std::path::Path, limits: Limits) -> Daemon {
    let mut config = DaemonConfig::new(dir);
    config.limits = limits;
    Daemon::start(config).await.expect("the daemon starts")
}

/// Registers an endpoint of kind `test` for this process.
pub async fn register(client: &Client) -> EndpointId {
    client
        .api()
        .register("test".into(), pid(), None, None, None, None, None)
        .await
        .expect("register")
        .endpoint_id
}
