//! The attach contract. A client attaches (`_relay/attach`) with the last
//! sequence number it saw of a session and receives, in this order:
//!
//! 1. the [`Welcome`]: the session's ring epoch and head, whether it was
//!    reset, whether a turn is running, the open permission requests and the
//!    lease;
//! 2. the gap: every frame after its sequence number (or, after a reset,
//!    every frame the ring still holds), each stamped with `_seq`;
//! 3. the agent's still-open requests this client must answer;
//! 4. live frames.
//!
//! Nothing is sent twice and nothing is skipped: a gap the ring no longer
//! holds is a reset, never a silent jump.

use serde::{Deserialize, Serialize};

use crate::lease::LeaseState;

/// The parameters of `_relay/attach` (all optional).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Attach {
    /// A stable name for this device, kept across reconnects (the lease
    /// holder is a client id). The relay makes one up when absent.
    pub(crate) client_id: Option<String>,
    /// The session to view; by default the one this client viewed last,
    /// else the most recently active one.
    pub(crate) session_id: Option<String>,
    /// The last `_seq` received from that session; 0 or absent for none.
    pub(crate) last_seq: Option<u64>,
    /// The ring epoch that `last_seq` belongs to.
    pub(crate) epoch: Option<String>,
}

/// What a client is told when it attaches or its view changes: the result
/// of `_relay/attach`, and the `_relay/welcome` notification sent before a
/// `session/new` or `session/load` response switches its view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Welcome {
    /// The client id the relay knows this connection by.
    pub client_id: String,
    /// The session viewed (`null` when there is none yet).
    pub session_id: Option<String>,
    /// The epoch of that session's ring: sequence numbers are comparable
    /// only within one epoch.
    pub epoch: Option<String>,
    /// The last sequence number of the ring.
    pub head_seq: u64,
    /// The oldest sequence number the ring still holds.
    pub first_seq: u64,
    /// True when the frames after the client's `lastSeq` are no longer all
    /// held (or `lastSeq` is from another epoch): drop what is shown and
    /// rebuild from what follows (or `session/load` for the whole history).
    pub reset: bool,
    /// Whether a prompt turn is running in the session.
    pub busy: bool,
    /// The `toolCallId`s of the session's open permission requests.
    pub pending_permission_ids: Vec<serde_json::Value>,
    /// The controller lease.
    pub lease: LeaseState,
    /// The agent process.
    pub agent: AgentState,
}

/// Whether the agent runs, as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentState {
    /// True while the agent process runs.
    pub running: bool,
    /// How many times it was started (restarts are `starts - 1`).
    pub starts: u64,
}
