//! The protocol's races, stepped frame by frame between two real sessions.
//!
//! A [`Gate`] holds every frame A and B send; each test decides which
//! direction moves when, so that two frames cross "on the wire" in the order
//! the race needs, and checks the exact frames that follow and the state of
//! both sessions' tables. Where a session cannot produce one side of a race
//! through its API (it keeps a capability alive while a call on it is in
//! flight, and a kept answer while calls pipelined on it are), the gate
//! speaks for A with crafted frames.
//!
//! The last tests stress the lock-free parts (the `FrameSender` backlog and
//! stream credit) on a multi-thread runtime.

mod common;

use std::sync::Arc;
use std::time::Duration;

use capwire::proto::{
    CallResult, Cancel, CapDescriptor, Credit, Finish, Frame, Outcome, Ping, Pong, Release,
    Revoked, Target,
};
use capwire::transport::{memory_pair, CloseReason, TransportConfig};
use capwire::{
    Capability, Code, Event, Methods, Reason, Registry, ServeHandle, Status, StreamOptions, Value,
};
use common::gate::{expect_op, Dir, Gate};
use common::{call_frame, eventually, within};
use futures_util::{FutureExt, StreamExt};
use serde_json::json;
use tokio::sync::{broadcast, mpsc, Semaphore};

use Dir::{AtoB, BtoA};

const FIVE_S: Duration = Duration::from_secs(5);

/// Lets waiting handlers finish, one permit each, when the test says so.
#[derive(Clone)]
struct Latch(Arc<Semaphore>);

impl Latch {
    fn new() -> Latch {
        Latch(Arc::new(Semaphore::new(0)))
    }

    fn open(&self, n: usize) {
        self.0.add_permits(n);
    }

    async fn pass(&self) -> Result<(), Status> {
        self.0
            .acquire()
            .await
            .map_err(|_| Status::new(Code::Internal, "latch closed"))?
            .forget();
        Ok(())
    }
}

/// A handler that blocks its thread (and so the delivery of a pipeline
/// queue it was started from) until the test lets it go.
#[derive(Clone)]
struct Blocker {
    entered: mpsc::UnboundedSender<()>,
    go: Arc<Semaphore>,
}

/// Closes the blocker's semaphore when dropped, so that a `block` handler
/// returns also when the test fails: a multi-thread runtime does not finish
/// shutting down while one of its threads is blocked.
struct Unblock(Arc<Semaphore>);

impl Drop for Unblock {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// `get() -> n`, `wait() -> n` once the latch lets it, `block()` (see [`Blocker`]).
fn widget(n: i64, latch: Latch, blocker: Blocker) -> Methods {
    Methods::new("Widget")
        .method("get", move |_args, _ctx| async move { Value::new(&n) })
        .method("wait", move |_args, _ctx| {
            let latch = latch.clone();
            async move {
                latch.pass().await?;
                Value::new(&n)
            }
        })
        .method("block", move |_args, _ctx| {
            let blocker = blocker.clone();
            async move {
                let _ = blocker.entered.send(());
                let go = tokio::task::block_in_place(|| {
                    tokio::runtime::Handle::current().block_on(blocker.go.acquire())
                });
                go.map_err(|_| Status::new(Code::Internal, "blocker closed"))?
                    .forget();
                Value::new("unblocked")
            }
        })
}

/// The service B serves as `svc`:
/// - `make([n])`: a new widget, at once; `makeSlow([n])`: the same once the latch lets it;
/// - `same()`: the same widget every time (one export id);
/// - `get()`: 1; `wait()`: `"waited"` once the latch lets it;
/// - `count([n])`: a stream of 0..n.
fn factory(latch: Latch, blocker: Blocker) -> Methods {
    let same = Capability::local(widget(0, latch.clone(), blocker.clone()));
    let (l1, b1) = (latch.clone(), blocker.clone());
    let (l2, b2) = (latch.clone(), blocker);
    Methods::new("Factory")
        .method("make", move |args: Value, ctx| {
            let w = (l1.clone(), b1.clone());
            async move {
                let (n,): (i64,) = args.decode()?;
                Ok(Value::capability(ctx.export(widget(n, w.0, w.1))))
            }
        })
        .method("makeSlow", move |args: Value, ctx| {
            let w = (l2.clone(), b2.clone());
            async move {
                let (n,): (i64,) = args.decode()?;
                w.0.pass().await?;
                Ok(Value::capability(ctx.export(widget(n, w.0, w.1))))
            }
        })
        .method("same", move |_args, _ctx| {
            let same = same.clone();
            async move { Ok(Value::capability(same)) }
        })
        .method("get", |_args, _ctx| async { Value::new(&1) })
        .method("wait", move |_args, _ctx| {
            let latch = latch.clone();
            async move {
                latch.pass().await?;
                Value::new("waited")
            }
        })
        .stream("count", |args: Value, _ctx| async move {
            let (n,): (u64,) = args.decode()?;
            Ok(futures_util::stream::iter((0..n).map(|i| Value::new(&i))))
        })
}

struct Fixture {
    registry: Registry,
    /// Dropping it revokes `svc` on every session.
    handle: Option<ServeHandle>,
    latch: Latch,
    entered: mpsc::UnboundedReceiver<()>,
    go: Arc<Semaphore>,
}

fn fixture() -> Fixture {
    let latch = Latch::new();
    let (entered_tx, entered) = mpsc::unbounded_channel();
    let go = Arc::new(Semaphore::new(0));
    let blocker = Blocker {
        entered: entered_tx,
        go: go.clone(),
    };
    let registry = Registry::new();
    let handle = registry
        .serve("svc", "1.0", factory(latch.clone(), blocker))
        .expect("serve");
    Fixture {
        registry,
        handle: Some(handle),
        latch,
        entered,
        go,
    }
}

/// A gate whose A has bootstrapped `svc` from B (B's export `svc`).
async fn setup() -> (Gate, Capability, Fixture) {
    let f = fixture();
    let mut gate = Gate::serving(f.registry.clone()).await;
    let svc = gate.bootstrap("svc").await;
    assert_eq!(gate.b.stats().exports, 1, "svc is B's only export");
    (gate, svc, f)
}

fn args<T: serde::Serialize>(v: &T) -> Value {
    Value::new(v).expect("encode the arguments")
}

fn remote_id(cap: &Capability) -> u64 {
    cap.remote_id().expect("a capability B exported")
}

#[track_caller]
fn call_of(frame: Frame) -> capwire::proto::Call {
    match frame {
        Frame::Call(call) => call,
        other => panic!("expected a call, got {other:?}"),
    }
}

#[track_caller]
fn result_of(frame: Frame) -> (u64, Outcome) {
    match frame {
        Frame::Result(CallResult { id, outcome }) => (id, outcome),
        other => panic!("expected a result, got {other:?}"),
    }
}

/// The value of an `ok` outcome, as JSON, and its descriptors.
#[track_caller]
fn ok_of(outcome: Outcome) -> (serde_json::Value, Vec<CapDescriptor>) {
    match outcome {
        Outcome::Ok { value, caps } => (value.to_json().expect("a JSON value"), caps),
        Outcome::Err(status) => panic!("expected a value, got {status}"),
    }
}

#[track_caller]
fn err_of(outcome: Outcome) -> Status {
    match outcome {
        Outcome::Err(status) => status,
        Outcome::Ok { value, .. } => panic!("expected an error, got {:?}", value.to_json()),
    }
}

/// The one capability a result introduces.
#[track_caller]
fn exported(caps: &[CapDescriptor]) -> u64 {
    match caps {
        [CapDescriptor::Export(id)] => *id,
        other => panic!("expected one export, got {other:?}"),
    }
}

#[track_caller]
fn assert_code(status: &Status, code: Code, reason: Option<Reason>) {
    assert_eq!(status.code, code, "{status}");
    assert_eq!(status.reason, reason, "{status}");
}

#[track_caller]
fn assert_err(result: &Result<Value, Status>, code: Code, reason: Option<Reason>) {
    match result {
        Ok(v) => panic!("expected {code}, got a value: {:?}", v.to_json()),
        Err(s) => assert_code(s, code, reason),
    }
}

/// A call frame pipelined on answer `answer` (empty path).
fn pipelined(id: u64, answer: u64, method: &str) -> Frame {
    let mut call = call_frame(id, 0, method, json!([]));
    call.target = Target::Answer {
        id: answer,
        path: vec![],
    };
    Frame::Call(call)
}

/// The events a session emitted since `events` subscribed (or was last drained).
fn drain(events: &mut broadcast::Receiver<Event>) -> Vec<Event> {
    let mut out = Vec::new();
    loop {
        match events.try_recv() {
            Ok(event) => out.push(event),
            Err(broadcast::error::TryRecvError::Lagged(_)) => {}
            Err(_) => return out,
        }
    }
}

/// The connection-level errors among `events`.
fn errors_in(events: &[Event]) -> Vec<Status> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Error { status } => Some(status.clone()),
            _ => None,
        })
        .collect()
}

