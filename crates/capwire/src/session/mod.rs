//! The Session: one connection, either side, over any transport.
//!
//! A session owns the four tables of the protocol — exports, imports,
//! questions, answers — and a reader task that turns incoming frames into
//! table operations. Locks are held only for table lookups, never across
//! `.await` or I/O; handlers run as their own tasks.

mod bootstrap;
mod callee;
mod caller;
mod ending;
mod flow;
mod host;
mod outbox;
mod pipeline;
mod plain;
mod reader;
mod release;
mod revocation;
mod runtime;
mod streams;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use capwire_proto::{
    Code, Codec, Frame, Goaway, Hello, HelloLimits, Ping, Status, BOOTSTRAP_CAP, RUNTIME_CAP,
};
use tokio::sync::{broadcast, mpsc, oneshot, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::attestation::Attestation;
use crate::capability::Capability;
use crate::events::{Counters, Event, Started, Stats};
use crate::object::Object;
use crate::policy::Policy;
use crate::registry::{Registry, RevocationSink};
use crate::transport::{FrameSender, Transport};
use crate::value::Value;

pub use crate::engine::Limits;
use crate::engine::{deadline, Core};
use flow::Credit;
use host::{Live, Meta, Reply, Running};
pub(crate) use pipeline::AnswerRef;
pub(crate) use pipeline::Failing;
use pipeline::{object_of, Queued};
pub(crate) use plain::PlainCall;
pub(crate) use streams::RemoteItems;

pub(crate) use callee::{guarded, start_inline};
use callee::{supervise, StartAnswer};
pub(crate) use caller::{OutCall, WireTarget};
use reader::read_loop;

/// How a session behaves. Every field has a documented default.
#[derive(Clone)]
#[non_exhaustive]
pub struct SessionConfig {
    /// The codec this side sends. Default MessagePack.
    pub codec: Codec,
    /// Limits. See [`Limits`].
    pub limits: Limits,
    /// A name sent in `hello`, for the peer's logs.
    pub peer_name: Option<String>,
    /// Decides each bootstrap. Default: allow all.
    pub policy: Option<Arc<dyn Policy>>,
    /// Extra time the callee gives a call past its deadline before stopping
    /// it, so the caller's own timeout fires first. Default 500 ms.
    pub deadline_grace: Duration,
    /// How long `close` lets calls in flight finish, both the peer's and this
    /// side's own. Default 5 s.
    pub close_grace: Duration,
    /// Events buffered per subscriber before the oldest are dropped. Default 1024.
    pub event_buffer: usize,
    /// Items a stream call grants up front, and the credit batch (half of
    /// it) given back as they are consumed. Default 32.
    pub stream_window: u32,
    /// A bearer token sent in `hello`, for servers that require one.
    pub token: Option<String>,
}

impl Default for SessionConfig {
    fn default() -> SessionConfig {
        SessionConfig {
            codec: Codec::Msgpack,
            limits: Limits::default(),
            peer_name: None,
            policy: None,
            deadline_grace: Duration::from_millis(500),
            close_grace: Duration::from_secs(5),
            event_buffer: 1024,
            stream_window: crate::stream::DEFAULT_WINDOW,
            token: None,
        }
    }
}

impl SessionConfig {
    /// Sets the codec this side sends.
    pub fn codec(mut self, codec: Codec) -> SessionConfig {
        self.codec = codec;
        self
    }

    /// Sets the limits.
    pub fn limits(mut self, limits: Limits) -> SessionConfig {
        self.limits = limits;
        self
    }

    /// Sets the bootstrap policy.
    pub fn policy(mut self, policy: Arc<dyn Policy>) -> SessionConfig {
        self.policy = Some(policy);
        self
    }
}

tokio::task_local! {
    static SCOPE: CallScope;
}

/// The call a handler task is running, inherited by the calls it makes.
#[derive(Clone)]
pub(crate) struct CallScope {
    pub(crate) cancel: CancellationToken,
    pub(crate) deadline: Option<Instant>,
    pub(crate) answer: u64,
}

pub(crate) fn current_scope() -> Option<CallScope> {
    SCOPE.try_with(Clone::clone).ok()
}

/// The engine, as the session drives it.
type State = Core<Live>;

/// Pings sent and not answered yet.
#[derive(Default)]
struct Pings {
    waiting: HashMap<u64, (Instant, oneshot::Sender<Duration>)>,
    next: u64,
}

pub(crate) struct Shared {
    state: Mutex<State>,
    pings: Mutex<Pings>,
    sender: FrameSender,
    codec: Codec,
    config: SessionConfig,
    registry: Registry,
    attestation: Arc<Attestation>,
    /// Made on the first subscription: its ring of `event_buffer` slots is
    /// allocated up front, which an idle connection nobody watches should
    /// not pay for.
    events: std::sync::OnceLock<broadcast::Sender<Event>>,
    counters: Counters,
    closed: CancellationToken,
    runtime: Arc<dyn Object>,
    /// Dropped handles, processed by the release task.
    releases: mpsc::UnboundedSender<Dropped>,
    /// Largest frame the peer announced it accepts; unlimited until its hello.
    peer_max_frame: AtomicUsize,
    /// Notified whenever a question or an answer leaves its table, while
    /// `settle_waiters` says someone (a `close`) waits for that.
    settled: Notify,
    settle_waiters: AtomicUsize,
    /// Set with `closed`, and cheaper to read: the reader checks it per frame.
    ended: AtomicBool,
}

/// Counts a waiter for [`Shared::notify_settled`] while it lives.
struct SettleWaiter<'a>(&'a Shared);

