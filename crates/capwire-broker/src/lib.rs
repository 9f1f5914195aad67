//! The capwire broker: a local daemon where plugins register endpoints and
//! exchange messages through durable per-endpoint queues.
//!
//! - **Endpoints** ([`state`]): active → reconnecting (its connection closed
//!   while its process lives; a grace timer runs) → closed (grace expired,
//!   unregister, process gone). Every transition is a [`BrokerEvent`].
//! - **Durable queues** ([`store`]): a message is committed to the store
//!   (redb, group commit, fsync'd) before its send is acknowledged, and
//!   leaves it only when the receiving plugin acknowledges it; deliveries
//!   are counted durably, so a redelivery says so.
//! - **Routing** ([`routing`]): by target endpoint id, or as a reply by a
//!   correlation id the broker issued; what cannot be routed waits in a
//!   bounded, durable undispatched inbox for an operator.
//! - **Faces** ([`service`]): `capwire.broker` for plugins and
//!   `capwire.broker.admin` for operators, served to native capwire,
//!   capnweb and JSON-RPC peers on a Unix socket and a loopback
//!   WebSocket/HTTP port ([`daemon`]), behind one bearer token written to a
//!   0600 discovery file ([`discovery`]); read-only admin `GET`s on a
//!   loopback port of their own.
//! - **Liveness** ([`broker::Connection`]): an endpoint is held by the
//!   connection that registered it and by its `receive` stream; without
//!   either, by heartbeats.
//! - **Upstream** ([`upstream`]): presence, queued state reports and
//!   acknowledged control commands towards a network, behind a trait.
//!
//! ```
//! use capwire_broker::daemon::{Daemon, DaemonConfig};
//! use capwire_broker::Client;
//! use futures_util::StreamExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let daemon = Daemon::start(DaemonConfig::new(dir.path())).await?;
//! let found = daemon.discovery().clone();
//!
//! // Two plugins: one on the Unix socket, one on the WebSocket.
//! let alice = Client::connect(&found.unix, &found.token).await?;
//! let bob = Client::connect(&found.ws, &found.token).await?;
//! let pid = std::process::id();
//! let a = alice.api().register("rust".into(), pid, None, None, None, None, None).await?;
//! let b = bob.api().register("rust".into(), pid, None, None, None, None, None).await?;
//!
//! // The send is acknowledged once the message is on disk.
//! let hello = serde_json::json!("hello");
//! let sent = alice.api().send(a.endpoint_id, Some(b.endpoint_id), None, hello, None, None).await?;
//!
//! // Bob receives it on a credit-controlled stream and acknowledges it.
//! let mut inbox = bob.api().receive(b.endpoint_id, None);
//! let message = inbox.next().await.unwrap()?;
//! assert_eq!(message.envelope.content, "hello");
//! assert_eq!(message.envelope.correlation_id, sent.correlation_id);
//! bob.api().ack(b.endpoint_id, vec![message.seq]).await?;
//!
//! // A reply needs no address: the broker knows where the message came from.
//! let reply = serde_json::json!("hi");
//! let corr = Some(message.envelope.correlation_id.clone());
//! bob.api().send(b.endpoint_id, None, corr, reply, None, None).await?;
//! let mut replies = alice.api().receive(a.endpoint_id, None);
//! assert_eq!(replies.next().await.unwrap()?.envelope.content, "hi");
//!
//! daemon.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod admin_http;
pub mod broker;
pub mod client;
mod connections;
pub mod daemon;
pub mod discovery;
pub mod events;
pub mod routing;
pub mod service;
pub mod spawn;
pub mod state;
pub mod store;
pub mod upstream;

mod queue;

pub use broker::{Broker, Limits};
pub use client::Client;
pub use events::BrokerEvent;
pub use service::{BrokerAdminClient, BrokerApiClient, Service};
pub use state::{EndpointEvent, EndpointState};
