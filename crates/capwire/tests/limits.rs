//! Per-connection limits, one test each: exceeding one answers
//! `resource_exhausted` with a reason naming it, the connection stays up, and
//! memory does not grow while limits are being hit (docs/architecture.md "Limits",
//! protocol [S2], [S18]).

mod common;

use std::time::Duration;

use capwire::proto::{codec, Codec, Frame, Ping};
use capwire::transport::TransportConfig;
use capwire::{Capability, Code, Limits, Methods, Reason, Registry, SessionConfig, Value};
use common::*;

/// Counts the bytes each thread has live on the heap. `#[tokio::test]` runs
/// the sessions of a test on the test's own thread, so the count of that
/// thread is the memory the test's sessions hold.
#[allow(unsafe_code)]
mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static LIVE: Cell<i64> = const { Cell::new(0) };
    }

    fn add(n: i64) {
        // `try_with`: the slot may already be gone while a thread exits.
        let _ = LIVE.try_with(|c| c.set(c.get() + n));
    }

    /// Bytes allocated minus bytes freed on this thread.
    pub(super) fn live() -> i64 {
        LIVE.with(Cell::get)
    }

    pub(super) struct Counting;

    // SAFETY: every method forwards its arguments unchanged to `System`, which
    // upholds the `GlobalAlloc` contract; the bookkeeping is a const-initialised
    // thread-local `Cell<i64>` that neither allocates nor unwinds.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            add(layout.size() as i64);
            // SAFETY: same contract as our caller's.
            unsafe { System.alloc(layout) }
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            add(layout.size() as i64);
            // SAFETY: same contract as our caller's.
            unsafe { System.alloc_zeroed(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            add(-(layout.size() as i64));
            // SAFETY: same contract as our caller's.
            unsafe { System.dealloc(ptr, layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            add(new_size as i64 - layout.size() as i64);
            // SAFETY: same contract as our caller's.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }
}

#[global_allocator]
static ALLOC: counting::Counting = counting::Counting;

/// Methods that produce what the limits are about.
fn service() -> Methods {
    let (probe, _events) = probe();
    let mut methods = Methods::new("Limits")
        .method("blob", |args: Value, _ctx| async move {
            let (n,): (usize,) = args.decode()?;
            Value::new(&"x".repeat(n))
        })
        .method("twoCounters", |_args, _ctx| async move {
            Value::with_caps(
                &serde_json::json!([{ "$cap": 0 }, { "$cap": 1 }]),
                vec![Capability::local(counter(0)), Capability::local(counter(0))],
            )
        })
        .method("counterAndBlob", |args: Value, _ctx| async move {
            let (n,): (usize,) = args.decode()?;
            Value::with_caps(
                &serde_json::json!({ "c": { "$cap": 0 }, "blob": "x".repeat(n) }),
                vec![Capability::local(counter(0))],
            )
        })
        .method("nest", |args: Value, _ctx| async move {
            let (depth,): (usize,) = args.decode()?;
            Value::new(&nested(depth))
        })
        .method("echo", |args: Value, _ctx| async move { Ok(args) })
        .method("makeCounter", |_args, ctx| async move {
            Ok(Value::capability(ctx.export(counter(0))))
        });
    // `hang` from the probe, whose reports nobody reads here.
    let hang = std::sync::Arc::new(probe);
    methods = methods.method("hang", move |args, ctx| {
        capwire::Object::call(hang.clone(), "hang", args, ctx)
    });
    methods
}

fn nested(depth: usize) -> serde_json::Value {
    let mut v = serde_json::json!(0);
    for _ in 0..depth {
        v = serde_json::json!([v]);
    }
    v
}

fn limits(f: impl FnOnce(&mut Limits)) -> SessionConfig {
    let mut l = Limits::default();
    f(&mut l);
    SessionConfig::default().limits(l)
}

async fn served(server: SessionConfig, client: SessionConfig) -> (Pair, Capability) {
    let registry = Registry::new();
    registry
        .serve("limits", "1.0", service())
        .expect("serve")
        .forget();
    let p = pair_with(Kind::Mem, registry, server, client).await;
    let cap = p.client.bootstrap("limits", None).await.expect("bootstrap");
    (p, cap)
}

fn arg<T: serde::Serialize>(v: T) -> Value {
    Value::new(&(v,)).unwrap()
}

#[tokio::test]
async fn max_exports() {
    // The bootstrapped service is export 1 of 2.
    let (p, svc) = served(limits(|l| l.max_exports = 2), SessionConfig::default()).await;
    let c1 = svc.call("makeCounter", Value::null()).await.unwrap().cap(0);
    assert!(c1.is_ok());
    let r = svc.call("makeCounter", Value::null()).await;
    assert_status(
        &r,
        Code::ResourceExhausted,
        Some(Reason::MAX_CAPS_PER_CONNECTION),
    );

    // Releasing one makes room again.
    drop(c1);
    eventually("the release", || p.server.stats().exports == 1).await;
    let two = svc.call("twoCounters", Value::null()).await;
    assert_status(
        &two,
        Code::ResourceExhausted,
        Some(Reason::MAX_CAPS_PER_CONNECTION),
    );
    // The first of the two was not left behind in the table.
    assert_eq!(
        p.server.stats().exports,
        1,
        "a failed result leaked an export"
    );
    let c2 = svc
        .call("makeCounter", Value::null())
        .await
        .unwrap()
        .cap(0)
        .unwrap();
    let v: i64 = c2
        .call("increment", arg(5))
        .await
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(v, 5);
}

#[tokio::test]
async fn max_in_flight_in() {
    let (p, svc) = served(limits(|l| l.max_in_flight_in = 2), SessionConfig::default()).await;
    let a = tokio::spawn(svc.call("hang", Value::null()));
    let b = tokio::spawn(svc.call("hang", Value::null()));
    eventually("two running calls", || p.server.stats().answers == 2).await;

    for _ in 0..3 {
        let r = svc.call("echo", arg(1)).await;
        assert_status(
            &r,
            Code::ResourceExhausted,
            Some(Reason::MAX_CONCURRENT_CALLS),
        );
    }
    // A finished call frees its slot.
    a.abort();
    eventually("the slot to be freed", || p.server.stats().answers == 1).await;
    let v: i64 = svc
        .call("echo", arg(7))
        .await
        .unwrap()
        .decode::<(i64,)>()
        .unwrap()
        .0;
    assert_eq!(v, 7);
    b.abort();
}

#[tokio::test]
async fn max_in_flight_out() {
    let (p, svc) = served(
        SessionConfig::default(),
        limits(|l| l.max_in_flight_out = 2),
    )
    .await;
    let a = tokio::spawn(svc.call("hang", Value::null()));
    let b = tokio::spawn(svc.call("hang", Value::null()));
    eventually("two running calls", || p.server.stats().answers == 2).await;

    let before = p.client.stats().frames_out;
    let r = svc.call("echo", arg(1)).await;
    assert_status(
        &r,
        Code::ResourceExhausted,
        Some(Reason::MAX_CONCURRENT_CALLS),
    );
    assert_eq!(p.client.stats().frames_out, before, "failed locally");

    b.abort();
    eventually("the question to be freed", || {
        p.client.stats().questions == 1
    })
    .await;
    assert!(svc.call("echo", arg(1)).await.is_ok());
    a.abort();
}

#[tokio::test]
async fn max_depth() {
    // Arguments deeper than the callee's limit.
    let (p, svc) = served(limits(|l| l.max_depth = 8), SessionConfig::default()).await;
    // `(nested(7),)` is 8 deep.
    assert!(svc.call("echo", arg(nested(7))).await.is_ok());
    let r = svc.call("echo", arg(nested(8))).await;
    assert_status(&r, Code::ResourceExhausted, Some(Reason::MAX_VALUE_DEPTH));
    assert!(p.client.ping().await.is_ok());

    // A result deeper than the caller's limit.
    let (p, svc) = served(SessionConfig::default(), limits(|l| l.max_depth = 8)).await;
    assert!(svc.call("nest", arg(8)).await.is_ok());
    let r = svc.call("nest", arg(9)).await;
    assert_status(&r, Code::ResourceExhausted, Some(Reason::MAX_VALUE_DEPTH));
    assert!(
        svc.call("nest", arg(1)).await.is_ok(),
        "the connection is up"
    );
    assert_eq!(p.client.stats().questions, 0);
}

/// Frames over a frame limit are never sent ([S2]): a call over it fails
/// locally, a result over it is replaced by an error result, and the
/// connection stays up. The limit is the smaller of this side's own and the
/// one the peer announced in `hello`.
#[tokio::test]
async fn max_frame_bytes() {
    const LIMIT: usize = 4096;
    let small = TransportConfig::default().max_frame_bytes(LIMIT);
    let big = TransportConfig::default();
    for kind in [Kind::Tcp, Kind::Ws] {
        for (server_tc, client_tc, side) in [(&big, &small, "client"), (&small, &big, "server")] {
            let registry = Registry::new();
            registry.serve("limits", "1.0", service()).unwrap().forget();
            let p = pair_with_transport(
                kind,
                registry,
                SessionConfig::default(),
                SessionConfig::default(),
                server_tc,
                client_tc,
            )
            .await;
            let svc = p.client.bootstrap("limits", None).await.unwrap();
            let what = format!("{kind:?}, {side} has the small limit");

            // A result too big for the client, or for the server to send.
            let r = svc.call("blob", arg(2 * LIMIT)).await;
            assert_status(&r, Code::ResourceExhausted, Some(Reason::MAX_FRAME_BYTES));
            let details = r.unwrap_err().details_json().expect("details");
            assert_eq!(details["limit"], LIMIT, "{what}");

            // The same with a capability in it: its export is taken back.
            let r = svc.call("counterAndBlob", arg(2 * LIMIT)).await;
            assert_status(&r, Code::ResourceExhausted, Some(Reason::MAX_FRAME_BYTES));
            assert_eq!(p.server.stats().exports, 1, "{what}: the counter leaked");

            // Arguments too big: the call fails here, nothing is sent.
            let before = p.client.stats().frames_out;
            let r = svc.call("echo", arg("y".repeat(2 * LIMIT))).await;
            assert_status(&r, Code::ResourceExhausted, Some(Reason::MAX_FRAME_BYTES));
            assert_eq!(p.client.stats().frames_out, before, "{what}");

            // The connection survived all of it.
            let v: String = svc.call("blob", arg(10)).await.unwrap().decode().unwrap();
            assert_eq!(v.len(), 10, "{what}");
            assert_eq!(p.client.stats().questions, 0);
            assert_eq!(p.server.stats().answers, 0);
        }
    }
}

/// A peer that keeps sending calls but never reads the answers is slowed
/// down (the session stops reading) instead of making it buffer answers
/// without bound.
#[tokio::test]
async fn a_peer_that_does_not_read_is_pushed_back() {
    let mut tc = TransportConfig::default();
    tc.queue_frames = 4;
    let (_session, mut raw) = Raw::connect(Registry::new(), SessionConfig::default(), &tc).await;
    raw.send(Frame::Hello(capwire::proto::Hello::new())).await;

    // Calls on a capability that does not exist: each is answered at once.
    let mut sent = 0u64;
    'flood: for id in 1..=5000u64 {
        let frame = Frame::Call(call_frame(id, 999, "x", serde_json::json!(null)));
        let mut bytes = bytes::Bytes::from(codec::encode(&frame, Codec::Json).unwrap());
        let mut tries = 0;
        loop {
            match raw.transport.sender.try_send(bytes).expect("open") {
                None => break,
                Some(back) => {
                    bytes = back;
                    tries += 1;
                    if tries > 100 {
                        break 'flood;
                    }
                    tokio::task::yield_now().await;
                }
            }
        }
        sent = id;
    }
    // What the two queues hold plus the session's small overflow allowance
    // (about 75 here), far from the 5000 offered.
    assert!(
        sent < 200,
        "the session read {sent} calls without its answers being read"
    );

    // Once the peer reads, every call gets its one answer, in order.
    for id in 1..=sent {
        assert_eq!(raw.error(id).await.code, Code::NotFound);
    }
    raw.send(Frame::Ping(Ping { nonce: 3 })).await;
    match raw.recv().await {
        Some(Frame::Pong(p)) => assert_eq!(p.nonce, 3),
        other => panic!("{other:?}"),
    }
}

/// A call's frame does not wait for room in the transport queue, so what
/// bounds the frames calls can queue for a peer that never reads is the
/// question limit: calls past it fail at once, and none hangs or queues.
#[tokio::test]
async fn calls_to_a_peer_that_does_not_read_stop_at_the_question_limit() {
    let mut tc = TransportConfig::default();
    tc.queue_frames = 4;
    let (session, raw) =
        Raw::connect(Registry::new(), limits(|l| l.max_in_flight_out = 16), &tc).await;
    let runtime = session.runtime();
    let mut waiting = Vec::new();
    let mut refused = 0;
    for _ in 0..200 {
        let mut call = Box::pin(runtime.call("ping", Value::null()));
        match futures_util::poll!(&mut call) {
            std::task::Poll::Pending => waiting.push(call),
            std::task::Poll::Ready(r) => {
                assert_status(
                    &r,
                    Code::ResourceExhausted,
                    Some(Reason::MAX_CONCURRENT_CALLS),
                );
                refused += 1;
            }
        }
    }
    assert_eq!(waiting.len(), 16, "the first 16 are sent and wait");
    assert_eq!(refused, 184);
    assert_eq!(session.stats().questions, 16);
    // Dropped unanswered: each sends `cancel` and leaves the table.
    drop(waiting);
    eventually("the questions to be freed", || {
        session.stats().questions == 0
    })
    .await;
    drop(raw);
}

/// Hitting every limit again and again leaves the tables as they were and
/// does not grow this thread's heap.
#[tokio::test]
async fn memory_stays_bounded_while_limits_are_hit() {
    let small = TransportConfig::default().max_frame_bytes(4096);
    let registry = Registry::new();
    registry.serve("limits", "1.0", service()).unwrap().forget();
    let p = pair_with_transport(
        Kind::Mem,
        registry.clone(),
        limits(|l| {
            l.max_exports = 2;
            l.max_in_flight_in = 3;
            l.max_depth = 8;
        }),
        limits(|l| l.max_in_flight_out = 4),
        &small,
        &small,
    )
    .await;
    let svc = p.client.bootstrap("limits", None).await.unwrap();
    let _hangs: Vec<_> = (0..2)
        .map(|_| tokio::spawn(svc.call("hang", Value::null())))
        .collect();
    eventually("hangs", || p.server.stats().answers == 2).await;
    let _held = svc.call("makeCounter", Value::null()).await.unwrap();

    let round = || {
        let svc = svc.clone();
        async move {
            // Exports: the table is full.
            let r = svc.call("makeCounter", Value::null()).await;
            assert_status(
                &r,
                Code::ResourceExhausted,
                Some(Reason::MAX_CAPS_PER_CONNECTION),
            );
            // Depth, both directions (the client default is 64).
            let r = svc.call("echo", arg(nested(9))).await;
            assert_status(&r, Code::ResourceExhausted, Some(Reason::MAX_VALUE_DEPTH));
            // Frames: a result, and arguments.
            let r = svc.call("blob", arg(5000)).await;
            assert_status(&r, Code::ResourceExhausted, Some(Reason::MAX_FRAME_BYTES));
            let r = svc.call("echo", arg("z".repeat(5000))).await;
            assert_status(&r, Code::ResourceExhausted, Some(Reason::MAX_FRAME_BYTES));
            // In flight: a third call runs next to the two hangs, a fourth is refused.
            let third = tokio::spawn(svc.call("hang", Value::null()));
            tokio::task::yield_now().await;
            let r = svc.call("echo", arg(1)).await;
            let code = r.as_ref().map_err(|s| s.code).err();
            assert!(code == Some(Code::ResourceExhausted), "{r:?}");
            third.abort();
            let _ = third.await;
        }
    };
    for _ in 0..50 {
        round().await;
    }
    eventually("quiet tables", || {
        p.server.stats().answers == 2 && p.client.stats().questions == 2
    })
    .await;
    let before = counting::live();
    let stats_before = (p.server.stats().exports, p.client.stats().imports);
    for _ in 0..500 {
        round().await;
    }
    eventually("quiet tables", || {
        p.server.stats().answers == 2 && p.client.stats().questions == 2
    })
    .await;
    let grown = counting::live() - before;
    assert!(
        grown < 32 * 1024,
        "the heap grew by {grown} bytes over 500 rounds"
    );
    assert_eq!(
        (p.server.stats().exports, p.client.stats().imports),
        stats_before
    );
    assert!(p.client.ping().await.unwrap() < Duration::from_secs(5));
}