impl<'a> SettleWaiter<'a> {
    fn new(shared: &'a Shared) -> SettleWaiter<'a> {
        shared.settle_waiters.fetch_add(1, Ordering::SeqCst);
        SettleWaiter(shared)
    }
}

impl Drop for SettleWaiter<'_> {
    fn drop(&mut self) {
        self.0.settle_waiters.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A handle dropped where the session lock may be held: the release task
/// does the table work and sends the frame.
pub(crate) enum Dropped {
    /// The last handle of an import: `release`.
    Import { id: u64, serial: u64 },
    /// The last handle of a kept question: `finish`.
    Kept(u64),
}

/// Longest `goaway` message sent: decoder errors may quote the peer's input.
const MAX_GOAWAY_MESSAGE: usize = 256;

/// One connection's capability session. Cheap to clone; the connection
/// stays open while the peer keeps it open, even with no handle left here.
#[derive(Clone)]
pub struct Session {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("attestation", &self.shared.attestation)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Starts a session over `transport`, serving `registry` to the peer.
    /// Sends `hello` at once and starts the reader task.
    pub fn new(transport: Transport, registry: Registry, config: SessionConfig) -> Session {
        let Transport {
            sender,
            receiver,
            attestation,
        } = transport;
        let limits = config.limits.clone();
        let (releases, mut released) = mpsc::unbounded_channel();
        let shared = Arc::new_cyclic(|me: &Weak<Shared>| Shared {
            state: Mutex::new(Core::new(
                Live {
                    session: me.clone(),
                },
                limits.clone(),
                config.codec,
            )),
            pings: Mutex::new(Pings::default()),
            codec: config.codec,
            runtime: runtime::runtime_object(me.clone()),
            config,
            registry: registry.clone(),
            attestation: Arc::new(attestation),
            events: std::sync::OnceLock::new(),
            counters: Counters::default(),
            closed: CancellationToken::new(),
            sender,
            releases,
            peer_max_frame: AtomicUsize::new(usize::MAX),
            settled: Notify::new(),
            settle_waiters: AtomicUsize::new(0),
            ended: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&shared);
        tokio::spawn(async move {
            while let Some(dropped) = released.recv().await {
                let Some(shared) = weak.upgrade() else {
                    return;
                };
                match dropped {
                    Dropped::Import { id, serial } => shared.drop_import(id, serial),
                    Dropped::Kept(id) => shared.drop_kept(id),
                }
            }
        });
        let sink: Weak<dyn RevocationSink> = Arc::downgrade(&shared) as Weak<dyn RevocationSink>;
        registry.subscribe(sink);
        let hello = Hello {
            limits: HelloLimits {
                max_frame_bytes: u32::try_from(shared.sender.max_frame_bytes()).ok(),
                max_caps: u32::try_from(limits.max_exports).ok(),
                max_in_flight: u32::try_from(limits.max_in_flight_in).ok(),
                max_depth: u32::try_from(limits.max_depth).ok(),
            },
            peer: shared.config.peer_name.clone(),
            token: shared.config.token.clone(),
            ..Hello::new()
        };
        shared.send_nowait(Frame::Hello(hello));
        // The session sends `goaway` before closing on a framing violation.
        let mut receiver = receiver;
        receiver.close_on_framing_error(false);
        tokio::spawn(read_loop(shared.clone(), receiver));
        Session { shared }
    }

    /// Asks the peer for the capability served as `name`, optionally at an
    /// exact `version`.
    pub async fn bootstrap(&self, name: &str, version: Option<&str>) -> Result<Capability, Status> {
        let args = Value::new(&serde_json::json!({ "name": name, "version": version }))?;
        let value = self.main().call("bootstrap", args).await?;
        value.cap(0)
    }

    /// The peer's bootstrap object (capability 0).
    fn main(&self) -> Capability {
        self.shared.remote_handle(BOOTSTRAP_CAP)
    }

    /// The peer's runtime capability (capability 1): `ping`, `names`, `stats`.
    pub fn runtime(&self) -> Capability {
        self.shared.remote_handle(RUNTIME_CAP)
    }

    /// Sends a ping and waits for the pong; the round trip also shows in [`stats`](Self::stats).
    pub async fn ping(&self) -> Result<Duration, Status> {
        if let Some(s) = self.shared.lock().ended() {
            return Err(s.clone());
        }
        let (nonce, rx) = {
            let mut pings = self.shared.pings();
            pings.next += 1;
            let (tx, rx) = oneshot::channel();
            let nonce = pings.next;
            pings.waiting.insert(nonce, (Instant::now(), tx));
            (nonce, rx)
        };
        self.shared.send(Frame::Ping(Ping { nonce })).await?;
        rx.await
            .map_err(|_| Status::unavailable("the connection closed before the pong"))
    }

    /// Counters and table sizes.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Subscribes to this session's events.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        let size = self.shared.config.event_buffer.max(1);
        self.shared
            .events
            .get_or_init(|| broadcast::channel(size).0)
            .subscribe()
    }

    /// What the transport knows about the peer.
    pub fn attestation(&self) -> &Attestation {
        &self.shared.attestation
    }

    /// Closes gracefully: tells the peer (`goaway`), stops making calls, lets
    /// the calls in flight both ways finish for up to the configured grace
    /// period, fails what is left with `unavailable`, and closes the transport.
    pub async fn close(&self) {
        let shared = &self.shared;
        let grace = shared.config.close_grace;
        {
            let mut st = shared.lock();
            if st.ended().is_some() {
                return;
            }
            st.drain(Status::unavailable("the session is closing"));
        }
        let deadline = Instant::now() + grace;
        let goaway = Goaway {
            status: Status::new(Code::Ok, "closing"),
            grace_ms: u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
        };
        // Bounded like the rest: a peer that does not read cannot hold the close.
        let _ = tokio::time::timeout_at(deadline, shared.send(Frame::Goaway(goaway))).await;
        // Counted before the tables are checked: a question or answer that
        // leaves its table after this sees the count and notifies.
        let _waiting = SettleWaiter::new(shared);
        loop {
            let settled = shared.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            {
                let st = shared.lock();
                if st.ended().is_some() || !st.busy() {
                    break;
                }
            }
            tokio::select! {
                _ = settled => {}
                _ = tokio::time::sleep_until(deadline) => break,
                _ = shared.closed.cancelled() => break,
            }
        }
        shared.shutdown(Status::unavailable("the session was closed"));
    }

    /// True once the session has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.ended.load(Ordering::Acquire)
    }

    /// Resolves when the session has ended, with the reason.
    pub async fn closed(&self) -> Status {
        self.shared.closed.cancelled().await;
        self.shared
            .lock()
            .ended()
            .cloned()
            .unwrap_or_else(|| Status::unavailable("closed"))
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // State updates are small and never leave a table half-changed, so a
        // panic elsewhere while the lock was held does not poison the session.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pings(&self) -> MutexGuard<'_, Pings> {
        self.pings.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes a `close` waiting for the tables to drain. Called after the
    /// table change, outside the lock; costs nothing while nobody closes.
    fn notify_settled(&self) {
        if self.settle_waiters.load(Ordering::SeqCst) > 0 {
            self.settled.notify_waiters();
        }
    }

    fn stats(&self) -> Stats {
        let mut stats = self.counters.snapshot();
        let st = self.lock();
        stats.exports = st.exports.len();
        stats.imports = st.imports.len();
        stats.questions = st.questions.len();
        stats.answers = st.answers.len();
        stats.pipelined_waiting = st.answers.pending_pipelined();
        stats
    }

    fn emit(&self, event: Event) {
        self.emit_with(|| event);
    }

    /// Emits the event `make` builds, building it only if someone listens.
    /// Metrics ([`crate::metrics`]), when on, are made from the same events.
    fn emit_with(&self, make: impl FnOnce() -> Event) {
        let listening = self.events.get().filter(|e| e.receiver_count() > 0);
        let metrics = crate::metrics::enabled();
        if listening.is_none() && !metrics {
            return;
        }
        let event = make();
        if metrics {
            crate::metrics::event(&event);
        }
        if let Some(events) = listening {
            let _ = events.send(event);
        }
    }

    /// True while someone subscribes to events, or metrics are recorded.
    fn observed(&self) -> bool {
        self.events.get().is_some_and(|e| e.receiver_count() > 0) || crate::metrics::enabled()
    }

    /// When something observed begins (see [`Started`]).
    fn started(&self) -> Started {
        Started::now_if(self.observed())
    }
}

pub(crate) async fn cancelled(token: Option<CancellationToken>) {
    match token {
        Some(t) => t.cancelled().await,
        None => std::future::pending().await,
    }
}
