//! Shared test fixtures: session pairs over every transport and a demo service.
#![allow(dead_code, unreachable_pub)]
pub mod gate;

use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use capwire::proto::{codec, Call, CapDescriptor, Codec, Frame, Hello, Outcome, Payload, Target};
use capwire::transport::{
    self, memory_pair, Address, Listener, Transport, TransportConfig, TransportError,
};
use capwire::{
    CallContext, Capability, Code, Methods, Reason, Registry, Session, SessionConfig, Status, Value,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Transports a session pair can run over.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    Mem,
    Tcp,
    Unix,
    Ws,
}

pub const ALL: [Kind; 4] = [Kind::Mem, Kind::Tcp, Kind::Unix, Kind::Ws];

/// A connected client/server session pair; `registry` is served by the server.
pub struct Pair {
    pub client: Session,
    pub server: Session,
    _dir: tempfile::TempDir,
}

pub async fn pair_with(
    kind: Kind,
    registry: Registry,
    server_config: SessionConfig,
    client_config: SessionConfig,
) -> Pair {
    let tc = TransportConfig::default();
    pair_with_transport(kind, registry, server_config, client_config, &tc, &tc).await
}

/// A pair whose two ends use their own transport settings (frame limits).
/// Over memory both ends share `server_tc`.
pub async fn pair_with_transport(
    kind: Kind,
    registry: Registry,
    server_config: SessionConfig,
    client_config: SessionConfig,
    server_tc: &TransportConfig,
    client_tc: &TransportConfig,
) -> Pair {
    let dir = tempfile::tempdir().expect("tempdir");
    let (c, s) = match kind {
        Kind::Mem => memory_pair(server_tc),
        _ => {
            let addr: Address = match kind {
                Kind::Tcp => "tcp://127.0.0.1:0".parse().expect("addr"),
                Kind::Unix => Address::Unix(dir.path().join("s.sock")),
                Kind::Ws => "ws://127.0.0.1:0/".parse().expect("addr"),
                Kind::Mem => unreachable!(),
            };
            let mut l = Listener::bind(&addr, server_tc.clone())
                .await
                .expect("bind");
            let c = transport::connect(l.local_addr(), client_tc)
                .await
                .expect("connect");
            let s = l.accept().await.expect("accept");
            (c, s)
        }
    };
    let server = Session::new(s, registry, server_config);
    let client = Session::new(c, Registry::new(), client_config);
    Pair {
        client,
        server,
        _dir: dir,
    }
}

pub async fn pair(kind: Kind, registry: Registry) -> Pair {
    pair_with(
        kind,
        registry,
        SessionConfig::default(),
        SessionConfig::default(),
    )
    .await
}

pub fn json_config() -> SessionConfig {
    SessionConfig::default().codec(Codec::Json)
}

/// A counter object.
pub fn counter(start: i64) -> Methods {
    let value = Arc::new(AtomicI64::new(start));
    let v2 = value.clone();
    Methods::new("Counter")
        .method("increment", move |args: Value, _ctx| {
            let value = value.clone();
            async move {
                let (by,): (i64,) = args.decode()?;
                Value::new(&(value.fetch_add(by, Ordering::SeqCst) + by))
            }
        })
        .method("value", move |_args, _ctx| {
            let v = v2.load(Ordering::SeqCst);
            async move { Value::new(&v) }
        })
}

/// The demo service used across tests.
pub fn demo() -> Methods {
    Methods::new("Demo")
        .method("square", |args: Value, _ctx| async move {
            let (n,): (i64,) = args.decode()?;
            Value::new(&(n * n))
        })
        .method("makeCounter", |args: Value, ctx| async move {
            let (start,): (i64,) = args.decode()?;
            Ok(Value::capability(ctx.export(counter(start))))
        })
        .method("callMeBack", |args: Value, _ctx| async move {
            let f = args.cap(0)?;
            let r = f.call("call", Value::new(&(10,))?).await?;
            let r: serde_json::Value = r.decode()?;
            Value::new(&format!("callback returned {r}"))
        })
        .method("echoCap", |args: Value, _ctx| async move {
            Ok(Value::capability(args.cap(0)?))
        })
        .method("fail", |_args, _ctx| async move {
            Err::<Value, _>(Status::new(Code::InvalidArgument, "bad thing"))
        })
        .method("echo", |args: Value, _ctx| async move { Ok(args) })
        .method("incrementCounter", |args: Value, _ctx| async move {
            let (_, by): (serde_json::Value, i64) = args.decode()?;
            args.cap(0)?.call("increment", Value::new(&(by,))?).await
        })
        .method("makeNested", |args: Value, ctx| async move {
            let (start,): (i64,) = args.decode()?;
            let value = serde_json::json!({"counter": {"$cap": 0}, "list": [1, {"$cap": 0}]});
            Value::with_caps(&value, vec![ctx.export(counter(start))])
        })
        .stream("count", |args: Value, _ctx| async move {
            let (n,): (u64,) = args.decode()?;
            Ok(futures_util::stream::iter((0..n).map(|i| Value::new(&i))))
        })
}

