//! What subscribers of [`Broker::subscribe`](crate::Broker::subscribe) see.

use serde::{Deserialize, Serialize};

use crate::state::EndpointState;
use crate::store::EndpointId;

/// Something that changed in the broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BrokerEvent {
    /// An endpoint moved from one state to another (`from` is absent for a
    /// new registration).
    EndpointState {
        /// The endpoint.
        endpoint_id: EndpointId,
        /// The state it left.
        from: Option<EndpointState>,
        /// The state it entered.
        to: EndpointState,
        /// What caused it (`register`, `connection closed`, `reattach`, …).
        cause: String,
    },
    /// The undispatched inbox changed.
    Inbox {
        /// What happened.
        action: InboxAction,
        /// The entry.
        inbox_id: u64,
        /// Why it was added.
        reason: Option<String>,
        /// The endpoint it was meant for, or dispatched to.
        endpoint_id: Option<EndpointId>,
    },
    /// The broker's network presence changed (see [`crate::upstream`]).
    Presence {
        /// The new presence.
        presence: crate::upstream::Presence,
        /// Why (`link up`, `grace expired`).
        reason: String,
    },
    /// A spawn request moved on.
    Spawn {
        /// The request's token.
        spawn_token: String,
        /// The runtime kind asked for.
        runtime_kind: String,
        /// What happened.
        outcome: SpawnOutcome,
    },
}

/// An inbox change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum InboxAction {
    /// A message arrived.
    Added,
    /// An operator dispatched it to an endpoint.
    Dispatched,
    /// An operator dropped it.
    Dropped,
}

/// Where a spawn request is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum SpawnOutcome {
    /// The driver started a process.
    Started {
        /// Its pid.
        pid: u32,
    },
    /// A plugin registered with the token.
    Completed {
        /// Its endpoint.
        endpoint_id: EndpointId,
    },
    /// No plugin registered in time.
    TimedOut,
}
