//! Deadlines: the caller enforces its timeout locally, the callee stops the
//! handler after the deadline plus a grace period (unless the method is
//! idempotent), and calls made by a handler inherit its remaining budget
//! (protocol [S17]). Time is the paused tokio clock.

mod common;

use std::sync::Arc;
use std::time::Duration;

use capwire::proto::{Frame, Outcome};
use capwire::{CallOptions, Code, Methods, Registry, SessionConfig, Value};
use common::*;
use tokio::time::Instant;

const GRACE: Duration = Duration::from_millis(20);

fn grace_config() -> SessionConfig {
    let mut config = SessionConfig::default();
    config.deadline_grace = GRACE;
    config
}

#[tokio::test(start_paused = true)]
async fn the_caller_gets_deadline_exceeded_promptly() {
    let (registry, _h, mut events) = probe_registry();
    let p = pair_with(
        Kind::Mem,
        registry,
        grace_config(),
        SessionConfig::default(),
    )
    .await;
    let probe = p.client.bootstrap("probe", None).await.unwrap();

    let t0 = Instant::now();
    let r = probe
        .call_with(
            "hang",
            Value::null(),
            CallOptions::timeout(Duration::from_millis(100)),
        )
        .await;
    let waited = t0.elapsed();
    assert_status(&r, Code::DeadlineExceeded, None);
    assert!(
        waited >= Duration::from_millis(100) && waited < Duration::from_millis(100) + GRACE,
        "waited {waited:?}"
    );
    let stopped = events.stopped().await;
    assert!(stopped.cancelled && !stopped.completed);
    assert!(stopped.at - t0 <= Duration::from_millis(100) + GRACE);
    eventually("the answer to be freed", || p.server.stats().answers == 0).await;
}

/// Without the caller's `cancel` (a peer that does not send one), the callee
/// stops the handler by itself at deadline + grace and answers
/// `deadline_exceeded`.
#[tokio::test(start_paused = true)]
async fn the_callee_stops_the_handler_after_deadline_plus_grace() {
    let (registry, _h, mut events) = probe_registry();
    let (_session, mut raw) = Raw::handshake(registry, grace_config()).await;
    let probe = raw.bootstrap(1, "probe").await;

    let mut call = call_frame(2, probe, "hang", serde_json::json!(null));
    call.deadline_ms = Some(100);
    let t0 = Instant::now();
    raw.send(Frame::Call(call)).await;
    let started = events.started().await;
    let deadline = started.deadline.expect("the handler sees its deadline");
    assert_eq!(deadline - t0, Duration::from_millis(100));

    let status = raw.error(2).await;
    let answered = t0.elapsed();
    assert_eq!(status.code, Code::DeadlineExceeded, "{status}");
    assert_eq!(
        answered,
        Duration::from_millis(100) + GRACE,
        "answered at deadline + grace"
    );
    let stopped = events.stopped().await;
    assert!(stopped.cancelled && !stopped.completed);
    assert_eq!(stopped.at - t0, Duration::from_millis(100) + GRACE);
}

/// An idempotent method is not stopped by the callee's deadline: it runs to
/// its end and its result is sent. The same method not marked idempotent is
/// stopped.
#[tokio::test(start_paused = true)]
async fn idempotent_methods_are_not_stopped_by_the_callee() {
    let (registry, _h, mut events) = probe_registry();
    let (_session, mut raw) = Raw::handshake(registry, grace_config()).await;
    let probe = raw.bootstrap(1, "probe").await;

    let t0 = Instant::now();
    let mut call = call_frame(2, probe, "idem_sleep", serde_json::json!([300]));
    call.deadline_ms = Some(100);
    raw.send(Frame::Call(call)).await;
    match raw.result().await {
        (2, Outcome::Ok { value, .. }) => assert_eq!(value.to_json().unwrap(), 300),
        other => panic!("the idempotent call was stopped: {other:?}"),
    }
    assert_eq!(t0.elapsed(), Duration::from_millis(300));
    let stopped = events.stopped().await;
    assert!(stopped.completed && !stopped.cancelled);

    let t0 = Instant::now();
    let mut call = call_frame(3, probe, "sleep", serde_json::json!([300]));
    call.deadline_ms = Some(100);
    raw.send(Frame::Call(call)).await;
    assert_eq!(raw.error(3).await.code, Code::DeadlineExceeded);
    assert_eq!(t0.elapsed(), Duration::from_millis(100) + GRACE);
    assert!(!events.stopped().await.completed);
}

