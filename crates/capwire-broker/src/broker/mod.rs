//! The broker itself: endpoints, their queues, routing and the inbox, with
//! every change written through the [`Store`] before it is acknowledged.
//!
//! One lock guards the in-memory state; it is never held across an
//! `.await`. Writes are handed to the store *under* the lock (so a queue's
//! seqs reach the store in order) and awaited after it is released, which is
//! what lets concurrent sends share one durable commit.
//!
//! Each concept has its module: [`Limits`] (`limits`), opening on a store
//! (`recovery`), the endpoint registry and the state machine's effects
//! (`endpoints`), grace timers, pid checks and closed connections
//! (`liveness`), sending and routing (`sending`), receiving and acks
//! (`delivery`), the undispatched inbox (`inbox`), and spawn requests
//! (`spawning`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use capwire::{Code, Reason, Status};
use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, Notify};
use tokio::task::JoinHandle;

use crate::events::BrokerEvent;
use crate::queue::Queue;
use crate::routing::CorrelationCache;
use crate::spawn::Spawner;
use crate::state::EndpointState;
use crate::store::{EndpointId, EndpointRecord, InboxEntry, Store, StoreStats};

mod delivery;
mod endpoints;
mod inbox;
mod limits;
mod liveness;
mod recovery;
mod sending;
mod spawning;

pub use delivery::{Acked, Delivery};
pub use endpoints::{EndpointStatus, Reattached, Registered, Registration, TaskHint};
pub use limits::Limits;
pub use liveness::{pid_alive, Connection, ConnectionId};
pub use sending::{Outgoing, Routed, Sent};

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
    /// The open connection that registered or last reattached it; `None`
    /// for a plugin without one (HTTP requests, in-process callers), which
    /// heartbeats keep alive.
    owner: Option<ConnectionId>,
    /// The last call that named it (any call counts as a heartbeat).
    last_seen: Instant,
    wake: Arc<Notify>,
    grace: Option<JoinHandle<()>>,
}

impl Endpoint {
    fn new(record: EndpointRecord, state: EndpointState, owner: Option<ConnectionId>) -> Endpoint {
        Endpoint {
            record,
            state,
            queue: Queue::default(),
            receiver: None,
            owner,
            last_seen: Instant::now(),
            wake: Arc::new(Notify::new()),
            grace: None,
        }
    }
}

struct State {
    /// Hashed with FxHash: the broker issues the ids.
    endpoints: FxHashMap<EndpointId, Endpoint>,
    /// Closed endpoints, oldest first (forgotten past a bound).
    closed: VecDeque<EndpointId>,
    inbox: BTreeMap<u64, InboxEntry>,
    correlations: CorrelationCache,
    next_endpoint_id: EndpointId,
    next_inbox_id: u64,
    next_receiver: u64,
    /// Connections open now (see [`Connection`]).
    connections: FxHashSet<ConnectionId>,
    next_connection: ConnectionId,
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
