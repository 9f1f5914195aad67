//! The broker itself: endpoints, their queues, routing and the inbox, with
//! every change written through the [`Store`] before it is acknowledged.
//!
//! One lock guards the in-memory state; it is never held across an
//! `.await`. Writes are handed to the store *under* the lock (so a queue's
//! seqs reach the store in order) and awaited after it is released, which is
//! what lets concurrent sends share one durable commit.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use capwire::{Code, Reason, Status};
use futures_util::stream::BoxStream;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, Notify};
use tokio::task::JoinHandle;

use crate::events::{BrokerEvent, InboxAction};
use crate::queue::{Queue, Queued};
use crate::routing::{CorrelationCache, Unroutable};
use crate::spawn::Spawner;
use crate::state::{transition, Effect, EndpointEvent, EndpointState, Transition};
use crate::store::{
    encode, EndpointId, EndpointRecord, Envelope, InboxEntry, Seq, Store, StoreStats, Write,
};

/// The broker's bounds and timers. Every field has a default suited to one
/// user's machine; change one when a plugin needs more room.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Limits {
    /// Messages queued for one endpoint at most. Default 10 000.
    pub max_queue_messages: usize,
    /// Bytes queued for one endpoint at most (encoded). Default 64 MiB.
    pub max_queue_bytes: usize,
    /// One message's encoded size at most. Default 1 MiB.
    pub max_message_bytes: usize,
    /// Undispatched messages kept at most (sends past it are refused with
    /// `resource_exhausted`/`inbox_full`). Default 10 000.
    pub max_inbox: usize,
    /// How long a reconnecting endpoint waits for its plugin. Default 30 s.
    pub grace: Duration,
    /// How long a received correlation id can be replied to. Default 10 min.
    pub correlation_ttl: Duration,
    /// Correlation ids remembered per endpoint. Default 4096.
    pub correlation_capacity: usize,
    /// A task hint's length at most, in characters (longer ones are cut,
    /// and the caller told). Default 256.
    pub max_task_hint_chars: usize,
    /// Unacknowledged deliveries per receiver when the plugin does not say.
    /// Default 64.
    pub default_window: u32,
    /// The largest window a receiver may ask for. Default 4096.
    pub max_window: u32,
    /// How often registered pids are checked and expired correlations
    /// swept. Default 2 s.
    pub sweep_interval: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_queue_messages: 10_000,
            max_queue_bytes: 64 << 20,
            max_message_bytes: 1 << 20,
            max_inbox: 10_000,
            grace: Duration::from_secs(30),
            correlation_ttl: Duration::from_secs(600),
            correlation_capacity: 4096,
            max_task_hint_chars: 256,
            default_window: 64,
            max_window: 4096,
            sweep_interval: Duration::from_secs(2),
        }
    }
}

/// What a plugin registers.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Registration {
    /// The plugin's runtime kind (`claude-code`, `python`, …); required.
    pub kind: String,
    /// The plugin's process id: a reattach must present the same, and the
    /// endpoint closes when the process is gone.
    pub pid: u32,
    /// A label for people.
    #[serde(default)]
    pub label: Option<String>,
    /// The workspace it works in.
    #[serde(default)]
    pub workspace: Option<String>,
    /// An external reference (a ticket, a branch).
    #[serde(default)]
    pub tracking_ref: Option<String>,
    /// What it is doing (cut to `max_task_hint_chars`).
    #[serde(default)]
    pub task_hint: Option<String>,
    /// The token of the spawn request that started this plugin.
    #[serde(default)]
    pub spawn_token: Option<String>,
}

/// The answer to a registration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Registered {
    /// The endpoint's id: name it in every later call.
    pub endpoint_id: EndpointId,
    /// The task hint as kept.
    pub task_hint: Option<String>,
    /// True if the task hint was cut.
    pub task_hint_truncated: bool,
    /// True if the spawn token completed a pending spawn request.
    pub spawn_completed: bool,
}

/// What a plugin sends.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Outgoing {
    /// The target endpoint (or leave it out and set `in_reply_to`).
    #[serde(default)]
    pub to: Option<EndpointId>,
    /// Reply to the message that carried this correlation id: the reply
    /// goes to that message's sender.
    #[serde(default)]
    pub in_reply_to: Option<String>,
    /// The payload, any JSON.
    pub content: serde_json::Value,
    /// What the payload is; `text` when absent.
    #[serde(default)]
    pub content_type: Option<String>,
    /// Free-form metadata. `correlation_id` and `target_endpoint_id` are
    /// the broker's and refused here; `source_endpoint_id`, if present,
    /// must be the sender's own id.
    #[serde(default)]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Where a sent message went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "routed", rename_all = "snake_case")]
pub enum Routed {
    /// Queued for an endpoint.
    Endpoint {
        /// The endpoint.
        endpoint_id: EndpointId,
        /// Its position in that endpoint's queue.
        seq: Seq,
    },
    /// Parked in the undispatched inbox.
    Inbox {
        /// The inbox entry.
        inbox_id: u64,
        /// Why.
        reason: String,
    },
}

/// The acknowledgement of a send: the message is durable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Sent {
    /// Issued by the broker; replies name it in `in_reply_to`.
    pub correlation_id: String,
    /// Where it went.
    #[serde(flatten)]
    pub routed: Routed,
}

/// One delivered message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Delivery {
    /// Acknowledge it by this.
    pub seq: Seq,
    /// The message.
    #[serde(flatten)]
    pub envelope: Envelope,
    /// True if it may have been delivered before (and not acknowledged).
    pub redelivered: bool,
    /// How often it has been handed out, this time included.
    pub delivery_count: u32,
}