/// The connection-level errors a session reported since `events` subscribed.
fn errors(events: &mut broadcast::Receiver<Event>) -> Vec<Status> {
    errors_in(&drain(events))
}

/// Neither session broke off: no connection error (a protocol violation
/// would be one, with a `goaway`), and both are still open.
fn assert_healthy(
    gate: &Gate,
    a_events: &mut broadcast::Receiver<Event>,
    b_events: &mut broadcast::Receiver<Event>,
) {
    assert_eq!(errors(a_events), vec![], "A reported an error");
    assert_eq!(errors(b_events), vec![], "B reported an error");
    assert!(
        gate.a.closed().now_or_never().is_none(),
        "A's session ended\ntrace:\n{}",
        gate.trace()
    );
    assert!(
        gate.b.closed().now_or_never().is_none(),
        "B's session ended\ntrace:\n{}",
        gate.trace()
    );
    assert!(
        !gate.trace().contains("Goaway"),
        "a goaway crossed\ntrace:\n{}",
        gate.trace()
    );
}

/// The outcomes of the stream answers among `events`.
fn stream_outcomes(events: &[Event]) -> Vec<Code> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Stream { outcome, .. } => Some(*outcome),
            _ => None,
        })
        .collect()
}

/// A makes a widget through the gate (a plain call, both frames cross).
async fn make_widget(gate: &mut Gate, svc: &Capability, n: i64) -> Capability {
    let made = tokio::spawn(svc.call("make", args(&(n,))));
    gate.expect(AtoB, "call").await;
    gate.expect(BtoA, "result").await;
    within(FIVE_S, "make", made)
        .await
        .expect("the task")
        .expect("make")
        .cap(0)
        .expect("a widget")
}

// ---------------------------------------------------------------------------
// 1. cancel vs result

#[derive(Debug, Clone, Copy)]
enum CancelRace {
    /// A's `cancel` reaches B, then B's `result` reaches A.
    CancelFirst,
    /// B's `result` reaches A, then A's `cancel` reaches B.
    ResultFirst,
    /// The `result` reaches A before the call future is dropped (unpolled).
    AnsweredBeforeDrop,
}

/// B answers a call with a new capability; A drops the call future while
/// the result is held at the gate. Whatever the order, A's question is
/// gone, B ignores the cancel, and the capability in the unwanted result is
/// released: B's exports return to their baseline.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn cancel_vs_result() {
    for race in [
        CancelRace::CancelFirst,
        CancelRace::ResultFirst,
        CancelRace::AnsweredBeforeDrop,
    ] {
        cancel_vs_result_in(race).await;
    }
}

