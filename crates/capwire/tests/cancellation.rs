//! Cancellation: dropping a call future cancels the handler at the callee and,
//! transitively, the calls that handler made (protocol [S21]).

mod common;

use std::time::Duration;

use capwire::proto::{Cancel, Codec, Frame, Hello, Outcome, Payload};
use capwire::{CallOptions, Capability, Code, Methods, Registry, Session, SessionConfig, Value};
use common::*;
use tokio::sync::mpsc;

/// A chain A → B → C: A is a client of B, B is a client of C. B serves
/// `relay`, whose handler calls C's probe `hang` through a capability B
/// bootstrapped from C; `relay` itself reports its start and stop.
struct Chain {
    a: Session,
    a_to_b: Pair,
    b_to_c: Pair,
    b_events: ProbeEvents,
    c_events: ProbeEvents,
    _c_handle: capwire::ServeHandle,
    _b_handle: capwire::ServeHandle,
}

async fn chain(kind: Kind) -> Chain {
    let (c_registry, c_handle, c_events) = probe_registry();
    let b_to_c = pair(kind, c_registry).await;
    let c_probe = b_to_c
        .client
        .bootstrap("probe", None)
        .await
        .expect("B bootstraps C");

    let (tx, b_events) = probe_channels();
    let relay = Methods::new("Relay").method(
        "relay",
        probed(&tx, move |_args, _ctx| {
            let c_probe = c_probe.clone();
            async move { c_probe.call("hang", Value::null()).await }
        }),
    );
    let b_registry = Registry::new();
    let b_handle = b_registry.serve("relay", "1.0", relay).expect("serve");
    let a_to_b = pair(kind, b_registry).await;
    Chain {
        a: a_to_b.client.clone(),
        a_to_b,
        b_to_c,
        b_events,
        c_events,
        _c_handle: c_handle,
        _b_handle: b_handle,
    }
}

#[tokio::test]
async fn aborting_the_top_call_stops_every_handler_down_the_chain() {
    for kind in [Kind::Mem, Kind::Tcp] {
        let mut ch = chain(kind).await;
        let relay = ch.a.bootstrap("relay", None).await.expect("bootstrap");
        let task = tokio::spawn(relay.call("relay", Value::null()));

        let b_started = ch.b_events.started().await;
        let c_started = ch.c_events.started().await;
        assert_eq!(c_started.method, "hang");
        assert_eq!(
            ch.b_to_c.server.stats().answers,
            1,
            "{kind:?}: C is running"
        );

        task.abort();
        assert!(task.await.expect_err("aborted").is_cancelled());

        let b_stopped = ch.b_events.stopped().await;
        assert_eq!(b_stopped.call_id, b_started.call_id);
        assert!(b_stopped.cancelled, "{kind:?}: B saw ctx.cancelled()");
        assert!(!b_stopped.completed);
        let c_stopped = ch.c_events.stopped().await;
        assert_eq!(c_stopped.call_id, c_started.call_id);
        assert!(c_stopped.cancelled, "{kind:?}: C saw ctx.cancelled()");
        assert!(!c_stopped.completed);

        // Every table along the chain is empty again.
        eventually("the chain to settle", || {
            ch.a_to_b.client.stats().questions == 0
                && ch.a_to_b.server.stats().answers == 0
                && ch.b_to_c.client.stats().questions == 0
                && ch.b_to_c.server.stats().answers == 0
        })
        .await;
        // The connections are still usable.
        let task = tokio::spawn(relay.call("relay", Value::null()));
        ch.c_events.started().await;
        drop(task);
    }
}

#[tokio::test]
async fn dropping_a_polled_call_future_cancels_the_callee() {
    let (registry, _h, mut events) = probe_registry();
    let p = pair(Kind::Mem, registry).await;
    let probe = p.client.bootstrap("probe", None).await.unwrap();
    let mut call = Box::pin(probe.call("hang", Value::null()));
    tokio::select! {
        biased;
        _ = &mut call => panic!("hang returned"),
        started = events.started() => assert_eq!(started.method, "hang"),
    }
    drop(call);
    let stopped = events.stopped().await;
    assert!(stopped.cancelled && !stopped.completed);
    eventually("the answer to be freed", || p.server.stats().answers == 0).await;
    assert_eq!(p.client.stats().questions, 0);
}

/// The callee sends the terminal frame of a cancelled call ([S13], [S21]),
/// and the cancel of an unknown or finished id is ignored.
#[tokio::test]
async fn a_cancelled_answer_still_gets_its_terminal_frame() {
    let (registry, _h, mut events) = probe_registry();
    let (_session, mut raw) = Raw::handshake(registry, SessionConfig::default()).await;
    let probe = raw.bootstrap(1, "probe").await;
    raw.call(2, probe, "hang", serde_json::json!(null)).await;
    events.started().await;
    raw.send(Frame::Cancel(Cancel { id: 2 })).await;
    let status = raw.error(2).await;
    assert_eq!(status.code, Code::Cancelled, "{status}");
    assert!(events.stopped().await.cancelled);

    // Cancels that cross the result, or name ids never used, are ignored.
    raw.send(Frame::Cancel(Cancel { id: 2 })).await;
    raw.send(Frame::Cancel(Cancel { id: 99 })).await;
    raw.call(3, probe, "sleep", serde_json::json!([1])).await;
    match raw.result().await {
        (3, Outcome::Ok { value, .. }) => assert_eq!(value.to_json().unwrap(), 1),
        other => panic!("{other:?}"),
    }
}