/// The outcome of an ack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Acked {
    /// Messages removed.
    pub acked: u64,
    /// Seqs that were not out on this endpoint's receiver (unknown, already
    /// acknowledged, or not delivered yet): nothing happened to them.
    pub ignored: Vec<Seq>,
}

/// The outcome of a reattach.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Reattached {
    /// Messages waiting (held while reconnecting, or unacknowledged).
    pub held: u64,
}

/// A task hint as kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TaskHint {
    /// The hint.
    pub task_hint: String,
    /// True if it was cut to the limit.
    pub truncated: bool,
    /// The limit, in characters.
    pub max_chars: u64,
}

/// An endpoint as operators see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EndpointStatus {
    /// What it registered.
    #[serde(flatten)]
    pub record: EndpointRecord,
    /// Messages queued (delivered-but-unacked included).
    pub queued: u64,
    /// Their bytes.
    pub queued_bytes: u64,
    /// Delivered and not acknowledged yet.
    pub in_flight: u64,
    /// A connection is receiving its messages.
    pub receiver_attached: bool,
}

/// The broker at a glance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct BrokerStatus {
    /// Endpoints active now.
    pub active: u64,
    /// Endpoints reconnecting now.
    pub reconnecting: u64,
    /// Messages queued, all endpoints.
    pub queued: u64,
    /// Messages in the undispatched inbox.
    pub inbox: u64,
    /// The store's write path.
    pub store: StoreStatsView,
    /// Seconds since start.
    pub uptime_s: u64,
}

/// [`StoreStats`], as reported.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StoreStatsView {
    /// Durable transactions.
    pub commits: u64,
    /// Commit calls they carried.
    pub batches: u64,
}

impl From<StoreStats> for StoreStatsView {
    fn from(s: StoreStats) -> StoreStatsView {
        StoreStatsView {
            commits: s.commits,
            batches: s.batches,
        }
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// True if a process with this pid exists (Linux: `/proc/PID`; elsewhere
/// the broker cannot tell without `unsafe` and assumes it does).
pub fn pid_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        std::path::Path::new("/proc").join(pid.to_string()).exists()
    } else {
        true
    }
}

fn status(code: Code, reason: &'static str, message: impl Into<String>) -> Status {
    Status::new(code, message).with_reason(Reason::new_static(reason))
}

fn store_failed(e: impl std::fmt::Display) -> Status {
    status(
        Code::Unavailable,
        "store_failed",
        format!("the broker could not store the change: {e}"),
    )
}

struct Endpoint {
    record: EndpointRecord,
    state: EndpointState,
    queue: Queue,
    /// The generation of the attached receiver, if one is attached.
    receiver: Option<u64>,
    wake: Arc<Notify>,
    grace: Option<JoinHandle<()>>,
}

struct State {
    endpoints: HashMap<EndpointId, Endpoint>,
    /// Closed endpoints, oldest first (forgotten past a bound).
    closed: VecDeque<EndpointId>,
    inbox: BTreeMap<u64, InboxEntry>,
    correlations: CorrelationCache,
    next_endpoint_id: EndpointId,
    next_inbox_id: u64,
    next_receiver: u64,
}

/// Closed endpoints remembered (so a send to one says `endpoint_closed`).
const CLOSED_REMEMBERED: usize = 1024;

pub(crate) struct Inner {
    state: Mutex<State>,
    store: Arc<dyn Store>,
    limits: Limits,
    events: broadcast::Sender<BrokerEvent>,
    /// Correlation ids: a random prefix for this run, then a counter.
    correlation_prefix: u64,
    next_correlation: AtomicU64,
    closing: AtomicBool,
    started: Instant,
    pub(crate) spawner: Spawner,
}

/// The broker: cheap to clone, all clones the same broker.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").finish_non_exhaustive()
    }
}