async fn cancel_vs_result_in(race: CancelRace) {
    let (mut gate, svc, _f) = setup().await;
    let (mut a_events, mut b_events) = (gate.a.events(), gate.b.events());
    let baseline = gate.b.stats().exports;

    let mut call = Box::pin(svc.call("make", args(&(5,))));
    assert!(futures_util::poll!(&mut call).is_pending());
    let sent = call_of(gate.expect(AtoB, "call").await);
    assert_eq!((sent.method.as_str(), sent.keep), ("make", false));
    gate.settle().await;
    let (id, outcome) = result_of(gate.hold(BtoA).await);
    assert_eq!(id, sent.id, "{race:?}");
    let widget = exported(&ok_of(outcome).1);
    assert_eq!(gate.b.stats().exports, baseline + 1, "{race:?}");
    assert_eq!(
        gate.b.stats().answers,
        0,
        "a plain answer ends with its result"
    );

    let cancel = Frame::Cancel(Cancel { id: sent.id });
    let release = Frame::Release(Release { cap: widget, n: 1 });
    match race {
        CancelRace::CancelFirst => {
            drop(call);
            assert_eq!(gate.a.stats().questions, 0, "dropped: the question is gone");
            gate.settle().await;
            assert_eq!(gate.held(AtoB), vec![cancel.clone()], "{race:?}");
            gate.a_to_b().await;
            gate.settle().await;
            assert_eq!(
                gate.held_ops(BtoA),
                ["result"],
                "{race:?}: B answers nothing more to a cancel that crossed its result"
            );
            gate.b_to_a().await;
            gate.settle().await;
            assert_eq!(gate.held(AtoB), vec![release.clone()], "{race:?}");
        }
        CancelRace::ResultFirst => {
            drop(call);
            gate.settle().await;
            gate.b_to_a().await;
            gate.settle().await;
            assert_eq!(
                gate.held(AtoB),
                vec![cancel.clone(), release.clone()],
                "{race:?}: the unwanted result's capability goes back behind the cancel"
            );
            gate.a_to_b().await;
        }
        CancelRace::AnsweredBeforeDrop => {
            gate.b_to_a().await;
            gate.settle().await;
            assert_eq!(gate.a.stats().questions, 0, "the result settled it");
            assert!(gate.held(AtoB).is_empty());
            drop(call);
            gate.settle().await;
            assert_eq!(
                gate.held(AtoB),
                vec![release.clone()],
                "{race:?}: no cancel for an answered call, and its value is released"
            );
        }
    }
    assert_eq!(
        gate.b.stats().exports,
        baseline + 1,
        "{race:?}: held until the release crosses"
    );
    assert_eq!(gate.a_to_b().await, release);
    gate.assert_quiet().await;
    assert_eq!(gate.b.stats().exports, baseline, "{race:?}");
    assert_eq!(gate.b.stats().answers, 0, "{race:?}");
    assert_eq!(gate.a.stats().questions, 0, "{race:?}");
    assert_eq!(gate.a.stats().imports, 1, "{race:?}: only svc");
    assert_healthy(&gate, &mut a_events, &mut b_events);
}

// ---------------------------------------------------------------------------
// 2. release vs call

/// A drops its last handle to an import while a call on it is in flight:
/// the call keeps the handle, so A's `release` follows the call's result on
/// the wire, and B answers the call before it frees the export.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn release_vs_call_in_flight_through_the_session() {
    let (mut gate, svc, _f) = setup().await;
    let (mut a_events, mut b_events) = (gate.a.events(), gate.b.events());
    let widget = make_widget(&mut gate, &svc, 5).await;
    let w = remote_id(&widget);
    assert_eq!(gate.b.stats().exports, 2);

    let mut get = Box::pin(widget.call("get", Value::null()));
    assert!(futures_util::poll!(&mut get).is_pending());
    drop(widget);
    gate.settle().await;
    assert_eq!(
        gate.held_ops(AtoB),
        ["call"],
        "no release while a call on the capability is in flight"
    );
    let call = call_of(gate.a_to_b().await);
    assert_eq!(call.target, Target::Cap(w));
    gate.settle().await;
    let (id, outcome) = result_of(gate.b_to_a().await);
    assert_eq!((id, ok_of(outcome).0), (call.id, json!(5)));
    let got = within(FIVE_S, "get", get).await.expect("get");
    assert_eq!(got.decode::<i64>().expect("i64"), 5);
    gate.settle().await;
    assert_eq!(
        gate.held(AtoB),
        vec![Frame::Release(Release { cap: w, n: 1 })]
    );
    assert_eq!(gate.b.stats().exports, 2);
    gate.a_to_b().await;
    gate.assert_quiet().await;
    assert_eq!(gate.b.stats().exports, 1);
    assert_eq!(gate.a.stats().imports, 1);
    assert_healthy(&gate, &mut a_events, &mut b_events);
}

/// On the wire, a peer may send a call and then release the capability
/// before the answer (the gate speaks for A): B answers the call — also one
/// whose handler is still running when the release arrives — and frees the
/// export at the release; a call sent after the release is `not_found`.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_release_right_behind_a_call_is_answered_then_freed() {
    let (mut gate, svc, f) = setup().await;
    let (mut a_events, mut b_events) = (gate.a.events(), gate.b.events());
    let s = remote_id(&svc);

    // The gate's own widgets (questions 1001, 1011), one introduction each.
    let mut widgets = Vec::new();
    for (id, n) in [(1001, 9), (1011, 10)] {
        gate.inject(AtoB, Frame::Call(call_frame(id, s, "make", json!([n]))))
            .await;
        let (got, outcome) = result_of(gate.drop_expect(BtoA, "result").await);
        assert_eq!(got, id);
        widgets.push(exported(&ok_of(outcome).1));
    }
    let (w1, w2) = (widgets[0], widgets[1]);
    assert_eq!(gate.b.stats().exports, 3);

    // A handler that answers at once: call, then release, in one burst.
    gate.inject(AtoB, Frame::Call(call_frame(1002, w1, "get", json!([]))))
        .await;
    gate.inject(AtoB, Frame::Release(Release { cap: w1, n: 1 }))
        .await;
    let (id, outcome) = result_of(gate.drop_expect(BtoA, "result").await);
    assert_eq!((id, ok_of(outcome).0), (1002, json!(9)));
    gate.settle().await;
    assert_eq!(gate.b.stats().exports, 2, "w1 is freed after its call");

    // A handler still running when the release arrives.
    gate.inject(AtoB, Frame::Call(call_frame(1012, w2, "wait", json!([]))))
        .await;
    gate.inject(AtoB, Frame::Release(Release { cap: w2, n: 1 }))
        .await;
    gate.settle().await;
    assert_eq!(gate.b.stats().exports, 1, "the release frees the export");
    assert_eq!(gate.b.stats().answers, 1, "the call on it still runs");
    assert!(gate.held(BtoA).is_empty());

    // Calls sent after the release find nothing.
    for (id, cap) in [(1013, w2), (1003, w1)] {
        gate.inject(AtoB, Frame::Call(call_frame(id, cap, "get", json!([]))))
            .await;
        let (got, outcome) = result_of(gate.drop_expect(BtoA, "result").await);
        assert_eq!(got, id);
        assert_code(&err_of(outcome), Code::NotFound, None);
    }

    // The running call is still answered, with its value.
    f.latch.open(1);
    let (id, outcome) = result_of(gate.drop_expect(BtoA, "result").await);
    assert_eq!((id, ok_of(outcome).0), (1012, json!(10)));
    gate.assert_quiet().await;
    assert_eq!(gate.b.stats().answers, 0);
    assert_eq!(gate.b.stats().exports, 1);
    assert_healthy(&gate, &mut a_events, &mut b_events);
}

