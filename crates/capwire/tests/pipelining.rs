//! Promise pipelining: calls on results that have not arrived, in one round
//! trip, in order, released when the last handle goes.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use capwire::proto::{Codec, Frame, Outcome, Payload, Target};
use capwire::{path, Capability, Code, Methods, Registry, SessionConfig, Value};
use common::*;

/// `next()` returns a new link one deeper; `depth()` says how deep it is.
fn chain(depth: u64) -> Methods {
    Methods::new("Link")
        .method("next", move |_args, ctx| async move {
            Ok(Value::capability(ctx.export(chain(depth + 1))))
        })
        .method(
            "depth",
            move |_args, _ctx| async move { Value::new(&depth) },
        )
}

fn chain_registry() -> (Registry, capwire::ServeHandle) {
    let registry = Registry::new();
    let handle = registry.serve("chain", "1", chain(0)).expect("serve");
    (registry, handle)
}

/// The bound: with 20 ms each way, `a.b().c().d()` takes about one
/// round trip (40 ms), where awaiting each step takes three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_call_chain_takes_one_round_trip() {
    let (registry, _h) = chain_registry();
    let (client, _server) = delayed_pair(registry, Duration::from_millis(20));
    let root = client.bootstrap("chain", None).await.expect("bootstrap");

    let started = std::time::Instant::now();
    let depth: u64 = root
        .call("next", Value::null())
        .call("next", Value::null())
        .call("depth", Value::null())
        .await
        .expect("pipelined chain")
        .decode()
        .expect("depth");
    let pipelined = started.elapsed();
    assert_eq!(depth, 2);

    let started = std::time::Instant::now();
    let one = root.call("next", Value::null()).await.expect("one");
    let two = one
        .cap(0)
        .unwrap()
        .call("next", Value::null())
        .await
        .expect("two");
    let depth: u64 = two
        .cap(0)
        .unwrap()
        .call("depth", Value::null())
        .await
        .expect("three")
        .decode()
        .unwrap();
    let awaited = started.elapsed();
    assert_eq!(depth, 2);

    assert!(
        pipelined >= Duration::from_millis(40),
        "one round trip is 40 ms: {pipelined:?}"
    );
    assert!(
        pipelined < Duration::from_millis(80),
        "pipelined chain took {pipelined:?}, more than one round trip"
    );
    assert!(
        awaited >= Duration::from_millis(120),
        "awaiting each step is three round trips: {awaited:?}"
    );
}

/// Calls pipelined on one promise reach the object in the order sent
/// (E-order), over every transport and codec.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_calls_arrive_in_the_order_sent() {
    for kind in ALL {
        for codec in [Codec::Msgpack, Codec::Json] {
            let (registry, _h) = demo_registry();
            let config = SessionConfig::default().codec(codec);
            let p = pair_with(kind, registry, config.clone(), config).await;
            let demo = p.client.bootstrap("demo", None).await.unwrap();
            let counter = demo.call("makeCounter", Value::new(&(0,)).unwrap()).cap();
            let calls: Vec<_> = (1..=50)
                .map(|i| counter.call("increment", Value::new(&(i,)).unwrap()))
                .collect();
            let results = futures_util::future::join_all(calls).await;
            let mut expected = 0i64;
            for (i, r) in results.into_iter().enumerate() {
                expected += i as i64 + 1;
                let got: i64 = r.expect("increment").decode().unwrap();
                assert_eq!(
                    got,
                    expected,
                    "{kind:?}/{codec}: call {} out of order",
                    i + 1
                );
            }
        }
    }
}