/// A handler whose caller times out is stopped by the caller's `cancel`,
/// long before the callee's own deadline + grace would stop it.
#[tokio::test(start_paused = true)]
async fn a_handler_whose_caller_times_out_is_stopped() {
    let (registry, _h, mut events) = probe_registry();
    let mut server_config = SessionConfig::default();
    server_config.deadline_grace = Duration::from_secs(3600);
    let p = pair_with(Kind::Mem, registry, server_config, SessionConfig::default()).await;
    let probe = p.client.bootstrap("probe", None).await.unwrap();
    let timeout = Duration::from_millis(50);
    let r = probe
        .call_with("hang", Value::null(), CallOptions::timeout(timeout))
        .await;
    assert_status(&r, Code::DeadlineExceeded, None);
    let started = events.started().await;
    let stopped = events.stopped().await;
    assert!(stopped.cancelled && !stopped.completed);
    assert!(
        stopped.at - started.at < Duration::from_secs(1),
        "stopped by the caller's cancel, not the callee's grace: {:?}",
        stopped.at - started.at
    );
}

/// A call made inside a handler ends with `cancelled` when the handler's own
/// call is cancelled, even if the call future itself is still being awaited.
#[tokio::test]
async fn a_child_call_fails_cancelled_when_its_parent_is_cancelled() {
    let (c_registry, _c_handle, mut c_events) = probe_registry();
    let b_to_c = pair(Kind::Mem, c_registry).await;
    let c_probe = b_to_c.client.bootstrap("probe", None).await.unwrap();

    // B's handler starts its call to C, then hands the still-pending future
    // to a task of its own: the future keeps being polled after B's handler
    // is dropped, so what it resolves to is observable.
    let (out_tx, mut out_rx) = mpsc::unbounded_channel();
    let relay = Methods::new("Relay").method("detach", move |_args, _ctx| {
        let c_probe = c_probe.clone();
        let out_tx = out_tx.clone();
        async move {
            let mut child = Box::pin(c_probe.call("hang", Value::null()));
            assert!(futures_util::poll!(&mut child).is_pending());
            tokio::spawn(async move {
                let _ = out_tx.send(child.await);
            });
            std::future::pending::<()>().await;
            Ok(Value::null())
        }
    });
    let b_registry = Registry::new();
    let _b_handle = b_registry.serve("relay", "1.0", relay).unwrap();
    let a_to_b = pair(Kind::Mem, b_registry).await;
    let relay = a_to_b.client.bootstrap("relay", None).await.unwrap();

    let task = tokio::spawn(relay.call("detach", Value::null()));
    c_events.started().await;
    task.abort();

    let child = within(Duration::from_secs(5), "the child call", out_rx.recv())
        .await
        .expect("child result");
    assert_status(&child, Code::Cancelled, None);
    assert!(c_events.stopped().await.cancelled, "C was cancelled too");
}

/// On the wire: B's call to C carries `parent` = the id of A's call that B
/// is answering, and A's cancel reaches C as a `cancel` of B's question.
#[tokio::test]
async fn child_calls_carry_their_parent_and_the_cancel_cascades_on_the_wire() {
    // C is a raw peer; B connects to it as a client.
    let (b_client, mut c) = Raw::connect(
        Registry::new(),
        SessionConfig::default(),
        &Default::default(),
    )
    .await;
    c.send(Frame::Hello(Hello::new())).await;
    let bootstrap = tokio::spawn({
        let b_client = b_client.clone();
        async move { b_client.bootstrap("work", None).await }
    });
    let boot_id = match c.recv().await {
        Some(Frame::Call(call)) => {
            assert_eq!(call.method, "bootstrap");
            assert_eq!(call.parent, None, "not made inside a handler");
            call.id
        }
        other => panic!("{other:?}"),
    };
    c.send(Frame::Result(capwire::proto::CallResult {
        id: boot_id,
        outcome: Outcome::Ok {
            value: Payload::encode(Codec::Json, &serde_json::json!({ "$cap": 0 })).unwrap(),
            caps: vec![capwire::proto::CapDescriptor::Export(7)],
        },
    }))
    .await;
    let work: Capability = bootstrap.await.unwrap().expect("bootstrap from raw C");

    let (call_ids, mut call_ids_rx) = mpsc::unbounded_channel();
    let relay = Methods::new("Relay").method("relay", move |_args, ctx| {
        let work = work.clone();
        let call_ids = call_ids.clone();
        async move {
            let _ = call_ids.send(ctx.call_id());
            work.call("run", Value::null()).await
        }
    });
    let b_registry = Registry::new();
    let _h = b_registry.serve("relay", "1.0", relay).unwrap();
    let a_to_b = pair(Kind::Mem, b_registry).await;
    let relay = a_to_b.client.bootstrap("relay", None).await.unwrap();
    let task = tokio::spawn(relay.call("relay", Value::null()));

    let answer_at_b = call_ids_rx.recv().await.unwrap().expect("a call id");
    let child = match c.recv().await {
        Some(Frame::Call(call)) => call,
        other => panic!("{other:?}"),
    };
    assert_eq!(child.method, "run");
    assert_eq!(child.parent, Some(answer_at_b), "parent is B's answer id");

    task.abort();
    match c.recv().await {
        Some(Frame::Cancel(Cancel { id })) => assert_eq!(id, child.id),
        other => panic!("expected cancel of the child call, got {other:?}"),
    }
    // C answers the cancelled call; B drops that late result quietly.
    c.send(Frame::Result(capwire::proto::CallResult {
        id: child.id,
        outcome: Outcome::Err(capwire::Status::new(Code::Cancelled, "cancelled")),
    }))
    .await;
    eventually("B's question to be gone", || {
        b_client.stats().questions == 0
    })
    .await;
    // The connection to C is still up.
    c.send(Frame::Ping(capwire::proto::Ping { nonce: 5 })).await;
    match c.recv().await {
        Some(Frame::Pong(p)) => assert_eq!(p.nonce, 5),
        other => panic!("{other:?}"),
    }
}