#[derive(Debug, Clone, Copy)]
enum Reintroduction {
    /// A's release reaches B, then B's result (introducing the id again) reaches A.
    ReleaseFirst,
    /// B's result reaches A after A dropped its handle, then the release reaches B.
    ResultFirst,
    /// B's result reaches A while A still holds the handle (two introductions).
    ResultBeforeDrop,
}

/// §4.4: a `release` crossing a new introduction of the same id on the wire
/// is harmless: both sides agree on the count afterwards, which the last
/// release proves (more than B's count would be a violation, less would
/// leave the export behind).
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn release_vs_reintroduction() {
    for race in [
        Reintroduction::ReleaseFirst,
        Reintroduction::ResultFirst,
        Reintroduction::ResultBeforeDrop,
    ] {
        release_vs_reintroduction_in(race).await;
    }
}

async fn release_vs_reintroduction_in(race: Reintroduction) {
    let (mut gate, svc, _f) = setup().await;
    let (mut a_events, mut b_events) = (gate.a.events(), gate.b.events());
    let first = tokio::spawn(svc.call("same", Value::null()));
    gate.expect(AtoB, "call").await;
    let (_, outcome) = result_of(gate.b_to_a().await);
    let w = exported(&ok_of(outcome).1);
    let mut first = Some(
        within(FIVE_S, "same", first)
            .await
            .expect("task")
            .expect("same"),
    );
    assert_eq!(gate.b.stats().exports, 2);

    let mut again = Box::pin(svc.call("same", Value::null()));
    assert!(futures_util::poll!(&mut again).is_pending());
    gate.expect(AtoB, "call").await;
    gate.settle().await;
    let (_, outcome) = result_of(gate.hold(BtoA).await);
    assert_eq!(exported(&ok_of(outcome).1), w, "the same export id again");

    let release_one = Frame::Release(Release { cap: w, n: 1 });
    match race {
        Reintroduction::ReleaseFirst => {
            drop(first.take());
            gate.settle().await;
            assert_eq!(gate.held(AtoB), vec![release_one.clone()], "{race:?}");
            gate.a_to_b().await;
            gate.settle().await;
            assert_eq!(gate.b.stats().exports, 2, "{race:?}: one introduction left");
            gate.b_to_a().await;
        }
        Reintroduction::ResultFirst => {
            drop(first.take());
            gate.settle().await;
            gate.b_to_a().await;
            gate.settle().await;
            assert_eq!(gate.held(AtoB), vec![release_one.clone()], "{race:?}");
            gate.a_to_b().await;
        }
        Reintroduction::ResultBeforeDrop => {
            gate.b_to_a().await;
            gate.settle().await;
        }
    }
    let second = within(FIVE_S, "same again", again)
        .await
        .expect("same again");
    let cap = second.cap(0).expect("the widget");
    assert_eq!(remote_id(&cap), w);
    if let Reintroduction::ResultBeforeDrop = race {
        drop(first.take());
        gate.settle().await;
        assert!(
            gate.held(AtoB).is_empty(),
            "{race:?}: the second handle is the same import"
        );
    }

    // The widget still works, through the same id.
    let mut get = Box::pin(cap.call("get", Value::null()));
    assert!(futures_util::poll!(&mut get).is_pending());
    assert_eq!(call_of(gate.a_to_b().await).target, Target::Cap(w));
    gate.b_to_a().await;
    assert_eq!(
        within(FIVE_S, "get", get)
            .await
            .expect("get")
            .decode::<i64>()
            .expect("i64"),
        0
    );

    drop((second, cap));
    gate.settle().await;
    let n = match race {
        Reintroduction::ResultBeforeDrop => 2,
        _ => 1,
    };
    assert_eq!(
        gate.held(AtoB),
        vec![Frame::Release(Release { cap: w, n })],
        "{race:?}: A releases every introduction it received and has not released"
    );
    gate.a_to_b().await;
    gate.assert_quiet().await;
    assert_eq!(gate.b.stats().exports, 1, "{race:?}: the counts agreed");
    assert_eq!(gate.a.stats().imports, 1, "{race:?}");
    assert_healthy(&gate, &mut a_events, &mut b_events);
}

// ---------------------------------------------------------------------------
// 3. revoke vs pipelined