/// A connected pair over memory whose frames take `delay` each way: a relay
/// task in the middle holds each frame for `delay`, keeping their order.
pub fn delayed_pair(registry: Registry, delay: Duration) -> (Session, Session) {
    let tc = TransportConfig::default();
    let (client_end, relay_a) = memory_pair(&tc);
    let (relay_b, server_end) = memory_pair(&tc);
    let Transport {
        sender: a_tx,
        receiver: a_rx,
        ..
    } = relay_a;
    let Transport {
        sender: b_tx,
        receiver: b_rx,
        ..
    } = relay_b;
    delay_line(a_rx, b_tx, delay);
    delay_line(b_rx, a_tx, delay);
    let server = Session::new(server_end, registry, SessionConfig::default());
    let client = Session::new(client_end, Registry::new(), SessionConfig::default());
    (client, server)
}

fn delay_line(mut from: transport::FrameReceiver, to: transport::FrameSender, delay: Duration) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, bytes::Bytes)>();
    tokio::spawn(async move {
        while let Ok(Some(frame)) = from.recv().await {
            if tx.send((Instant::now() + delay, frame)).is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        while let Some((at, frame)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.send(frame).await.is_err() {
                break;
            }
        }
        let _ = to.close(transport::CloseReason::normal()).await;
    });
}

pub fn demo_registry() -> (Registry, capwire::ServeHandle) {
    let registry = Registry::new();
    let handle = registry.serve("demo", "1.0", demo()).expect("serve");
    (registry, handle)
}

/// A local capability with one method, `call(n) -> n + 1`.
pub fn plus_one() -> Capability {
    Capability::local(
        Methods::new("PlusOne").method("call", |args: Value, _ctx| async move {
            let (n,): (i64,) = args.decode()?;
            Value::new(&(n + 1))
        }),
    )
}

/// Awaits `fut`, failing the test if it takes longer than `limit`.
pub async fn within<F: Future>(limit: Duration, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: not done within {limit:?}"),
    }
}

/// Yields until `cond` holds; fails after 5 s of wall-clock time. Only for
/// conditions that need other tasks to run, not timers (the paused clock
/// does not advance while this loop keeps the runtime busy).
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "timed out waiting for {what}"
        );
        tokio::task::yield_now().await;
    }
}

/// Asserts code and reason of an error.
#[track_caller]
pub fn assert_status(result: &Result<Value, Status>, code: Code, reason: Option<Reason>) {
    match result {
        Ok(v) => panic!("expected {code}, got a value: {v:?}"),
        Err(s) => {
            assert_eq!(s.code, code, "{s}");
            assert_eq!(s.reason, reason, "{s}");
        }
    }
}

/// Reported by a [`probe`] handler when it starts.
#[derive(Debug, Clone)]
pub struct Started {
    pub method: String,
    pub call_id: Option<u64>,
    pub deadline: Option<Instant>,
    pub at: Instant,
}

/// Reported by a [`probe`] handler when its future is dropped (finished or stopped).
#[derive(Debug, Clone)]
pub struct Stopped {
    pub method: String,
    pub call_id: Option<u64>,
    /// Whether `ctx.is_cancelled()` held when the handler was dropped.
    pub cancelled: bool,
    /// Whether the handler ran to its end.
    pub completed: bool,
    pub at: Instant,
}

struct StopReporter {
    tx: mpsc::UnboundedSender<Stopped>,
    ctx: CallContext,
    completed: bool,
}

impl Drop for StopReporter {
    fn drop(&mut self) {
        let _ = self.tx.send(Stopped {
            method: self.ctx.method().to_owned(),
            call_id: self.ctx.call_id(),
            cancelled: self.ctx.is_cancelled(),
            completed: self.completed,
            at: Instant::now(),
        });
    }
}

/// What a [`probe`] reports.
pub struct ProbeEvents {
    pub started: mpsc::UnboundedReceiver<Started>,
    pub stopped: mpsc::UnboundedReceiver<Stopped>,
}