/// A path into the result names a capability inside it; a path into the
/// result can also be passed as an argument before it arrives.
#[tokio::test]
async fn paths_and_promised_arguments() {
    for kind in ALL {
        let (registry, _h) = demo_registry();
        let p = pair(kind, registry).await;
        let demo = p.client.bootstrap("demo", None).await.unwrap();
        let made = demo.call("makeNested", Value::new(&(10,)).unwrap());
        let by_key = made.get(path!["counter"]);
        let by_index = made.get(path!["list", 1usize]);
        let a: i64 = by_key
            .call("increment", Value::new(&(1,)).unwrap())
            .await
            .unwrap()
            .decode()
            .unwrap();
        let b: i64 = by_index
            .call("increment", Value::new(&(1,)).unwrap())
            .await
            .unwrap()
            .decode()
            .unwrap();
        assert_eq!(
            (a, b),
            (11, 12),
            "{kind:?}: both paths name the same counter"
        );

        // A promise as an argument, before its call has answered.
        let fresh = demo.call("makeCounter", Value::new(&(100,)).unwrap()).cap();
        let args =
            Value::with_caps(&serde_json::json!([{"$cap": 0}, 5]), vec![fresh.clone()]).unwrap();
        let n: i64 = demo
            .call("incrementCounter", args)
            .await
            .unwrap()
            .decode()
            .unwrap();
        assert_eq!(n, 105, "{kind:?}");
        let n: i64 = fresh
            .call("value", Value::null())
            .await
            .unwrap()
            .decode()
            .unwrap();
        assert_eq!(
            n, 105,
            "{kind:?}: the argument was the promised counter itself"
        );
    }
}

/// Calls on an answer that failed fail with its error; a path that does not
/// lead to a capability fails with `invalid_argument` ([S9]).
#[tokio::test]
async fn rejected_answers_and_bad_paths() {
    let (registry, _h) = demo_registry();
    let p = pair(Kind::Tcp, registry).await;
    let demo = p.client.bootstrap("demo", None).await.unwrap();

    let failed = demo.call("fail", Value::null());
    let r = failed.call("anything", Value::null()).await;
    assert_status(&r, Code::InvalidArgument, None);
    assert!(
        r.unwrap_err().message.contains("bad thing"),
        "the answer's own error"
    );

    let nested = demo.call("makeNested", Value::new(&(1,)).unwrap());
    for bad in [
        path!["missing"],
        path!["list", 0usize],
        path!["list", 7usize],
    ] {
        let r = nested
            .get(bad.clone())
            .call("increment", Value::new(&(1,)).unwrap())
            .await;
        assert_status(&r, Code::InvalidArgument, None);
    }
    // The answer itself is still fine.
    let ok = nested.await.expect("the kept answer");
    assert_eq!(ok.caps().len(), 1);
}

/// The caller's own object, returned by a pipelined call, is called through
/// the answer ([S16]) and reaches the object here.
#[tokio::test]
async fn a_promise_that_resolves_to_the_callers_own_object() {
    let (registry, _h) = demo_registry();
    let p = pair(Kind::Unix, registry).await;
    let demo = p.client.bootstrap("demo", None).await.unwrap();
    let echoed = demo.call("echoCap", Value::capability(plus_one()));
    let n: i64 = echoed
        .call("call", Value::new(&(41,)).unwrap())
        .await
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(n, 42);
    let back = echoed.await.unwrap().cap(0).unwrap();
    assert!(
        back.is_local(),
        "passed back to its owner, it is the owner's object"
    );
}

/// A plain await sends `call` + `result` and keeps nothing; a kept answer
/// is freed (and its exports released) when the last handle is dropped.
#[tokio::test]
async fn answers_are_released_with_their_last_handle() {
    let (registry, _h) = demo_registry();
    let p = pair(Kind::Mem, registry).await;
    let demo = p.client.bootstrap("demo", None).await.unwrap();
    let before = p.server.stats();

    let frames = p.client.stats().frames_out;
    let _: i64 = demo
        .call("square", Value::new(&(3,)).unwrap())
        .await
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(
        p.client.stats().frames_out - frames,
        1,
        "a plain call is one frame out"
    );
    assert_eq!(p.server.stats().answers, 0);

    let made = demo.call("makeCounter", Value::new(&(0,)).unwrap());
    let counter = made.cap();
    let _ = counter
        .call("increment", Value::new(&(1,)).unwrap())
        .await
        .unwrap();
    let _ = made.await.unwrap();
    assert_eq!(
        p.server.stats().answers,
        1,
        "kept while the counter promise lives"
    );
    let n: i64 = counter
        .call("value", Value::null())
        .await
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(n, 1, "still pipelined through the kept answer");
    drop(counter);
    eventually("the kept answer is finished", || {
        p.server.stats().answers == 0
    })
    .await;
    eventually("the counter is released", || {
        p.server.stats().exports == before.exports
    })
    .await;
    eventually("no import left", || p.client.stats().imports == 1).await;
}