/// A kept call on `svc` and a call pipelined on its answer leave A in one
/// burst; `svc` is revoked while the kept call runs and the pipelined call
/// waits in its queue at B: both fail `failed_precondition`/`revoked`
/// ([S23], [S9]), nothing hangs, and every table ends empty.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn revoke_vs_a_running_kept_call_and_its_queued_pipelined_call() {
    let (mut gate, svc, mut f) = setup().await;
    let (mut a_events, mut b_events) = (gate.a.events(), gate.b.events());
    let s = remote_id(&svc);
    let made = svc.call("makeSlow", args(&(3,)));
    let on_it = tokio::spawn(made.call("get", Value::null()));
    let kept = tokio::spawn(made);
    gate.settle().await;
    assert_eq!(gate.held_ops(AtoB), ["call", "call"], "one burst");
    let k = call_of(gate.a_to_b().await);
    assert!(k.keep);
    assert_eq!(k.target, Target::Cap(s));
    let p = call_of(gate.a_to_b().await);
    assert_eq!(
        p.target,
        Target::Answer {
            id: k.id,
            path: vec![]
        }
    );
    gate.settle().await;
    assert_eq!(gate.b.stats().answers, 2);
    assert_eq!(gate.b.stats().pipelined_waiting, 1);

    drop(f.handle.take());
    gate.settle().await;
    let frames = gate.held(BtoA);
    assert_eq!(frames.len(), 3, "{frames:?}");
    assert_eq!(frames[0], Frame::Revoked(Revoked { caps: vec![s] }));
    for (frame, id) in frames[1..].iter().zip([k.id, p.id]) {
        let (got, outcome) = result_of(frame.clone());
        assert_eq!(got, id);
        assert_code(
            &err_of(outcome),
            Code::FailedPrecondition,
            Some(Reason::REVOKED),
        );
    }
    for _ in 0..3 {
        gate.b_to_a().await;
    }
    let kept = within(FIVE_S, "the kept call", kept).await.expect("task");
    let on_it = within(FIVE_S, "the pipelined call", on_it)
        .await
        .expect("task");
    assert_err(&kept, Code::FailedPrecondition, Some(Reason::REVOKED));
    assert_err(&on_it, Code::FailedPrecondition, Some(Reason::REVOKED));

    gate.settle().await;
    assert_eq!(
        gate.held(AtoB),
        vec![
            Frame::Release(Release { cap: s, n: 1 }),
            Frame::Finish(Finish { id: k.id })
        ],
        "A releases the revoked capability and finishes the kept question"
    );
    assert_eq!(
        gate.b.stats().answers,
        1,
        "the kept answer waits for finish"
    );
    gate.flush_all().await;
    gate.assert_quiet().await;
    assert_eq!(gate.b.stats().answers, 0);
    assert_eq!(gate.b.stats().exports, 0);
    assert_eq!(gate.a.stats().questions, 0);
    assert_eq!(gate.a.stats().imports, 0);
    assert_healthy(&gate, &mut a_events, &mut b_events);
}

#[derive(Debug, Clone, Copy)]
enum RevokeRace {
    /// A's calls reach B (after B revoked), then B's `revoked` reaches A.
    CallsFirst,
    /// B's `revoked` reaches A, then A's calls reach B.
    RevokedFirst,
}

/// A kept call on `svc` and a call pipelined on it are held at the gate
/// while B revokes `svc`, then cross the `revoked` in both orders: B answers
/// both `failed_precondition`/`revoked` — the pipelined one because a path
/// into an answer that settled with an error fails with that same status
/// ([S9]), although B rejected the kept call without running it — nothing
/// hangs, and every table ends empty.
///
/// Until 4120628 the pipelined call got `not_found` ("no answer N to
/// pipeline on"): a kept call rejected up front was never recorded as a kept
/// answer.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn revoke_vs_held_kept_and_pipelined_calls() {
    for race in [RevokeRace::CallsFirst, RevokeRace::RevokedFirst] {
        revoke_vs_held_calls_in(race).await;
    }
}

async fn revoke_vs_held_calls_in(race: RevokeRace) {
    let (mut gate, svc, mut f) = setup().await;
    let (mut a_events, mut b_events) = (gate.a.events(), gate.b.events());
    let s = remote_id(&svc);
    let made = svc.call("makeSlow", args(&(3,)));
    let on_it = tokio::spawn(made.call("get", Value::null()));
    let kept = tokio::spawn(made);
    gate.settle().await;
    assert_eq!(gate.held_ops(AtoB), ["call", "call"], "one burst");

    drop(f.handle.take());
    gate.settle().await;
    assert_eq!(
        gate.held(BtoA),
        vec![Frame::Revoked(Revoked { caps: vec![s] })]
    );
    let (k, p) = match race {
        RevokeRace::CallsFirst => {
            let k = call_of(gate.a_to_b().await);
            let p = call_of(gate.a_to_b().await);
            gate.settle().await;
            gate.expect(BtoA, "revoked").await;
            (k, p)
        }
        RevokeRace::RevokedFirst => {
            gate.expect(BtoA, "revoked").await;
            gate.settle().await;
            assert_eq!(
                gate.held_ops(AtoB),
                ["call", "call", "release"],
                "{race:?}: A releases what B revoked"
            );
            let k = call_of(gate.a_to_b().await);
            let p = call_of(gate.a_to_b().await);
            (k, p)
        }
    };
    assert!(k.keep);
    gate.settle().await;
    let results = gate.held(BtoA);
    assert_eq!(results.len(), 2, "{race:?}: {results:?}");
    for (frame, id) in results.into_iter().zip([k.id, p.id]) {
        let (got, outcome) = result_of(frame);
        assert_eq!(got, id, "{race:?}");
        assert_code(
            &err_of(outcome),
            Code::FailedPrecondition,
            Some(Reason::REVOKED),
        );
    }
    assert_eq!(
        gate.b.stats().answers,
        1,
        "{race:?}: the failed kept answer is held until `finish`"
    );

    gate.flush_all().await;
    let kept = within(FIVE_S, "the kept call", kept).await.expect("task");
    let on_it = within(FIVE_S, "the pipelined call", on_it)
        .await
        .expect("task");
    assert_err(&kept, Code::FailedPrecondition, Some(Reason::REVOKED));
    assert_err(&on_it, Code::FailedPrecondition, Some(Reason::REVOKED));
    gate.flush_all().await;
    gate.assert_quiet().await;
    assert_eq!(gate.b.stats().answers, 0, "{race:?}");
    assert_eq!(gate.b.stats().exports, 0, "{race:?}");
    assert_eq!(gate.a.stats().questions, 0, "{race:?}");
    assert_eq!(gate.a.stats().imports, 0, "{race:?}");
    assert_healthy(&gate, &mut a_events, &mut b_events);
}

// ---------------------------------------------------------------------------
// 4. finish vs pipelined delivery