impl Broker {
    /// Starts a broker on `store`, recovering what it holds: endpoints come
    /// back reconnecting (their connections are gone) with a fresh grace
    /// period, or closed if their process is gone; queued messages and the
    /// inbox come back as they were committed. Needs a tokio runtime.
    pub fn open(store: Arc<dyn Store>, limits: Limits) -> Result<Broker, Status> {
        let snapshot = store.load().map_err(store_failed)?;
        let mut random = [0u8; 8];
        getrandom::getrandom(&mut random)
            .map_err(|e| Status::new(Code::Internal, format!("no randomness: {e}")))?;
        let (events, _) = broadcast::channel(4096);
        let mut state = State {
            endpoints: HashMap::new(),
            closed: VecDeque::new(),
            inbox: snapshot.inbox.into_iter().map(|e| (e.id, e)).collect(),
            correlations: CorrelationCache::new(
                limits.correlation_ttl,
                limits.correlation_capacity,
            ),
            next_endpoint_id: snapshot.next_endpoint_id.max(1),
            next_inbox_id: snapshot.next_inbox_id.max(1),
            next_receiver: 1,
        };
        for record in snapshot.endpoints {
            state.endpoints.insert(
                record.id,
                Endpoint {
                    state: EndpointState::Reconnecting,
                    record,
                    queue: Queue::default(),
                    receiver: None,
                    wake: Arc::new(Notify::new()),
                    grace: None,
                },
            );
        }
        let mut orphans = Vec::new();
        for m in snapshot.messages {
            let item = Queued {
                seq: m.seq,
                envelope: Arc::new(m.envelope),
                bytes: m.bytes,
                committed: true,
                deliveries: m.deliveries,
                in_flight: false,
            };
            match state.endpoints.get_mut(&m.endpoint) {
                Some(e) => e.queue.push(item),
                None => orphans.push((m.endpoint, item)),
            }
        }
        let broker = Broker {
            inner: Arc::new(Inner {
                state: Mutex::new(state),
                store,
                limits,
                events,
                correlation_prefix: u64::from_le_bytes(random),
                next_correlation: AtomicU64::new(1),
                closing: AtomicBool::new(false),
                started: Instant::now(),
                spawner: Spawner::default(),
            }),
        };
        // Messages whose endpoint record is gone cannot be delivered:
        // the inbox takes them.
        if !orphans.is_empty() {
            tracing::warn!(count = orphans.len(), "queued messages without an endpoint");
            let mut state = broker.lock();
            let mut writes = Vec::new();
            for (endpoint, item) in orphans {
                writes.push(Write::Ack {
                    endpoint,
                    seqs: vec![item.seq],
                });
                let entry = broker.inbox_entry(
                    &mut state,
                    Unroutable::UnknownEndpoint,
                    Some(endpoint),
                    &item.envelope,
                );
                writes.push(Write::InboxAdd(entry));
            }
            let commit = broker.inner.store.commit(writes);
            tokio::spawn(async move {
                if let Err(e) = commit.await {
                    tracing::error!(error = %e, "moving orphaned messages to the inbox failed");
                }
            });
        }
        let ids: Vec<_> = broker.lock().endpoints.keys().copied().collect();
        for id in ids {
            let pid = broker.lock().endpoints.get(&id).map(|e| e.record.pid);
            match pid {
                Some(pid) if pid_alive(pid) => broker.start_grace(id),
                Some(_) => broker.apply(id, EndpointEvent::PidGone, "pid gone at restart"),
                None => {}
            }
        }
        broker.spawn_sweeper();
        Ok(broker)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The broker's events: state transitions, inbox changes, spawns.
    pub fn subscribe(&self) -> broadcast::Receiver<BrokerEvent> {
        self.inner.events.subscribe()
    }

    fn emit(&self, event: BrokerEvent) {
        tracing::debug!(?event, "broker event");
        let _ = self.inner.events.send(event);
    }

    /// The limits it runs with.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    fn refuse_if_closing(&self) -> Result<(), Status> {
        if self.inner.closing.load(Ordering::Acquire) {
            return Err(status(
                Code::Unavailable,
                "shutting_down",
                "the broker is shutting down",
            ));
        }
        Ok(())
    }

