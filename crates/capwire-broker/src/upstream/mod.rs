//! The upstream connector: the broker's side of a network that sees it
//! (the reference broker's connector and API). The network is a trait,
//! [`Upstream`], so that a real one (a WebSocket to a service, NATS) can
//! come later; [`InProcessUpstream`] stands in for it in tests.
//!
//! - **Presence** ([`presence`]): `online` when the link comes up, `offline`
//!   only once it has been down for a grace period; a blip is no change.
//! - **State reports**: every endpoint transition becomes a
//!   [`StateReport`]. While the link is down they wait in a bounded
//!   outbox and go, in order, when it comes back; when the outbox is full
//!   the oldest message is dropped, counted and logged.
//! - **Control**: the network may dispatch an inbox entry, request a
//!   spawn or force an unregister; each command is acknowledged
//!   ([`ControlAck`]) once it is applied or has failed (a spawn: `received`
//!   at once, `applied` when its plugin registers, `failed` on timeout). A
//!   command repeated with the same idempotency key is acknowledged again
//!   and not applied twice.
//!
//! [`Connector`] drives all of it on a tokio task.

mod connector;
mod in_process;
mod outbox;
pub mod presence;

pub use connector::{Connector, ConnectorConfig, ConnectorStats};
pub use in_process::{InProcessNetwork, InProcessUpstream};
pub use outbox::Dropped;
pub use presence::Presence;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::state::EndpointState;
use crate::store::EndpointId;

/// An endpoint's transition, as reported upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StateReport {
    /// The endpoint.
    pub endpoint_id: EndpointId,
    /// The state it entered.
    pub state: EndpointState,
    /// Why (`register`, `connection closed`, `grace expired`, …).
    pub cause: String,
    /// When the connector saw it, in milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// A presence change, as reported upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PresenceReport {
    /// The new presence.
    pub presence: Presence,
    /// Why (`link up`, `grace expired`).
    pub reason: String,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// How a control command ended (so far).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AckStatus {
    /// Accepted; the outcome follows in a later ack (a spawn).
    Received,
    /// Done.
    Applied,
    /// Not done; `detail` says why.
    Failed,
}

/// The acknowledgement of a control command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ControlAck {
    /// The command's key.
    pub idempotency_key: String,
    /// How it ended.
    pub status: AckStatus,
    /// Why it failed (a reason such as `unknown_inbox_entry`, and a message).
    pub detail: Option<String>,
}

/// What goes upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Outbound {
    /// An endpoint's transition.
    State(StateReport),
    /// The acknowledgement of a control command.
    ControlAck(ControlAck),
    /// A presence change.
    Presence(PresenceReport),
}

/// What the network asks the broker to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlCommand {
    /// Move an undispatched inbox entry to an endpoint.
    DispatchUndispatched {
        /// The inbox entry.
        inbox_id: u64,
        /// The endpoint.
        endpoint_id: EndpointId,
    },
    /// Start a plugin of a runtime kind.
    SpawnRequest {
        /// The runtime kind (a registered spawn driver's).
        runtime_kind: String,
        /// What the plugin should do.
        prompt: Option<String>,
    },
    /// Close an endpoint (an endpoint already gone counts as done).
    ForceUnregister {
        /// The endpoint.
        endpoint_id: EndpointId,
        /// Why, for the log.
        reason: Option<String>,
    },
}

/// A control command with its idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Control {
    /// Names the command; a repeat with the same key is not applied again.
    pub idempotency_key: String,
    /// The command.
    pub command: ControlCommand,
}

/// What comes from upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// The link came up.
    LinkUp,
    /// The link went down.
    LinkDown,
    /// A control command.
    Control(Control),
}

/// Why a message did not go upstream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// The link is down; the message stays queued until it comes back.
    #[error("the upstream link is down")]
    LinkDown,
    /// Anything else; the message stays queued too.
    #[error("upstream: {0}")]
    Other(String),
}

/// The network side of the broker.
pub trait Upstream: Send + Sync + 'static {
    /// Sends one message. An error means it did not go: it stays at the
    /// head of the outbox, and the connector treats the link as down until
    /// the next [`Inbound::LinkUp`].
    fn deliver(&self, message: &Outbound) -> BoxFuture<'static, Result<(), UpstreamError>>;

    /// What the network says: the link going up or down, and control
    /// commands. The connector takes it once; when it ends, the link is
    /// down for good.
    fn inbound(&self) -> BoxStream<'static, Inbound>;
}