/// A kept answer settles and starts delivering its queue of pipelined
/// calls; the first of them blocks its thread, so delivery is under way when
/// the caller's `finish` (and one more pipelined call) are read. The queued
/// calls are all answered, in order, and the answer is freed only after the
/// last of them. The gate speaks for A: a session sends `finish` only once
/// nothing it still waits on is pipelined on the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finish_vs_pipelined_delivery() {
    let (mut gate, svc, mut f) = setup().await;
    let _unblock = Unblock(f.go.clone());
    let (mut a_events, mut b_events) = (gate.a.events(), gate.b.events());
    let s = remote_id(&svc);

    let mut kept = call_frame(1001, s, "makeSlow", json!([7]));
    kept.keep = true;
    gate.inject(AtoB, Frame::Call(kept)).await;
    for (id, method) in [(1002, "block"), (1003, "get"), (1004, "get")] {
        gate.inject(AtoB, pipelined(id, 1001, method)).await;
    }
    eventually("the calls to wait for the kept answer", || {
        gate.b.stats().pipelined_waiting == 3
    })
    .await;

    f.latch.open(1);
    within(FIVE_S, "`block` to start", f.entered.recv())
        .await
        .expect("entered");
    // Delivery is under way, stuck in `block`.
    gate.inject(AtoB, pipelined(1005, 1001, "get")).await;
    gate.inject(AtoB, Frame::Finish(Finish { id: 1001 })).await;
    gate.inject(AtoB, Frame::Ping(Ping { nonce: 77 })).await;
    let (id, outcome) = result_of(gate.drop_expect(BtoA, "result").await);
    assert_eq!(id, 1001);
    let w = exported(&ok_of(outcome).1);
    assert_eq!(
        gate.drop_expect(BtoA, "pong").await,
        Frame::Pong(Pong { nonce: 77 }),
        "B read the finish"
    );
    let stats = gate.b.stats();
    assert_eq!(
        stats.answers, 5,
        "1001 (finished while delivering), 1002 running, 1003-1005 to deliver"
    );
    assert_eq!(
        stats.pipelined_waiting, 1,
        "1005 arrived during delivery: it waits behind"
    );

    f.go.add_permits(1);
    for (id, want) in [
        (1002, json!("unblocked")),
        (1003, json!(7)),
        (1004, json!(7)),
        (1005, json!(7)),
    ] {
        let (got, outcome) = result_of(gate.drop_expect(BtoA, "result").await);
        assert_eq!((got, ok_of(outcome).0), (id, want));
    }
    eventually("the finished answer to be freed", || {
        gate.b.stats().answers == 0
    })
    .await;
    assert_eq!(gate.b.stats().pipelined_waiting, 0);
    // Its widget is the gate's (one introduction, in the kept result).
    assert_eq!(gate.b.stats().exports, 2);
    gate.inject(AtoB, Frame::Release(Release { cap: w, n: 1 }))
        .await;
    gate.inject(AtoB, Frame::Ping(Ping { nonce: 78 })).await;
    gate.drop_expect(BtoA, "pong").await;
    assert_eq!(gate.b.stats().exports, 1);
    assert!(gate.held(BtoA).is_empty());
    assert_healthy(&gate, &mut a_events, &mut b_events);
}

// ---------------------------------------------------------------------------
// 5. goaway vs new calls

#[derive(Debug, Clone, Copy)]
enum GoawayRace {
    /// A's late call reaches B, then B's `goaway` reaches A.
    CallFirst,
    /// B's `goaway` reaches A, then A's late call reaches B.
    GoawayFirst,
}

/// B closes while A's call runs there: that call is answered within the
/// grace period; a call A sent before it heard the `goaway` is answered
/// `unavailable` by B without running ([S24]); a call A makes after it heard
/// the `goaway` fails here, `unavailable`, and never reaches B.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn goaway_vs_new_calls() {
    for race in [GoawayRace::CallFirst, GoawayRace::GoawayFirst] {
        goaway_vs_new_calls_in(race).await;
    }
}

async fn goaway_vs_new_calls_in(race: GoawayRace) {
    let (mut gate, svc, f) = setup().await;
    let (mut a_events, mut b_events) = (gate.a.events(), gate.b.events());
    let early = tokio::spawn(svc.call("wait", Value::null()));
    let c1 = call_of(gate.expect(AtoB, "call").await);
    gate.settle().await;
    assert_eq!(gate.b.stats().answers, 1);

    let closing = tokio::spawn({
        let b = gate.b.clone();
        async move { b.close().await }
    });
    gate.settle().await;
    match gate.hold(BtoA).await {
        Frame::Goaway(g) => {
            assert_eq!(g.status.code, Code::Ok, "{race:?}");
            assert_eq!(g.grace_ms, 5000, "{race:?}");
        }
        other => panic!("{race:?}: expected goaway, got {other:?}"),
    }
    // A has not heard it: this call goes out and crosses the goaway.
    let crossing = tokio::spawn(svc.call("get", Value::null()));
    gate.settle().await;
    let c2 = call_of(gate.hold(AtoB).await);
    match race {
        GoawayRace::CallFirst => {
            gate.a_to_b().await;
            gate.settle().await;
            gate.expect(BtoA, "goaway").await;
        }
        GoawayRace::GoawayFirst => {
            gate.expect(BtoA, "goaway").await;
            gate.settle().await;
            gate.a_to_b().await;
        }
    }
    gate.settle().await;
    let b_frames_in = gate.b.stats().frames_in;
    let (id, outcome) = result_of(gate.b_to_a().await);
    assert_eq!(id, c2.id, "{race:?}");
    assert_code(&err_of(outcome), Code::Unavailable, None);
    let crossing = within(FIVE_S, "the crossing call", crossing)
        .await
        .expect("task");
    assert_err(&crossing, Code::Unavailable, None);

    // A heard the goaway: a new call fails here.
    let out = gate.a.stats().frames_out;
    let late = within(FIVE_S, "the late call", svc.call("get", Value::null())).await;
    assert_err(&late, Code::Unavailable, None);
    gate.settle().await;
    assert_eq!(gate.a.stats().frames_out, out, "{race:?}: nothing sent");
    assert!(gate.held(AtoB).is_empty(), "{race:?}");
    assert_eq!(gate.b.stats().frames_in, b_frames_in, "{race:?}");
    assert!(
        !closing.is_finished(),
        "{race:?}: B waits for the call it runs"
    );

    // The call B accepted before its goaway is answered, then B closes.
    f.latch.open(1);
    let (id, outcome) = result_of(gate.b_to_a().await);
    assert_eq!((id, ok_of(outcome).0), (c1.id, json!("waited")));
    let early = within(FIVE_S, "the early call", early)
        .await
        .expect("task")
        .expect("answered within the grace period");
    assert_eq!(early.decode::<String>().expect("string"), "waited");
    within(FIVE_S, "the close", closing).await.expect("task");
    let reason = gate.forward_close(BtoA).await;
    assert_eq!(reason.code, CloseReason::NORMAL, "{race:?}");
    let a_end = within(FIVE_S, "A's end", gate.a.closed()).await;
    assert_eq!(a_end.code, Code::Unavailable, "{race:?}");
    assert!(a_end.message.contains("closing"), "{race:?}: {a_end}");
    assert_eq!(gate.a.stats().questions, 0, "{race:?}");
    assert_eq!(errors(&mut a_events), vec![], "{race:?}");
    assert_eq!(errors(&mut b_events), vec![], "{race:?}");
}