    fn new_correlation(&self) -> String {
        let n = self.inner.next_correlation.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}-{n:x}", self.inner.correlation_prefix)
    }

    /// Registers an endpoint (state `active`). It is durable before this returns.
    pub async fn register(&self, reg: Registration) -> Result<Registered, Status> {
        self.refuse_if_closing()?;
        if reg.kind.trim().is_empty() {
            return Err(status(
                Code::InvalidArgument,
                "kind_required",
                "`kind` must name the plugin's runtime",
            ));
        }
        for (field, value) in [
            ("kind", Some(&reg.kind)),
            ("label", reg.label.as_ref()),
            ("workspace", reg.workspace.as_ref()),
            ("tracking_ref", reg.tracking_ref.as_ref()),
            ("spawn_token", reg.spawn_token.as_ref()),
        ] {
            if value.is_some_and(|v| v.len() > 4096) {
                return Err(status(
                    Code::InvalidArgument,
                    "field_too_long",
                    format!("`{field}` is longer than 4096 bytes"),
                ));
            }
        }
        let (task_hint, truncated) = match &reg.task_hint {
            Some(h) => {
                let (h, t) = self.cut_hint(h);
                (Some(h), t)
            }
            None => (None, false),
        };
        let (record, commit) = {
            let mut state = self.lock();
            let id = state.next_endpoint_id;
            state.next_endpoint_id += 1;
            let record = EndpointRecord {
                id,
                kind: reg.kind,
                label: reg.label,
                workspace: reg.workspace,
                pid: reg.pid,
                tracking_ref: reg.tracking_ref,
                task_hint: task_hint.clone(),
                spawn_token: reg.spawn_token.clone(),
                registered_at_ms: now_ms(),
                state: EndpointState::Active,
            };
            let commit = self
                .inner
                .store
                .commit(vec![Write::PutEndpoint(record.clone())]);
            (record, commit)
        };
        commit.await.map_err(store_failed)?;
        let id = record.id;
        self.lock().endpoints.insert(
            id,
            Endpoint {
                record,
                state: EndpointState::Active,
                queue: Queue::default(),
                receiver: None,
                wake: Arc::new(Notify::new()),
                grace: None,
            },
        );
        self.emit(BrokerEvent::EndpointState {
            endpoint_id: id,
            from: None,
            to: EndpointState::Active,
            cause: "register".into(),
        });
        let spawn_completed = match &reg.spawn_token {
            Some(token) => self.inner.spawner.complete(token, id, self),
            None => false,
        };
        tracing::info!(endpoint_id = id, "endpoint registered");
        Ok(Registered {
            endpoint_id: id,
            task_hint,
            task_hint_truncated: truncated,
            spawn_completed,
        })
    }

    fn cut_hint(&self, hint: &str) -> (String, bool) {
        let max = self.inner.limits.max_task_hint_chars;
        match hint.char_indices().nth(max) {
            Some((at, _)) => (hint[..at].to_owned(), true),
            None => (hint.to_owned(), false),
        }
    }

    fn with_endpoint<T>(
        &self,
        id: EndpointId,
        f: impl FnOnce(&mut Endpoint) -> Result<T, Status>,
    ) -> Result<T, Status> {
        let mut state = self.lock();
        let endpoint = state.endpoints.get_mut(&id).ok_or_else(|| unknown(id))?;
        f(endpoint)
    }

    /// Says the plugin is alive; returns the endpoint's state.
    pub fn heartbeat(&self, id: EndpointId) -> Result<EndpointState, Status> {
        self.with_endpoint(id, |e| Ok(e.state))
    }

    /// Closes an endpoint for good; its held messages go to the inbox.
    pub fn unregister(&self, id: EndpointId) -> Result<(), Status> {
        let state = self.with_endpoint(id, |e| Ok(e.state))?;
        if state == EndpointState::Closed {
            return Err(closed(id));
        }
        self.apply(id, EndpointEvent::Unregister, "unregister");
        Ok(())
    }

    /// Takes a reconnecting endpoint back (or an active one over, from a
    /// connection the broker has not seen close yet); `pid` must be the
    /// registered one. Then `receive` delivers what was held, in order.
    pub fn reattach(&self, id: EndpointId, pid: u32) -> Result<Reattached, Status> {
        let held = self.with_endpoint(id, |e| {
            if e.state == EndpointState::Closed {
                return Err(closed(id));
            }
            if e.record.pid != pid {
                return Err(status(
                    Code::PermissionDenied,
                    "reattach_pid_mismatch",
                    format!("endpoint {id} was registered by another pid"),
                ));
            }
            Ok(e.queue.len() as u64)
        })?;
        self.apply(id, EndpointEvent::Reattach, "reattach");
        Ok(Reattached { held })
    }

    /// Sets an endpoint's task hint, cut to the limit.
    pub async fn set_task_hint(&self, id: EndpointId, hint: &str) -> Result<TaskHint, Status> {
        self.refuse_if_closing()?;
        let (hint, truncated) = self.cut_hint(hint);
        let commit = self.with_endpoint(id, |e| {
            if e.state == EndpointState::Closed {
                return Err(closed(id));
            }
            e.record.task_hint = Some(hint.clone());
            Ok(self
                .inner
                .store
                .commit(vec![Write::PutEndpoint(e.record.clone())]))
        })?;
        commit.await.map_err(store_failed)?;
        Ok(TaskHint {
            task_hint: hint,
            truncated,
            max_chars: self.inner.limits.max_task_hint_chars as u64,
        })
    }

    /// Sends from endpoint `from` (which must be active), or from an
    /// operator (`None`). Returns once the message is durable.
    pub async fn send(&self, from: Option<EndpointId>, out: Outgoing) -> Result<Sent, Status> {
        self.refuse_if_closing()?;
        let mut metadata = out.metadata.unwrap_or_default();
        if metadata.contains_key("correlation_id") {
            return Err(status(
                Code::InvalidArgument,
                "correlation_id_forbidden",
                "the broker alone issues correlation ids: leave `correlation_id` out of metadata",
            ));
        }
        if metadata.contains_key("target_endpoint_id") {
            return Err(status(
                Code::InvalidArgument,
                "target_endpoint_id_forbidden",
                "`target_endpoint_id` is not a send input: name the target in `to`",
            ));
        }
        if let Some(source) = metadata.get("source_endpoint_id") {
            if from.is_none() || source.as_u64() != from {
                return Err(status(
                    Code::PermissionDenied,
                    "source_endpoint_id_mismatch",
                    "`metadata.source_endpoint_id` must be the sender's own endpoint id",
                ));
            }
        }
        if let Some(from) = from {
            metadata.insert("source_endpoint_id".into(), from.into());
        }
        let correlation_id = self.new_correlation();
        let envelope = Envelope {
            from,
            correlation_id: correlation_id.clone(),
            in_reply_to: out.in_reply_to.clone(),
            content: out.content,
            content_type: out.content_type.unwrap_or_else(|| "text".into()),
            metadata,
            sent_at_ms: now_ms(),
        };
        let bytes = encode(&envelope).map_err(store_failed)?;
        let max = self.inner.limits.max_message_bytes;
        if bytes.len() > max {
            return Err(status(
                Code::ResourceExhausted,
                "max_message_bytes",
                format!(
                    "the message is {} bytes encoded; the limit is {max}",
                    bytes.len()
                ),
            ));
        }
        let target = {
            let state = self.lock();
            if let Some(from) = from {
                match state.endpoints.get(&from) {
                    None => return Err(unknown(from)),
                    Some(e) if e.state != EndpointState::Active => {
                        return Err(status(
                            Code::FailedPrecondition,
                            "endpoint_not_active",
                            format!(
                                "endpoint {from} is {}: only an active endpoint sends \
                                 (reattach first)",
                                e.state.as_str()
                            ),
                        ))
                    }
                    Some(_) => {}
                }
            }
            route(&state, from, out.to, out.in_reply_to.as_deref())
        };
        let envelope = Arc::new(envelope);
        match target {
            Ok(endpoint) => self.enqueue(endpoint, envelope, bytes).await,
            Err((why, hint)) => self.park(why, hint, &envelope).await,
        }
    }

    /// Queues a message for `endpoint`, durably; falls back to the inbox if
    /// the endpoint closed meanwhile.
    async fn enqueue(
        &self,
        endpoint: EndpointId,
        envelope: Arc<Envelope>,
        bytes: Vec<u8>,
    ) -> Result<Sent, Status> {
        let correlation_id = envelope.correlation_id.clone();
        let reserved = {
            let mut state = self.lock();
            let limits = &self.inner.limits;
            let e = state
                .endpoints
                .get_mut(&endpoint)
                .ok_or_else(|| unknown(endpoint))?;
            if e.state == EndpointState::Closed {
                None
            } else {
                if e.queue.len() >= limits.max_queue_messages
                    || e.queue.bytes + bytes.len() > limits.max_queue_bytes
                {
                    return Err(status(
                        Code::ResourceExhausted,
                        "queue_full",
                        format!(
                        "endpoint {endpoint}'s queue is full ({} messages, {} bytes; limits {} \
                         and {})",
                        e.queue.len(),
                        e.queue.bytes,
                        limits.max_queue_messages,
                        limits.max_queue_bytes
                    ),
                    ));
                }
                let seq = e.queue.next_seq.max(1);
                e.queue.push(Queued {
                    seq,
                    envelope: envelope.clone(),
                    bytes: bytes.len(),
                    committed: false,
                    deliveries: 0,
                    in_flight: false,
                });
                let commit = self.inner.store.commit(vec![Write::Append {
                    endpoint,
                    seq,
                    bytes,
                }]);
                Some((seq, commit))
            }
        };
        let Some((seq, commit)) = reserved else {
            return self
                .park(Unroutable::EndpointClosed, Some(endpoint), &envelope)
                .await;
        };
        let committed = commit.await;
        let closed_meanwhile = {
            let mut state = self.lock();
            let Some(e) = state.endpoints.get_mut(&endpoint) else {
                return Err(unknown(endpoint));
            };
            if let Err(err) = committed {
                e.queue.remove(seq);
                return Err(store_failed(err));
            }
            if e.state != EndpointState::Closed {
                if let Some(item) = e.queue.get_mut(seq) {
                    item.committed = true;
                }
                e.wake.notify_one();
                None
            } else {
                // It closed while the message was being written: the inbox
                // takes it, in the same transaction that removes it.
                e.queue.remove(seq);
                let entry = self.inbox_entry(
                    &mut state,
                    Unroutable::EndpointClosed,
                    Some(endpoint),
                    &envelope,
                );
                let inbox_id = entry.id;
                state.inbox.insert(inbox_id, entry.clone());
                let commit = self.inner.store.commit(vec![
                    Write::Ack {
                        endpoint,
                        seqs: vec![seq],
                    },
                    Write::InboxAdd(entry),
                ]);
                Some((inbox_id, commit))
            }
        };
        if let Some((inbox_id, commit)) = closed_meanwhile {
            commit.await.map_err(store_failed)?;
            self.emit(BrokerEvent::Inbox {
                action: InboxAction::Added,
                inbox_id,
                reason: Some(Unroutable::EndpointClosed.as_str().into()),
                endpoint_id: Some(endpoint),
            });
            return Ok(Sent {
                correlation_id,
                routed: Routed::Inbox {
                    inbox_id,
                    reason: Unroutable::EndpointClosed.as_str().into(),
                },
            });
        }
        Ok(Sent {
            correlation_id,
            routed: Routed::Endpoint {
                endpoint_id: endpoint,
                seq,
            },
        })
    }

    fn inbox_entry(
        &self,
        state: &mut State,
        why: Unroutable,
        hint: Option<EndpointId>,
        envelope: &Envelope,
    ) -> InboxEntry {
        let id = state.next_inbox_id;
        state.next_inbox_id += 1;
        InboxEntry {
            id,
            reason: why.as_str().into(),
            target_hint: hint,
            envelope: envelope.clone(),
            arrived_at_ms: now_ms(),
        }
    }

    /// Parks a message in the inbox, durably.
    async fn park(
        &self,
        why: Unroutable,
        hint: Option<EndpointId>,
        envelope: &Envelope,
    ) -> Result<Sent, Status> {
        let (id, commit) = {
            let mut state = self.lock();
            let max = self.inner.limits.max_inbox;
            if state.inbox.len() >= max {
                tracing::warn!(reason = why.as_str(), "undispatched inbox full");
                return Err(status(
                    Code::ResourceExhausted,
                    "inbox_full",
                    format!(
                        "the message cannot be routed ({}) and the undispatched inbox is full \
                         ({max} messages)",
                        why.as_str()
                    ),
                ));
            }
            let entry = self.inbox_entry(&mut state, why, hint, envelope);
            let id = entry.id;
            state.inbox.insert(id, entry.clone());
            (id, self.inner.store.commit(vec![Write::InboxAdd(entry)]))
        };
        if let Err(e) = commit.await {
            self.lock().inbox.remove(&id);
            return Err(store_failed(e));
        }
        tracing::info!(inbox_id = id, reason = why.as_str(), "message undispatched");
        self.emit(BrokerEvent::Inbox {
            action: InboxAction::Added,
            inbox_id: id,
            reason: Some(why.as_str().into()),
            endpoint_id: hint,
        });
        Ok(Sent {
            correlation_id: envelope.correlation_id.clone(),
            routed: Routed::Inbox {
                inbox_id: id,
                reason: why.as_str().into(),
            },
        })
    }

    /// Starts delivering an active endpoint's messages: oldest
    /// unacknowledged first, then new ones as they are committed, with at
    /// most `window` delivered and unacknowledged. The stream ends when the
    /// endpoint closes or another connection takes it over; dropping it
    /// (its connection closed) moves the endpoint to reconnecting.
    pub fn receive(
        &self,
        id: EndpointId,
        window: Option<u32>,
    ) -> Result<BoxStream<'static, Result<Delivery, Status>>, Status> {
        let limits = &self.inner.limits;
        let window = window.unwrap_or(limits.default_window);
        if window == 0 || window > limits.max_window {
            return Err(status(
                Code::InvalidArgument,
                "bad_window",
                format!("`window` must be from 1 to {}", limits.max_window),
            ));
        }
        let generation = {
            let mut state = self.lock();
            let generation = state.next_receiver;
            state.next_receiver += 1;
            let e = state.endpoints.get_mut(&id).ok_or_else(|| unknown(id))?;
            match e.state {
                EndpointState::Active => {}
                EndpointState::Reconnecting => {
                    return Err(status(
                        Code::FailedPrecondition,
                        "endpoint_reconnecting",
                        format!("endpoint {id} is reconnecting: reattach first"),
                    ))
                }
                EndpointState::Closed => return Err(closed(id)),
            }
            if e.receiver.is_some() {
                return Err(status(
                    Code::AlreadyExists,
                    "receiver_attached",
                    format!(
                        "endpoint {id} is already receiving on another connection \
                         (reattach takes it over)"
                    ),
                ));
            }
            e.receiver = Some(generation);
            e.queue.reset_in_flight();
            generation
        };
        let receiver = Receiver {
            broker: self.clone(),
            endpoint: id,
            generation,
            window: window as usize,
            ready: VecDeque::new(),
        };
        Ok(Box::pin(futures_util::stream::unfold(
            receiver,
            |mut r| async move {
                let item = r.next().await?;
                Some((item, r))
            },
        )))
    }

    /// Acknowledges delivered messages: they leave the store.
    pub async fn ack(&self, id: EndpointId, seqs: &[Seq]) -> Result<Acked, Status> {
        let (valid, ignored, commit) = {
            let state = self.lock();
            let e = state.endpoints.get(&id).ok_or_else(|| unknown(id))?;
            let (valid, ignored): (Vec<Seq>, Vec<Seq>) = seqs
                .iter()
                .partition(|s| e.queue.get(**s).is_some_and(|q| q.in_flight));
            if valid.is_empty() {
                return Ok(Acked { acked: 0, ignored });
            }
            let commit = self.inner.store.commit(vec![Write::Ack {
                endpoint: id,
                seqs: valid.clone(),
            }]);
            (valid, ignored, commit)
        };
        commit.await.map_err(store_failed)?;
        let mut state = self.lock();
        let mut acked = 0;
        if let Some(e) = state.endpoints.get_mut(&id) {
            for seq in &valid {
                acked += u64::from(e.queue.remove(*seq).is_some());
            }
            e.wake.notify_one();
        }
        Ok(Acked { acked, ignored })
    }

    /// Every known endpoint, closed ones that are still remembered included.
    pub fn endpoints(&self) -> Vec<EndpointStatus> {
        let state = self.lock();
        let mut list: Vec<_> = state
            .endpoints
            .values()
            .map(|e| EndpointStatus {
                record: EndpointRecord {
                    state: e.state,
                    ..e.record.clone()
                },
                queued: e.queue.len() as u64,
                queued_bytes: e.queue.bytes as u64,
                in_flight: e.queue.in_flight() as u64,
                receiver_attached: e.receiver.is_some(),
            })
            .collect();
        list.sort_by_key(|e| e.record.id);
        list
    }

    /// The undispatched inbox, oldest first.
    pub fn inbox(&self) -> Vec<InboxEntry> {
        self.lock().inbox.values().cloned().collect()
    }

    /// Moves an inbox entry to an endpoint's queue (atomically).
    pub async fn dispatch(&self, inbox_id: u64, to: EndpointId) -> Result<Seq, Status> {
        self.refuse_if_closing()?;
        let (seq, commit) = {
            let mut state = self.lock();
            let limits = self.inner.limits.clone();
            let mut envelope = state
                .inbox
                .get(&inbox_id)
                .ok_or_else(|| {
                    status(
                        Code::NotFound,
                        "unknown_inbox_entry",
                        format!("no inbox entry {inbox_id}"),
                    )
                })?
                .envelope
                .clone();
            envelope
                .metadata
                .insert("dispatched_from".into(), inbox_id.into());
            let bytes = encode(&envelope).map_err(store_failed)?;
            let e = state.endpoints.get_mut(&to).ok_or_else(|| unknown(to))?;
            if e.state == EndpointState::Closed {
                return Err(closed(to));
            }
            if e.queue.len() >= limits.max_queue_messages
                || e.queue.bytes + bytes.len() > limits.max_queue_bytes
            {
                return Err(status(
                    Code::ResourceExhausted,
                    "queue_full",
                    format!("endpoint {to}'s queue is full"),
                ));
            }
            let seq = e.queue.next_seq.max(1);
            e.queue.push(Queued {
                seq,
                envelope: Arc::new(envelope),
                bytes: bytes.len(),
                committed: false,
                deliveries: 0,
                in_flight: false,
            });
            state.inbox.remove(&inbox_id);
            let commit = self.inner.store.commit(vec![
                Write::InboxRemove(inbox_id),
                Write::Append {
                    endpoint: to,
                    seq,
                    bytes,
                },
            ]);
            (seq, commit)
        };
        let committed = commit.await;
        let mut state = self.lock();
        if let Some(e) = state.endpoints.get_mut(&to) {
            match &committed {
                Ok(()) => {
                    if let Some(item) = e.queue.get_mut(seq) {
                        item.committed = true;
                    }
                    e.wake.notify_one();
                }
                Err(_) => {
                    e.queue.remove(seq);
                }
            }
        }
        drop(state);
        committed.map_err(store_failed)?;
        self.emit(BrokerEvent::Inbox {
            action: InboxAction::Dispatched,
            inbox_id,
            reason: None,
            endpoint_id: Some(to),
        });
        Ok(seq)
    }

    /// Drops an inbox entry for good.
    pub async fn drop_inbox(&self, inbox_id: u64) -> Result<(), Status> {
        self.refuse_if_closing()?;
        let commit = {
            let mut state = self.lock();
            if state.inbox.remove(&inbox_id).is_none() {
                return Err(status(
                    Code::NotFound,
                    "unknown_inbox_entry",
                    format!("no inbox entry {inbox_id}"),
                ));
            }
            self.inner.store.commit(vec![Write::InboxRemove(inbox_id)])
        };
        commit.await.map_err(store_failed)?;
        self.emit(BrokerEvent::Inbox {
            action: InboxAction::Dropped,
            inbox_id,
            reason: None,
            endpoint_id: None,
        });
        Ok(())
    }

    /// Counts for operators.
    pub fn status(&self) -> BrokerStatus {
        let state = self.lock();
        let count =
            |s: EndpointState| state.endpoints.values().filter(|e| e.state == s).count() as u64;
        BrokerStatus {
            active: count(EndpointState::Active),
            reconnecting: count(EndpointState::Reconnecting),
            queued: state.endpoints.values().map(|e| e.queue.len() as u64).sum(),
            inbox: state.inbox.len() as u64,
            store: self.inner.store.stats().into(),
            uptime_s: self.inner.started.elapsed().as_secs(),
        }
    }

    /// Stops taking changes and closes the store once the writes already
    /// accepted are durable: every send in flight is either acknowledged or
    /// refused.
    pub async fn close(&self) {
        self.stop();
        if let Err(e) = self.inner.store.close().await {
            tracing::error!(error = %e, "closing the store failed");
        }
    }

    /// The first half of [`close`](Broker::close): new changes are refused
    /// and delivery streams end (so connections can close at once), while
    /// the writes already accepted still complete.
    pub fn stop(&self) {
        self.inner.closing.store(true, Ordering::Release);
        {
            let mut state = self.lock();
            for e in state.endpoints.values_mut() {
                if let Some(grace) = e.grace.take() {
                    grace.abort();
                }
                e.receiver = None;
                e.wake.notify_waiters();
            }
        }
    }

    /// Feeds one event to an endpoint's state machine and carries out
    /// the effects.
    pub(crate) fn apply(&self, id: EndpointId, event: EndpointEvent, cause: &str) {
        let mut state = self.lock();
        let Some(e) = state.endpoints.get_mut(&id) else {
            return;
        };
        let from = e.state;
        let (to, effects) = match transition(from, event) {
            Transition::To(to, effects) => (to, effects),
            Transition::Ignored => {
                tracing::info!(
                    endpoint_id = id,
                    state = from.as_str(),
                    ?event,
                    "event ignored"
                );
                return;
            }
        };
        e.state = to;
        let mut release = false;
        for effect in effects {
            match effect {
                Effect::StartGraceTimer => {}
                Effect::CancelGraceTimer => {
                    if let Some(g) = e.grace.take() {
                        g.abort();
                    }
                }
                Effect::DetachReceiver => {
                    e.receiver = None;
                    e.wake.notify_waiters();
                }
                Effect::ReleaseQueue => release = true,
            }
        }
        if to == EndpointState::Reconnecting && from != EndpointState::Reconnecting {
            drop(state);
            self.start_grace(id);
            state = self.lock();
        }
        if release {
            self.release(&mut state, id);
        }
        drop(state);
        tracing::info!(
            endpoint_id = id,
            from = from.as_str(),
            to = to.as_str(),
            cause,
            "endpoint state"
        );
        self.emit(BrokerEvent::EndpointState {
            endpoint_id: id,
            from: Some(from),
            to,
            cause: cause.into(),
        });
    }

    /// A closed endpoint's committed messages go to the inbox (beyond its
    /// bound if need be: nothing accepted is dropped), its record leaves
    /// the store, all in one transaction.
    fn release(&self, state: &mut State, id: EndpointId) {
        let Some(e) = state.endpoints.get_mut(&id) else {
            return;
        };
        let items = e.queue.take_committed();
        let mut writes = Vec::with_capacity(items.len() * 2 + 2);
        if !items.is_empty() {
            writes.push(Write::Ack {
                endpoint: id,
                seqs: items.iter().map(|q| q.seq).collect(),
            });
        }
        let mut added = Vec::new();
        for item in &items {
            let entry =
                self.inbox_entry(state, Unroutable::EndpointClosed, Some(id), &item.envelope);
            added.push(entry.id);
            state.inbox.insert(entry.id, entry.clone());
            writes.push(Write::InboxAdd(entry));
        }
        writes.push(Write::RemoveEndpoint(id));
        state.correlations.forget(id);
        state.closed.push_back(id);
        while state.closed.len() > CLOSED_REMEMBERED {
            if let Some(old) = state.closed.pop_front() {
                state.endpoints.remove(&old);
            }
        }
        let commit = self.inner.store.commit(writes);
        let broker = self.clone();
        tokio::spawn(async move {
            if let Err(e) = commit.await {
                tracing::error!(endpoint_id = id, error = %e, "releasing a closed endpoint failed");
                return;
            }
            for inbox_id in added {
                broker.emit(BrokerEvent::Inbox {
                    action: InboxAction::Added,
                    inbox_id,
                    reason: Some(Unroutable::EndpointClosed.as_str().into()),
                    endpoint_id: Some(id),
                });
            }
        });
    }

    fn start_grace(&self, id: EndpointId) {
        let broker = self.clone();
        let grace = self.inner.limits.grace;
        let timer = tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            broker.apply(id, EndpointEvent::GraceExpired, "grace expired");
        });
        let mut state = self.lock();
        match state.endpoints.get_mut(&id) {
            Some(e) if e.state == EndpointState::Reconnecting => {
                if let Some(old) = e.grace.replace(timer) {
                    old.abort();
                }
            }
            _ => timer.abort(),
        }
    }

    /// Checks pids and sweeps correlations, until the broker is dropped.
    fn spawn_sweeper(&self) {
        let weak = Arc::downgrade(&self.inner);
        let every = self.inner.limits.sweep_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let broker = Broker { inner };
                if broker.inner.closing.load(Ordering::Acquire) {
                    return;
                }
                let gone: Vec<_> = {
                    let mut state = broker.lock();
                    state.correlations.sweep(Instant::now());
                    state
                        .endpoints
                        .values()
                        .filter(|e| e.state != EndpointState::Closed && !pid_alive(e.record.pid))
                        .map(|e| e.record.id)
                        .collect()
                };
                for id in gone {
                    broker.apply(id, EndpointEvent::PidGone, "pid gone");
                }
                broker.inner.spawner.expire(&broker);
            }
        });
    }

    /// Adds (or replaces) the spawn driver of its runtime kind.
    pub fn add_spawn_driver(&self, driver: Arc<dyn crate::spawn::SpawnDriver>) {
        self.inner.spawner.add_driver(driver);
    }

    /// Sets how spawn requests are bounded.
    pub fn set_spawn_limits(&self, limits: crate::spawn::SpawnLimits) {
        self.inner.spawner.set_limits(limits);
    }

    /// Starts a plugin of `kind` through its driver; the plugin completes
    /// the request by registering with the returned token.
    pub fn request_spawn(
        &self,
        kind: &str,
        prompt: Option<&str>,
    ) -> Result<crate::spawn::SpawnStarted, Status> {
        self.refuse_if_closing()?;
        self.inner
            .spawner
            .request(self, kind, prompt, Instant::now())
    }

    /// Spawn requests waiting for their plugin to register.
    pub fn pending_spawns(&self) -> usize {
        self.inner.spawner.pending()
    }

    pub(crate) fn emit_event(&self, event: BrokerEvent) {
        self.emit(event);
    }

    /// The receiver `generation` of `id` ended (its connection closed).
    fn receiver_dropped(&self, id: EndpointId, generation: u64) {
        let pid = {
            let mut state = self.lock();
            let Some(e) = state.endpoints.get_mut(&id) else {
                return;
            };
            if e.receiver != Some(generation) {
                return; // displaced or detached already
            }
            e.receiver = None;
            e.record.pid
        };
        if self.inner.closing.load(Ordering::Acquire) {
            return;
        }
        let pid_alive = pid_alive(pid);
        self.apply(
            id,
            EndpointEvent::ConnectionClosed { pid_alive },
            "connection closed",
        );
    }
}