/// A pipelined call whose promise never settles fails `unavailable` when
/// the connection goes; nothing hangs.
#[tokio::test]
async fn pipelined_calls_fail_cleanly_when_the_connection_drops() {
    let (registry, _h, _events) = probe_registry();
    let _demo = registry.serve("demo", "1.0", demo()).unwrap();
    for kind in ALL {
        let mut config = SessionConfig::default();
        config.close_grace = Duration::from_millis(10);
        let p = pair_with(kind, registry.clone(), config, SessionConfig::default()).await;
        let probe = p.client.bootstrap("probe", None).await.unwrap();
        let hanging = probe.call("hang", Value::null());
        let queued = tokio::spawn(hanging.call("anything", Value::null()));
        let stream = tokio::spawn({
            let mut items = hanging.cap().call_stream("count", Value::null());
            async move { futures_util::StreamExt::next(&mut items).await }
        });
        eventually("the calls wait at the server", || {
            p.server.stats().pipelined_waiting == 2
        })
        .await;
        p.server.close().await;
        let r = within(Duration::from_secs(5), "the pipelined call", queued)
            .await
            .unwrap();
        assert_status(&r, Code::Unavailable, None);
        match within(Duration::from_secs(5), "the pipelined stream", stream)
            .await
            .unwrap()
        {
            Some(Err(s)) => assert_eq!(s.code, Code::Unavailable, "{kind:?}: {s}"),
            other => panic!("{kind:?}: expected unavailable, got {other:?}"),
        }
        drop(hanging);

        // A new connection to the same server pipelines as before.
        let again = pair(kind, registry.clone()).await;
        let demo = again.client.bootstrap("demo", None).await.unwrap();
        let n: i64 = demo
            .call("makeCounter", Value::new(&(1,)).unwrap())
            .call("increment", Value::new(&(1,)).unwrap())
            .await
            .unwrap()
            .decode()
            .unwrap();
        assert_eq!(n, 2, "{kind:?}");
    }
}

/// Dropping the last handle of an unsettled kept promise cancels its call.
#[tokio::test]
async fn dropping_an_unsettled_promise_cancels_it() {
    let (registry, _h, mut events) = probe_registry();
    let p = pair(Kind::Mem, registry).await;
    let probe = p.client.bootstrap("probe", None).await.unwrap();
    let hanging = probe.call("hang", Value::null());
    let on_it = hanging.cap();
    let waiting = tokio::spawn(on_it.call("x", Value::null()));
    events.started().await;
    drop(hanging);
    waiting.abort();
    drop(on_it);
    let stopped = events.stopped().await;
    assert!(
        stopped.cancelled,
        "the hanging handler was cancelled by `finish`"
    );
    eventually("nothing left at the server", || {
        p.server.stats().answers == 0
    })
    .await;
}

/// Limits: calls queued on unsettled answers are bounded.
#[tokio::test]
async fn pending_pipelined_calls_are_limited() {
    let (registry, _h, _events) = probe_registry();
    let mut server = SessionConfig::default();
    server.limits.max_pending_pipelined = 3;
    let p = pair_with(Kind::Mem, registry, server, SessionConfig::default()).await;
    let probe = p.client.bootstrap("probe", None).await.unwrap();
    let hanging = probe.call("hang", Value::null());
    let queued: Vec<_> = (0..3)
        .map(|_| tokio::spawn(hanging.call("x", Value::null())))
        .collect();
    eventually("three wait", || p.server.stats().pipelined_waiting == 3).await;
    let r = hanging.call("x", Value::null()).await;
    assert_status(
        &r,
        Code::ResourceExhausted,
        Some(capwire::Reason::MAX_PENDING_PIPELINED),
    );
    for q in queued {
        q.abort();
    }
}

/// Pipelining on a local object works the same, computed here.
#[tokio::test]
async fn pipelining_on_a_local_capability() {
    let local = Capability::local(common::demo());
    let n: i64 = local
        .call("makeCounter", Value::new(&(7,)).unwrap())
        .call("increment", Value::new(&(1,)).unwrap())
        .await
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(n, 8);
}