// ---------------------------------------------------------------------------
// 6. credit vs cancel

#[derive(Debug, Clone, Copy)]
enum CreditRace {
    /// `credit` and `cancel` reach B together: B stops at once.
    CreditAndCancelTogether,
    /// `credit` reaches B, which spends it, then `cancel`.
    CreditSpentThenCancel,
    /// B's items in flight reach A (discarded) before `credit` and `cancel` reach B.
    ItemsFirst,
    /// The stream ends at B while `cancel` is in flight: it crosses the `end`.
    CancelCrossesEnd,
    /// The stream ends at B while `credit` is in flight (no cancel).
    CreditCrossesEnd,
}

/// A stream with a window of 4: A reads two items, which sends `credit`,
/// and drops the stream (which sends `cancel`) while frames are in flight
/// both ways. In every order the stream ends on both sides, without a
/// protocol violation, and both tables end empty.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn credit_vs_cancel() {
    for race in [
        CreditRace::CreditAndCancelTogether,
        CreditRace::CreditSpentThenCancel,
        CreditRace::ItemsFirst,
        CreditRace::CancelCrossesEnd,
        CreditRace::CreditCrossesEnd,
    ] {
        credit_vs_cancel_in(race).await;
    }
}

fn item_value(frame: &Frame) -> u64 {
    match frame {
        Frame::Item(item) => item.value.decode().expect("u64"),
        other => panic!("expected an item, got {other:?}"),
    }
}

async fn credit_vs_cancel_in(race: CreditRace) {
    let (mut gate, svc, _f) = setup().await;
    let (mut a_events, mut b_events) = (gate.a.events(), gate.b.events());
    let n: u64 = match race {
        CreditRace::CancelCrossesEnd => 5,
        CreditRace::CreditCrossesEnd => 2,
        _ => 100,
    };
    let options = StreamOptions::default().window(4);
    let mut items = svc.call_stream_with("count", args(&(n,)), options);
    assert!(futures_util::poll!(items.next()).is_pending());
    let call = call_of(gate.expect(AtoB, "call").await);
    assert_eq!(call.stream, Some(4));
    let id = call.id;
    gate.settle().await;
    let sent: Vec<&str> = gate.held_ops(BtoA);
    match race {
        CreditRace::CreditCrossesEnd => assert_eq!(sent, ["item", "item", "end"]),
        _ => assert_eq!(sent, ["item"; 4], "{race:?}: one window"),
    }
    for want in 0..2u64 {
        assert_eq!(item_value(&gate.b_to_a().await), want);
    }
    gate.settle().await;
    for want in 0..2u64 {
        let got = within(FIVE_S, "an item", items.next())
            .await
            .expect("an item")
            .expect("ok");
        assert_eq!(got.decode::<u64>().expect("u64"), want, "{race:?}");
    }
    gate.settle().await;
    let credit = Frame::Credit(Credit { id, n: 2 });
    assert_eq!(gate.held(AtoB), vec![credit.clone()], "{race:?}");

    let cancel = Frame::Cancel(Cancel { id });
    let b_to_a: Vec<Frame> = match race {
        CreditRace::CreditAndCancelTogether => {
            drop(items);
            gate.settle().await;
            assert_eq!(gate.held(AtoB), vec![credit, cancel], "{race:?}");
            assert_eq!(gate.a.stats().questions, 1, "kept until the terminal frame");
            // Both delivered without a pause: B reads both before its pump runs.
            gate.a_to_b().await;
            gate.a_to_b().await;
            gate.settle().await;
            gate.held(BtoA)
        }
        CreditRace::CreditSpentThenCancel => {
            drop(items);
            gate.a_to_b().await;
            gate.settle().await;
            assert_eq!(gate.held_ops(BtoA), ["item"; 4], "{race:?}: two more items");
            gate.a_to_b().await;
            gate.settle().await;
            gate.held(BtoA)
        }
        CreditRace::ItemsFirst => {
            drop(items);
            for want in 2..4u64 {
                assert_eq!(item_value(&gate.b_to_a().await), want);
            }
            gate.settle().await;
            assert_eq!(
                gate.held(AtoB),
                vec![credit, cancel],
                "{race:?}: discarded items grant nothing"
            );
            gate.a_to_b().await;
            gate.a_to_b().await;
            gate.settle().await;
            gate.held(BtoA)
        }
        CreditRace::CancelCrossesEnd => {
            drop(items);
            gate.a_to_b().await;
            gate.settle().await;
            let ended = gate.held(BtoA);
            assert_eq!(gate.b.stats().answers, 0, "{race:?}: B's stream ended");
            gate.a_to_b().await;
            gate.settle().await;
            assert_eq!(
                gate.held(BtoA),
                ended,
                "{race:?}: the late cancel is ignored"
            );
            ended
        }
        CreditRace::CreditCrossesEnd => {
            gate.expect(BtoA, "end").await;
            gate.settle().await;
            assert_eq!(gate.a.stats().questions, 0, "{race:?}");
            let last = within(FIVE_S, "the end", items.next()).await;
            assert!(last.is_none(), "{race:?}: {last:?}");
            drop(items);
            gate.settle().await;
            assert_eq!(
                gate.held(AtoB),
                vec![credit],
                "{race:?}: no cancel for an ended stream"
            );
            gate.a_to_b().await;
            Vec::new()
        }
    };

    // What B sent after the window: the rest of the items, then the terminal frame.
    let (want_items, terminal): (Vec<u64>, &str) = match race {
        CreditRace::CreditAndCancelTogether => (vec![2, 3], "stream_error"),
        CreditRace::CreditSpentThenCancel => (vec![2, 3, 4, 5], "stream_error"),
        CreditRace::ItemsFirst => (vec![], "stream_error"),
        CreditRace::CancelCrossesEnd => (vec![2, 3, 4], "end"),
        CreditRace::CreditCrossesEnd => (vec![], ""),
    };
    if !terminal.is_empty() {
        let (last, rest) = b_to_a.split_last().expect("a terminal frame");
        assert_eq!(
            rest.iter().map(item_value).collect::<Vec<_>>(),
            want_items,
            "{race:?}"
        );
        expect_op(last, terminal);
        if let Frame::StreamError(e) = last {
            assert_eq!((e.id, e.err.code), (id, Code::Cancelled), "{race:?}");
        }
        for _ in 0..b_to_a.len() {
            gate.b_to_a().await;
        }
    }
    gate.assert_quiet().await;
    assert_eq!(gate.a.stats().questions, 0, "{race:?}");
    assert_eq!(gate.b.stats().answers, 0, "{race:?}");
    let outcome = match race {
        CreditRace::CancelCrossesEnd | CreditRace::CreditCrossesEnd => Code::Ok,
        _ => Code::Cancelled,
    };
    let b_seen = drain(&mut b_events);
    assert_eq!(errors_in(&b_seen), vec![], "{race:?}");
    assert_eq!(stream_outcomes(&b_seen), vec![outcome], "{race:?}");
    assert_healthy(&gate, &mut a_events, &mut b_events);
}