/// Where a message goes, or why it cannot.
fn route(
    state: &State,
    from: Option<EndpointId>,
    to: Option<EndpointId>,
    in_reply_to: Option<&str>,
) -> Result<EndpointId, (Unroutable, Option<EndpointId>)> {
    let target = match (to, in_reply_to, from) {
        (Some(to), _, _) => to,
        (None, Some(correlation), Some(from)) => state
            .correlations
            .resolve(from, correlation, Instant::now())
            .ok_or((Unroutable::UnknownCorrelation, None))?,
        (None, Some(_), None) => return Err((Unroutable::UnknownCorrelation, None)),
        (None, None, _) => return Err((Unroutable::NoTarget, None)),
    };
    match state.endpoints.get(&target) {
        None => Err((Unroutable::UnknownEndpoint, Some(target))),
        Some(e) if e.state == EndpointState::Closed => {
            Err((Unroutable::EndpointClosed, Some(target)))
        }
        Some(_) => Ok(target),
    }
}

fn unknown(id: EndpointId) -> Status {
    status(
        Code::NotFound,
        "unknown_endpoint",
        format!("no endpoint {id}"),
    )
}

fn closed(id: EndpointId) -> Status {
    status(
        Code::FailedPrecondition,
        "endpoint_closed",
        format!("endpoint {id} is closed"),
    )
}