impl ProbeEvents {
    pub async fn started(&mut self) -> Started {
        within(
            Duration::from_secs(5),
            "a handler start",
            self.started.recv(),
        )
        .await
        .expect("probe alive")
    }

    pub async fn stopped(&mut self) -> Stopped {
        within(
            Duration::from_secs(5),
            "a handler stop",
            self.stopped.recv(),
        )
        .await
        .expect("probe alive")
    }

    /// True when no handler reported a stop so far.
    pub fn none_stopped(&mut self) -> bool {
        self.stopped.try_recv().is_err()
    }
}

/// Wraps handler `body` so that it reports its start and its stop.
pub fn probed<F, Fut>(
    events: &(
        mpsc::UnboundedSender<Started>,
        mpsc::UnboundedSender<Stopped>,
    ),
    body: F,
) -> impl Fn(Value, CallContext) -> futures_util::future::BoxFuture<'static, Result<Value, Status>>
       + Send
       + Sync
       + 'static
where
    F: Fn(Value, CallContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, Status>> + Send + 'static,
{
    use futures_util::FutureExt;
    let (started, stopped) = events.clone();
    let body = Arc::new(body);
    move |args, ctx: CallContext| {
        let started = started.clone();
        let stopped = stopped.clone();
        let body = body.clone();
        async move {
            let _ = started.send(Started {
                method: ctx.method().to_owned(),
                call_id: ctx.call_id(),
                deadline: ctx.deadline(),
                at: Instant::now(),
            });
            let mut reporter = StopReporter {
                tx: stopped,
                ctx: ctx.clone(),
                completed: false,
            };
            let r = body(args, ctx).await;
            reporter.completed = true;
            r
        }
        .boxed()
    }
}

/// Channels for [`probed`] handlers.
pub fn probe_channels() -> (
    (
        mpsc::UnboundedSender<Started>,
        mpsc::UnboundedSender<Stopped>,
    ),
    ProbeEvents,
) {
    let (s_tx, s_rx) = mpsc::unbounded_channel();
    let (d_tx, d_rx) = mpsc::unbounded_channel();
    (
        (s_tx, d_tx),
        ProbeEvents {
            started: s_rx,
            stopped: d_rx,
        },
    )
}

/// An object with `hang` (never returns), `sleep([ms])` (returns `ms` after
/// sleeping) and `idem_sleep([ms])` (the same, marked idempotent), each
/// reporting its start and stop.
pub fn probe() -> (Methods, ProbeEvents) {
    let (tx, events) = probe_channels();
    let sleep = |args: Value, _ctx: CallContext| async move {
        let (ms,): (u64,) = args.decode()?;
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Value::new(&ms)
    };
    let methods = Methods::new("Probe")
        .method(
            "hang",
            probed(&tx, |_args, _ctx| async {
                std::future::pending::<()>().await;
                Ok(Value::null())
            }),
        )
        .method("sleep", probed(&tx, sleep))
        .method("idem_sleep", probed(&tx, sleep))
        .idempotent("idem_sleep");
    (methods, events)
}

/// A registry serving [`probe`] as `probe` 1.0, and the probe's reports.
pub fn probe_registry() -> (Registry, capwire::ServeHandle, ProbeEvents) {
    let (methods, events) = probe();
    let registry = Registry::new();
    let handle = registry.serve("probe", "1.0", methods).expect("serve");
    (registry, handle, events)
}

/// A peer that speaks raw capwire/1 frames to a [`Session`] over memory, to
/// test what the session sends and how it treats bad input.
pub struct Raw {
    pub transport: Transport,
    pub codec: Codec,
}

impl Raw {
    /// A session serving `registry` and a raw peer connected to it. The
    /// session's `hello` has been read; the raw peer has sent nothing yet.
    pub async fn connect(
        registry: Registry,
        config: SessionConfig,
        tc: &TransportConfig,
    ) -> (Session, Raw) {
        let (a, b) = memory_pair(tc);
        let session = Session::new(a, registry, config);
        let mut raw = Raw {
            transport: b,
            codec: Codec::Json,
        };
        match raw.recv().await {
            Some(Frame::Hello(h)) => assert_eq!(h.v, 1),
            other => panic!("expected the session's hello, got {other:?}"),
        }
        (session, raw)
    }

    /// [`Raw::connect`] followed by a valid `hello`.
    pub async fn handshake(registry: Registry, config: SessionConfig) -> (Session, Raw) {
        let (session, raw) = Raw::connect(registry, config, &TransportConfig::default()).await;
        raw.send(Frame::Hello(Hello::new())).await;
        (session, raw)
    }

    pub async fn send(&self, frame: Frame) {
        let bytes = codec::encode(&frame, self.codec).expect("encode");
        self.send_bytes(&bytes).await;
    }

    pub async fn send_bytes(&self, bytes: &[u8]) {
        self.transport
            .sender
            .send(bytes.to_vec().into())
            .await
            .expect("the session's end is open");
    }

    /// The next frame, or `None` once the session closed the connection.
    /// Fails the test when nothing arrives within 5 s (of the test's clock).
    pub async fn recv(&mut self) -> Option<Frame> {
        let next = within(
            Duration::from_secs(5),
            "a frame from the session",
            self.transport.receiver.recv(),
        )
        .await;
        match next {
            Ok(Some(bytes)) => Some(
                codec::decode(&bytes)
                    .expect("the session sent a frame that decodes")
                    .0,
            ),
            Ok(None) => None,
            Err(TransportError::ClosedByPeer(_)) => None,
            Err(e) => panic!("transport error: {e}"),
        }
    }

    /// The next frame, which must be a `result`; returns its id and outcome.
    pub async fn result(&mut self) -> (u64, Outcome) {
        match self.recv().await {
            Some(Frame::Result(r)) => (r.id, r.outcome),
            other => panic!("expected a result, got {other:?}"),
        }
    }

    /// The next frame must be a `result` for `id` with an error; returns it.
    pub async fn error(&mut self, id: u64) -> Status {
        match self.result().await {
            (got, Outcome::Err(s)) if got == id => s,
            other => panic!("expected an error result for {id}, got {other:?}"),
        }
    }

    /// The session must send `goaway` with `code`/`reason`, then close.
    pub async fn expect_goaway_and_close(&mut self, code: Code, reason: Option<Reason>) -> Status {
        let status = match self.recv().await {
            Some(Frame::Goaway(g)) => {
                assert_eq!(g.grace_ms, 0, "an error goaway closes at once");
                g.status
            }
            other => panic!("expected goaway, got {other:?}"),
        };
        assert_eq!(status.code, code, "{status}");
        assert_eq!(status.reason, reason, "{status}");
        match self.recv().await {
            None => {}
            Some(f) => panic!("expected the connection to close after goaway, got {f:?}"),
        }
        status
    }

    /// Sends a call of `method` on `cap` with JSON `args`.
    pub async fn call(&self, id: u64, cap: u64, method: &str, args: serde_json::Value) {
        self.send(Frame::Call(call_frame(id, cap, method, args)))
            .await;
    }

    /// Lets `session` bootstrap from this raw peer, which answers with its
    /// export `cap`: returns the session's handle to it. Sends `hello` first.
    pub async fn serve_bootstrap(&mut self, session: &Session, cap: u64) -> Capability {
        self.send(Frame::Hello(Hello::new())).await;
        let boot = tokio::spawn({
            let session = session.clone();
            async move { session.bootstrap("x", None).await }
        });
        let Some(Frame::Call(b)) = self.recv().await else {
            panic!("expected the bootstrap call")
        };
        self.send(Frame::Result(capwire::proto::CallResult {
            id: b.id,
            outcome: Outcome::Ok {
                value: Payload::encode(Codec::Json, &serde_json::json!({"$cap": 0})).unwrap(),
                caps: vec![CapDescriptor::Export(cap)],
            },
        }))
        .await;
        boot.await.expect("bootstrap task").expect("bootstrap")
    }

    /// Bootstraps `name` as question `id`; returns the capability id.
    pub async fn bootstrap(&mut self, id: u64, name: &str) -> u64 {
        self.call(id, 0, "bootstrap", serde_json::json!({ "name": name }))
            .await;
        match self.result().await {
            (got, Outcome::Ok { caps, .. }) if got == id => match caps.as_slice() {
                [CapDescriptor::Export(cap)] => *cap,
                other => panic!("bootstrap returned {other:?}"),
            },
            other => panic!("bootstrap failed: {other:?}"),
        }
    }
}

/// A plain `call` frame.
pub fn call_frame(id: u64, cap: u64, method: &str, args: serde_json::Value) -> Call {
    Call {
        id,
        target: Target::Cap(cap),
        method: method.to_owned(),
        args: Payload::encode(Codec::Json, &args).expect("encode args"),
        caps: vec![],
        parent: None,
        deadline_ms: None,
        keep: false,
        stream: None,
    }
}