/// On the wire: the kept call and the pipelined call go out back to back,
/// before any answer, and `finish` follows when the handles are dropped.
#[tokio::test]
async fn on_the_wire_kept_call_pipelined_call_and_finish() {
    let (client, mut raw) = Raw::connect(
        Registry::new(),
        SessionConfig::default(),
        &Default::default(),
    )
    .await;
    let x = raw.serve_bootstrap(&client, 5).await;
    let made = x.call("make", Value::null());
    let task = tokio::spawn(made.call("go", Value::null()));
    let Some(Frame::Call(first)) = raw.recv().await else {
        panic!("kept call")
    };
    assert!(first.keep, "a call pipelined on is kept");
    assert_eq!(first.target, Target::Cap(5));
    let Some(Frame::Call(second)) = raw.recv().await else {
        panic!("pipelined call")
    };
    assert_eq!(
        second.target,
        Target::Answer {
            id: first.id,
            path: vec![]
        }
    );
    assert!(!second.keep, "awaited alone, the pipelined call is plain");
    raw.send(Frame::Result(capwire::proto::CallResult {
        id: second.id,
        outcome: Outcome::Ok {
            value: Payload::encode(Codec::Json, &7).unwrap(),
            caps: vec![],
        },
    }))
    .await;
    let v: i64 = task.await.unwrap().unwrap().decode().unwrap();
    assert_eq!(v, 7);
    drop(made);
    match raw.recv().await {
        Some(Frame::Finish(f)) => assert_eq!(f.id, first.id),
        other => panic!("expected finish, got {other:?}"),
    }
}

/// The callee's wrong cases, from a raw peer: pipelining on an answer it
/// does not hold is `not_found`, on a plain answer `invalid_argument`, and a
/// queued call cancelled before its answer settles is answered at once.
#[tokio::test]
async fn callee_wrong_cases() {
    let (registry, _h, _events) = probe_registry();
    let (_session, mut raw) = Raw::handshake(registry, SessionConfig::default()).await;
    let probe = raw.bootstrap(1, "probe").await;

    let mut on_unknown = call_frame(2, 0, "x", serde_json::json!([]));
    on_unknown.target = Target::Answer {
        id: 99,
        path: vec![],
    };
    raw.send(Frame::Call(on_unknown)).await;
    assert_eq!(raw.error(2).await.code, Code::NotFound);

    let hang = call_frame(3, probe, "hang", serde_json::json!([]));
    raw.send(Frame::Call(hang)).await;
    let mut on_plain = call_frame(4, 0, "x", serde_json::json!([]));
    on_plain.target = Target::Answer {
        id: 3,
        path: vec![],
    };
    raw.send(Frame::Call(on_plain)).await;
    assert_eq!(raw.error(4).await.code, Code::InvalidArgument);

    let mut kept = call_frame(5, probe, "hang", serde_json::json!([]));
    kept.keep = true;
    raw.send(Frame::Call(kept)).await;
    let mut queued = call_frame(6, 0, "x", serde_json::json!([]));
    queued.target = Target::Answer {
        id: 5,
        path: vec![],
    };
    raw.send(Frame::Call(queued)).await;
    raw.send(Frame::Cancel(capwire::proto::Cancel { id: 6 }))
        .await;
    assert_eq!(raw.error(6).await.code, Code::Cancelled);
    raw.send(Frame::Finish(capwire::proto::Finish { id: 5 }))
        .await;
    assert_eq!(
        raw.error(5).await.code,
        Code::Cancelled,
        "finish before settling cancels"
    );
}

/// Many chains at once over a real socket: every one resolves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_chains() {
    let (registry, _h) = chain_registry();
    let p = pair(Kind::Tcp, registry).await;
    let root = p.client.bootstrap("chain", None).await.unwrap();
    let done = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let root = root.clone();
            let done = done.clone();
            tokio::spawn(async move {
                let d: u64 = root
                    .call("next", Value::null())
                    .call("next", Value::null())
                    .call("next", Value::null())
                    .call("depth", Value::null())
                    .await
                    .unwrap()
                    .decode()
                    .unwrap();
                assert_eq!(d, 3);
                done.fetch_add(1, Ordering::Relaxed);
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(done.load(Ordering::Relaxed), 200);
    eventually("all answers finished", || p.server.stats().answers == 0).await;
}