/// A → B → C: B's handler waits a while, then calls C, once asking for far
/// more time than A gave and once asking for none. C sees at most what is
/// left of A's budget either way.
#[tokio::test(start_paused = true)]
async fn child_calls_inherit_the_remaining_budget() {
    let (c_registry, _c_handle, mut c_events) = probe_registry();
    let b_to_c = pair_with(
        Kind::Mem,
        c_registry,
        grace_config(),
        SessionConfig::default(),
    )
    .await;
    let c_probe = b_to_c.client.bootstrap("probe", None).await.unwrap();

    let (b_tx, mut b_events) = probe_channels();
    let relay = Methods::new("Relay").method(
        "relay",
        probed(&b_tx, move |args: Value, _ctx| {
            let c_probe = c_probe.clone();
            async move {
                let (own_timeout,): (bool,) = args.decode()?;
                tokio::time::sleep(Duration::from_millis(30)).await;
                if own_timeout {
                    c_probe
                        .call_with(
                            "hang",
                            Value::null(),
                            CallOptions::timeout(Duration::from_secs(10)),
                        )
                        .await
                } else {
                    c_probe.call("hang", Value::null()).await
                }
            }
        }),
    );
    let b_registry = Registry::new();
    let _b_handle = b_registry.serve("relay", "1.0", relay).unwrap();
    let a_to_b = pair_with(
        Kind::Mem,
        b_registry,
        grace_config(),
        SessionConfig::default(),
    )
    .await;
    let relay = a_to_b.client.bootstrap("relay", None).await.unwrap();

    for own_timeout in [true, false] {
        let t0 = Instant::now();
        let a_deadline = t0 + Duration::from_millis(200);
        let r = relay
            .call_with(
                "relay",
                Value::new(&(own_timeout,)).unwrap(),
                CallOptions::timeout(Duration::from_millis(200)),
            )
            .await;
        assert_status(&r, Code::DeadlineExceeded, None);
        assert_eq!(t0.elapsed(), Duration::from_millis(200));

        let b = b_events.started().await;
        assert_eq!(b.deadline, Some(a_deadline), "B has A's deadline");
        let c = c_events.started().await;
        let c_deadline = c.deadline.expect("C's call got a deadline");
        assert!(
            c_deadline <= a_deadline,
            "own_timeout={own_timeout}: C's deadline is {:?} after A's",
            c_deadline - a_deadline
        );
        assert!(c_deadline - c.at <= Duration::from_millis(170));
        assert!(c_deadline > c.at, "some budget is left");
        // Both handlers end when A's deadline passes: C is stopped; B ends
        // with its child call's `deadline_exceeded` or is stopped by A's
        // cancel, whichever it sees first (both happen at A's deadline).
        let b_stop = b_events.stopped().await;
        assert!(b_stop.completed || b_stop.cancelled);
        assert_eq!(b_stop.at, a_deadline);
        let c_stop = c_events.stopped().await;
        assert!(c_stop.cancelled && !c_stop.completed);
        assert_eq!(c_stop.at, a_deadline);
    }
}

/// A call pipelined on an answer that settles only after the call's own
/// deadline (plus grace) has passed is answered `deadline_exceeded` when its
/// turn comes, not run: the callee checks the deadline before it starts a
/// handler, also when it starts it inline.
#[tokio::test]
async fn a_pipelined_call_past_its_deadline_when_delivered_is_not_run() {
    let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = ran.clone();
    let registry = Registry::new();
    registry
        .serve(
            "slow",
            "1.0",
            Methods::new("Slow").method("later", move |_args, ctx| {
                let seen = seen.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let target = Methods::new("Target").method("hit", move |_args, _ctx| {
                        seen.store(true, std::sync::atomic::Ordering::SeqCst);
                        async move { Value::new(&1) }
                    });
                    Ok(Value::capability(ctx.export(target)))
                }
            }),
        )
        .expect("serve")
        .forget();
    let mut config = SessionConfig::default();
    config.deadline_grace = Duration::ZERO;
    let (_session, mut raw) = Raw::handshake(registry, config).await;
    raw.send(Frame::Call(call_frame(
        1,
        0,
        "bootstrap",
        serde_json::json!({"name": "slow"}),
    )))
    .await;
    let slow = match raw.result().await {
        (1, Outcome::Ok { caps, .. }) => match caps.first() {
            Some(capwire::proto::CapDescriptor::Export(id)) => *id,
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    };
    let mut later = call_frame(2, slow, "later", serde_json::json!([]));
    later.keep = true;
    let mut hit = call_frame(3, 0, "hit", serde_json::json!([]));
    hit.target = capwire::proto::Target::Answer {
        id: 2,
        path: vec![],
    };
    hit.deadline_ms = Some(1);
    raw.send(Frame::Call(later)).await;
    raw.send(Frame::Call(hit)).await;
    let mut late = None;
    for _ in 0..2 {
        if let (3, outcome) = raw.result().await {
            late = Some(outcome);
        }
    }
    match late {
        Some(Outcome::Err(s)) => assert_eq!(s.code, Code::DeadlineExceeded, "{s}"),
        other => panic!("expected deadline_exceeded for the late call, got {other:?}"),
    }
    assert!(
        !ran.load(std::sync::atomic::Ordering::SeqCst),
        "the handler never ran"
    );
}

/// protocol.md §5.3: `deadline_ms: 0` has expired on arrival. The handler
/// never runs; the caller hears `deadline_exceeded`. A `deadline_ms` too large
/// to represent is no deadline at all, never a panic.
#[tokio::test]
async fn a_zero_deadline_expired_on_arrival_and_a_huge_one_is_none() {
    let (registry, _served, mut probe) = probe_registry();
    let (session, mut raw) = Raw::handshake(registry, SessionConfig::default()).await;
    let cap = raw.bootstrap(1, "probe").await;
    let mut call = call_frame(2, cap, "hang", serde_json::json!([]));
    call.deadline_ms = Some(0);
    raw.send(Frame::Call(call)).await;
    let status = raw.error(2).await;
    assert_eq!(status.code, Code::DeadlineExceeded, "{status}");
    assert!(status.message.contains("deadline_ms 0"), "{status}");
    assert!(probe.none_stopped(), "nothing ran, so nothing stopped");
    assert_eq!(session.stats().answers, 0, "`hang` never started");

    let mut call = call_frame(3, cap, "sleep", serde_json::json!([0]));
    call.deadline_ms = Some(u64::MAX);
    raw.send(Frame::Call(call)).await;
    match raw.result().await {
        (3, Outcome::Ok { .. }) => {}
        other => panic!("a huge deadline must run the call, got {other:?}"),
    }
}
