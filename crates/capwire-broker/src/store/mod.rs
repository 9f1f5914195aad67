//! Durable state behind a small trait: endpoints, their queued messages and
//! the undispatched inbox.
//!
//! The broker keeps a copy of everything in memory and writes each change
//! through a [`Store`] before it tells anyone the change happened: a send is
//! acknowledged only once its message is committed. [`RedbStore`] is the
//! embedded implementation; the trait is the seam where a shared engine
//! (NATS JetStream) can come in for brokers on several hosts.

mod redb;

pub use self::redb::RedbStore;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::state::EndpointState;

/// An endpoint's id, issued by the broker.
pub type EndpointId = u64;
/// A message's position in its endpoint's queue (increasing, never reused).
pub type Seq = u64;

/// A message as it is stored and delivered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Envelope {
    /// The sending endpoint; `None` for an operator or a script.
    pub from: Option<EndpointId>,
    /// Issued by the broker for this message; a reply names it in `in_reply_to`.
    pub correlation_id: String,
    /// The correlation id of the message this one answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_reply_to: Option<String>,
    /// The payload, any JSON.
    pub content: serde_json::Value,
    /// What the payload is (`text` unless the sender said otherwise).
    pub content_type: String,
    /// The sender's metadata, with the broker's own fields added.
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// When the broker accepted it, in milliseconds since the Unix epoch.
    pub sent_at_ms: u64,
}

/// What the store keeps about an endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EndpointRecord {
    /// Its id.
    pub id: EndpointId,
    /// The plugin's runtime kind (`claude-code`, `python`, …).
    pub kind: String,
    /// A label for people.
    pub label: Option<String>,
    /// The workspace it works in.
    pub workspace: Option<String>,
    /// The plugin's process id; a reattach must present the same.
    pub pid: u32,
    /// An external reference (a ticket, a branch).
    pub tracking_ref: Option<String>,
    /// What it is doing now (bounded, see `Limits::max_task_hint_chars`).
    pub task_hint: Option<String>,
    /// The spawn token it registered with, if a spawn request started it.
    pub spawn_token: Option<String>,
    /// When it registered, in milliseconds since the Unix epoch.
    pub registered_at_ms: u64,
    /// Its state when last written (an endpoint found active after a
    /// restart is reconnecting: its connection is gone).
    pub state: EndpointState,
}

/// A message nobody could take, kept until an operator dispatches or drops it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct InboxEntry {
    /// Its id in the inbox.
    pub id: u64,
    /// Why it could not be routed (`unknown_endpoint`, `endpoint_closed`,
    /// `unknown_correlation`, `no_target`).
    pub reason: String,
    /// The endpoint it was meant for, when the sender named one.
    pub target_hint: Option<EndpointId>,
    /// The message.
    pub envelope: Envelope,
    /// When it arrived in the inbox, in milliseconds since the Unix epoch.
    pub arrived_at_ms: u64,
}

/// A queued message as loaded from the store.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    /// Its endpoint.
    pub endpoint: EndpointId,
    /// Its position.
    pub seq: Seq,
    /// The message.
    pub envelope: Envelope,
    /// How often it was handed to a receiver before (durably counted
    /// before each delivery).
    pub deliveries: u32,
    /// Its encoded size in bytes (what the per-endpoint byte bound counts).
    pub bytes: usize,
}

/// Who sent a message that an endpoint received, by its correlation id:
/// what reply routing needs (see [`crate::routing`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorrelationRecord {
    /// The broker-issued correlation id of the received message.
    pub correlation_id: String,
    /// The endpoint that sent it (where a reply goes).
    pub origin: EndpointId,
    /// When it can no longer be replied to, in milliseconds since the Unix
    /// epoch.
    pub expires_at_ms: u64,
}

/// Everything a store holds, read once when the broker starts.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The endpoints, by id.
    pub endpoints: Vec<EndpointRecord>,
    /// Queued messages, by endpoint then seq.
    pub messages: Vec<StoredMessage>,
    /// The undispatched inbox, by id.
    pub inbox: Vec<InboxEntry>,
    /// Reply correlations, by receiving endpoint (expired ones included:
    /// the broker drops them).
    pub correlations: Vec<(EndpointId, CorrelationRecord)>,
    /// The next endpoint id to issue (ids are never reused).
    pub next_endpoint_id: EndpointId,
    /// The next inbox id to issue.
    pub next_inbox_id: u64,
}

/// One change. A call to [`Store::commit`] applies its changes atomically.
#[derive(Debug, Clone)]
pub enum Write {
    /// Queue a message (`bytes` is the encoded [`Envelope`], see [`encode`]).
    Append {
        /// The endpoint.
        endpoint: EndpointId,
        /// Its position.
        seq: Seq,
        /// The encoded envelope.
        bytes: Vec<u8>,
    },
    /// Remove messages the endpoint acknowledged.
    Ack {
        /// The endpoint.
        endpoint: EndpointId,
        /// The positions.
        seqs: Vec<Seq>,
    },
    /// Count one more delivery of each message (before it is handed out).
    Delivered {
        /// The endpoint.
        endpoint: EndpointId,
        /// The positions.
        seqs: Vec<Seq>,
    },
    /// Create or update an endpoint.
    PutEndpoint(EndpointRecord),
    /// Forget an endpoint (its messages must be gone or moved first).
    RemoveEndpoint(EndpointId),
    /// Add an inbox entry.
    InboxAdd(InboxEntry),
    /// Remove an inbox entry.
    InboxRemove(u64),
    /// Remember correlations an endpoint received (with their origins).
    PutCorrelations {
        /// The receiving endpoint.
        receiver: EndpointId,
        /// What it received.
        records: Vec<CorrelationRecord>,
    },
    /// Forget some of an endpoint's correlations (evicted or expired).
    ForgetCorrelations {
        /// The receiving endpoint.
        receiver: EndpointId,
        /// Their ids.
        correlation_ids: Vec<String>,
    },
    /// Forget all of an endpoint's correlations (it closed).
    ForgetEndpointCorrelations(EndpointId),
}

/// Counters of a store's write path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct StoreStats {
    /// Durable transactions committed.
    pub commits: u64,
    /// `commit` calls they carried (several per transaction under load).
    pub batches: u64,
    /// Individual writes.
    pub writes: u64,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database failed.
    #[error("store: {0}")]
    Database(String),
    /// A record could not be encoded or decoded.
    #[error("store record: {0}")]
    Encoding(#[from] serde_json::Error),
    /// The store was closed.
    #[error("the store is closed")]
    Closed,
}

/// Durable storage for a broker.
///
/// Changes are ordered by the *call* of [`commit`](Store::commit), not by
/// when its future is awaited: a caller that assigns a sequence number
/// under a lock and calls `commit` under the same lock gets its writes in
/// sequence order. The future resolves once the changes are durable (with
/// [`RedbStore`]: fsync'd).
pub trait Store: Send + Sync + 'static {
    /// Reads everything (once, at start).
    fn load(&self) -> Result<Snapshot, StoreError>;

    /// Applies `writes` atomically and durably.
    fn commit(&self, writes: Vec<Write>) -> BoxFuture<'static, Result<(), StoreError>>;

    /// Write-path counters.
    fn stats(&self) -> StoreStats;

    /// Finishes the writes already submitted, then closes; later commits
    /// fail with [`StoreError::Closed`].
    fn close(&self) -> BoxFuture<'static, Result<(), StoreError>>;
}

/// Encodes an envelope as a queue stores it.
pub fn encode(envelope: &Envelope) -> Result<Vec<u8>, StoreError> {
    Ok(serde_json::to_vec(envelope)?)
}