// ---------------------------------------------------------------------------
// 7. stress: the lock-free parts

/// Many tasks (on four worker threads) and two plain threads send on one
/// `FrameSender` whose queue holds 4 frames, mixing `send`, `send_now`,
/// `try_send` and sends dropped while they wait, while a task reads: every
/// frame arrives exactly once, in the order each sender sent it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stress_frame_sender_backlog() {
    const TASKS: u32 = 8;
    const THREADS: u32 = 2;
    const EACH: u64 = 3000;
    let mut tc = TransportConfig::default();
    tc.queue_frames = 4;
    let (a, mut b) = memory_pair(&tc);
    let frame = |sender: u32, seq: u64| {
        let mut v = sender.to_be_bytes().to_vec();
        v.extend_from_slice(&seq.to_be_bytes());
        bytes::Bytes::from(v)
    };

    let reader = tokio::spawn(async move {
        let senders = (TASKS + THREADS) as usize;
        let mut next = vec![0u64; senders];
        let mut total = 0u64;
        while let Some(bytes) = b.receiver.recv().await.expect("recv") {
            let sender = u32::from_be_bytes(bytes[..4].try_into().expect("4 bytes")) as usize;
            let seq = u64::from_be_bytes(bytes[4..].try_into().expect("8 bytes"));
            assert_eq!(seq, next[sender], "sender {sender}: out of order or twice");
            next[sender] += 1;
            total += 1;
        }
        (total, next)
    });

    let mut tasks = Vec::new();
    for sender in 0..TASKS {
        let tx = a.sender.clone();
        tasks.push(tokio::spawn(async move {
            for seq in 0..EACH {
                let f = frame(sender, seq);
                match (seq + u64::from(sender)) % 4 {
                    0 => tx.send(f).await.expect("send"),
                    1 => tx.send_now(f).expect("send_now"),
                    2 => {
                        if let Some(f) = tx.try_send(f).expect("try_send") {
                            tx.send(f).await.expect("send");
                        }
                    }
                    // Polled once and dropped: the frame still goes, in its place.
                    _ => {
                        if let Some(sent) = Box::pin(tx.send(f)).now_or_never() {
                            sent.expect("send");
                        }
                    }
                }
                if seq % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    let handle = tokio::runtime::Handle::current();
    let threads: Vec<_> = (TASKS..TASKS + THREADS)
        .map(|sender| {
            let tx = a.sender.clone();
            let handle = handle.clone();
            std::thread::spawn(move || {
                for seq in 0..EACH {
                    let f = frame(sender, seq);
                    if seq % 2 == 0 {
                        // In the runtime's context: a frame that has to wait
                        // needs it to start the drain task.
                        let _in_runtime = handle.enter();
                        tx.send_now(f).expect("send_now");
                    } else {
                        handle.block_on(tx.send(f)).expect("send");
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        within(FIVE_S, "a sender task", t).await.expect("sender");
    }
    for t in threads {
        tokio::task::spawn_blocking(move || t.join())
            .await
            .expect("join")
            .expect("sender thread");
    }
    a.sender
        .close(CloseReason::normal())
        .await
        .expect("close behind the frames");
    let (total, next) = within(FIVE_S, "the reader", reader).await.expect("reader");
    assert_eq!(total, u64::from(TASKS + THREADS) * EACH);
    assert!(next.iter().all(|n| *n == EACH), "{next:?}");
    assert_eq!(a.sender.backlog(), 0);
}

/// Streams with a window of 1 (a `credit` per item, so the pump waits for
/// credit granted from the reader's thread after every item) on two worker
/// threads: every item arrives exactly once, in order, and the callee never
/// had more than one unacknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_stream_credit_with_a_window_of_one() {
    const STREAMS: usize = 3;
    const ITEMS: u64 = 3000;
    let f = fixture();
    let p = common::pair(common::Kind::Mem, f.registry.clone()).await;
    let svc = p.client.bootstrap("svc", None).await.expect("bootstrap");
    let readers: Vec<_> = (0..STREAMS)
        .map(|_| {
            let mut items =
                svc.call_stream_with("count", args(&(ITEMS,)), StreamOptions::default().window(1));
            tokio::spawn(async move {
                let mut next = 0u64;
                while let Some(item) = items.next().await {
                    let got: u64 = item.expect("an item").decode().expect("u64");
                    assert_eq!(got, next, "out of order or twice");
                    next += 1;
                }
                next
            })
        })
        .collect();
    for r in readers {
        let got = within(FIVE_S, "a stream", r).await.expect("reader");
        assert_eq!(got, ITEMS);
    }
    let stats = p.server.stats();
    assert_eq!(stats.stream_items_out, STREAMS as u64 * ITEMS);
    assert_eq!(stats.stream_max_unacked, 1, "window 1");
    eventually("the answers to end", || p.server.stats().answers == 0).await;
    assert_eq!(p.client.stats().questions, 0);
    assert_eq!(p.client.stats().stream_items_in, STREAMS as u64 * ITEMS);
}