/// One endpoint's delivery stream.
struct Receiver {
    broker: Broker,
    endpoint: EndpointId,
    generation: u64,
    window: usize,
    /// Durably counted, not yet yielded.
    ready: VecDeque<Delivery>,
}

impl Receiver {
    async fn next(&mut self) -> Option<Result<Delivery, Status>> {
        loop {
            if let Some(d) = self.ready.pop_front() {
                return Some(Ok(d));
            }
            let (wake, batch) = {
                let mut state = self.broker.lock();
                let e = state.endpoints.get_mut(&self.endpoint)?;
                if e.receiver != Some(self.generation) {
                    return None;
                }
                let room = self.window.saturating_sub(e.queue.in_flight());
                let mut batch = Vec::new();
                if room > 0 {
                    for item in e.queue.next_batch(room) {
                        item.in_flight = true;
                        item.deliveries = item.deliveries.saturating_add(1);
                        batch.push(Delivery {
                            seq: item.seq,
                            envelope: (*item.envelope).clone(),
                            redelivered: item.deliveries > 1,
                            delivery_count: item.deliveries,
                        });
                    }
                }
                if batch.is_empty() {
                    (Some(e.wake.clone()), None)
                } else {
                    // Reply routing: the receiver may answer these.
                    for d in &batch {
                        if let Some(from) = d.envelope.from {
                            state.correlations.record(
                                self.endpoint,
                                &d.envelope.correlation_id,
                                from,
                                Instant::now(),
                            );
                        }
                    }
                    let seqs = batch.iter().map(|d| d.seq).collect();
                    let commit = self.broker.inner.store.commit(vec![Write::Delivered {
                        endpoint: self.endpoint,
                        seqs,
                    }]);
                    (None, Some((batch, commit)))
                }
            };
            match (wake, batch) {
                (_, Some((batch, commit))) => {
                    // The count is durable before the message goes out, so
                    // a redelivery after a crash is flagged as one.
                    if let Err(e) = commit.await {
                        return Some(Err(store_failed(e)));
                    }
                    self.ready.extend(batch);
                }
                (Some(wake), None) => {
                    let notified = wake.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    // Re-check after arming, so a wake-up between the check
                    // above and here is not lost.
                    let ready = {
                        let state = self.broker.lock();
                        let e = state.endpoints.get(&self.endpoint)?;
                        e.receiver != Some(self.generation)
                            || (self.window > e.queue.in_flight() && e.queue.has_deliverable())
                    };
                    if !ready {
                        notified.await;
                    }
                }
                (None, None) => return None,
            }
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let (broker, id, generation) = (self.broker.clone(), self.endpoint, self.generation);
        broker.receiver_dropped(id, generation);
    }
}
