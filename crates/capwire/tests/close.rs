//! Closing: `Session::close` lets calls in flight finish within the grace
//! period and fails the rest `unavailable`; a peer's `goaway` stops new
//! calls; a peer that vanishes fails everything pending `unavailable`
//! (protocol [S24]).

mod common;

use std::time::Duration;

use capwire::proto::{CallResult, CapDescriptor, Codec, Frame, Goaway, Hello, Outcome, Payload};
use capwire::transport::{self, Listener, TransportConfig};
use capwire::{Capability, Code, Registry, Session, SessionConfig, Status, Value};
use common::*;
use tokio::time::Instant;

fn grace(ms: u64) -> SessionConfig {
    let mut config = SessionConfig::default();
    config.close_grace = Duration::from_millis(ms);
    config
}

/// Yields until `session` has received `n` more frames than `before`.
async fn frames_in(session: &Session, before: u64, n: u64) {
    eventually("frames to arrive", || {
        session.stats().frames_in >= before + n
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn calls_in_flight_finish_within_the_grace_period() {
    let (registry, _h, mut events) = probe_registry();
    let p = pair_with(Kind::Mem, registry, grace(1000), SessionConfig::default()).await;
    let probe = p.client.bootstrap("probe", None).await.unwrap();
    let calls: Vec<_> = (0..3)
        .map(|_| tokio::spawn(probe.call("sleep", Value::new(&(100,)).unwrap())))
        .collect();
    for _ in 0..3 {
        events.started().await;
    }

    let t0 = Instant::now();
    let before = p.client.stats().frames_in;
    let closing = tokio::spawn({
        let server = p.server.clone();
        async move { server.close().await }
    });
    // Once the client has the goaway, it makes no new calls.
    frames_in(&p.client, before, 1).await;
    let out = p.client.stats().frames_out;
    let r = probe.call("sleep", Value::new(&(1,)).unwrap()).await;
    assert_status(&r, Code::Unavailable, None);
    assert_eq!(p.client.stats().frames_out, out, "failed locally");

    closing.await.unwrap();
    assert_eq!(
        t0.elapsed(),
        Duration::from_millis(100),
        "close waited for the calls"
    );
    for call in calls {
        let v: u64 = call
            .await
            .unwrap()
            .expect("finished in time")
            .decode()
            .unwrap();
        assert_eq!(v, 100);
    }
    let server_end = within(Duration::from_secs(1), "server end", p.server.closed()).await;
    assert_eq!(server_end.code, Code::Unavailable);
    let client_end = within(Duration::from_secs(1), "client end", p.client.closed()).await;
    assert_eq!(client_end.code, Code::Unavailable);
    assert!(client_end.message.contains("closing"), "{client_end}");
}

#[tokio::test(start_paused = true)]
async fn calls_still_running_after_the_grace_period_fail_unavailable() {
    let (registry, _h, mut events) = probe_registry();
    let p = pair_with(Kind::Mem, registry, grace(200), SessionConfig::default()).await;
    let probe = p.client.bootstrap("probe", None).await.unwrap();
    let call = tokio::spawn(probe.call("hang", Value::null()));
    events.started().await;

    let t0 = Instant::now();
    p.server.close().await;
    assert_eq!(t0.elapsed(), Duration::from_millis(200));
    assert_status(&call.await.unwrap(), Code::Unavailable, None);
    let stopped = events.stopped().await;
    assert!(stopped.cancelled && !stopped.completed);
}

/// `close` also waits for this side's own calls: the peer was told the grace
/// period and answers them within it.
#[tokio::test(start_paused = true)]
async fn close_waits_for_our_own_calls_too() {
    let (registry, _h, mut events) = probe_registry();
    let p = pair_with(Kind::Mem, registry, SessionConfig::default(), grace(1000)).await;
    let probe = p.client.bootstrap("probe", None).await.unwrap();
    let call = tokio::spawn(probe.call("sleep", Value::new(&(100,)).unwrap()));
    events.started().await;

    let t0 = Instant::now();
    p.client.close().await;
    assert_eq!(t0.elapsed(), Duration::from_millis(100));
    assert!(
        call.await.unwrap().is_ok(),
        "answered within the grace period"
    );
}

#[tokio::test]
async fn after_close_everything_fails_unavailable() {
    for kind in [Kind::Mem, Kind::Tcp, Kind::Ws] {
        let (registry, _h) = demo_registry();
        let p = pair(kind, registry).await;
        let demo = p.client.bootstrap("demo", None).await.unwrap();
        p.client.close().await;
        p.client.close().await; // a second close is a no-op

        let r = demo.call("square", Value::new(&(2,)).unwrap()).await;
        assert_status(&r, Code::Unavailable, None);
        assert_eq!(p.client.ping().await.unwrap_err().code, Code::Unavailable);
        assert_eq!(p.client.closed().await.code, Code::Unavailable);
        // The server saw the connection end too.
        let end = within(Duration::from_secs(5), "server end", p.server.closed()).await;
        assert_eq!(end.code, Code::Unavailable, "{kind:?}: {end}");
        let r = p.server.runtime().call("ping", Value::null()).await;
        assert_status(&r, Code::Unavailable, None);
    }
}

/// A client session whose server is a raw peer, over memory or TCP.
async fn raw_server(kind: Kind) -> (Session, Raw) {
    let tc = TransportConfig::default();
    let (c, s) = match kind {
        Kind::Mem => transport::memory_pair(&tc),
        Kind::Tcp => {
            let mut l = Listener::bind(&"tcp://127.0.0.1:0".parse().unwrap(), tc.clone())
                .await
                .unwrap();
            let c = transport::connect(l.local_addr(), &tc).await.unwrap();
            (c, l.accept().await.unwrap())
        }
        other => unreachable!("{other:?}"),
    };
    let client = Session::new(c, Registry::new(), SessionConfig::default());
    let mut raw = Raw {
        transport: s,
        codec: Codec::Json,
    };
    assert!(matches!(raw.recv().await, Some(Frame::Hello(_))));
    raw.send(Frame::Hello(Hello::new())).await;
    (client, raw)
}

/// Answers the client's bootstrap with export 2.
async fn serve_bootstrap(client: &Session, raw: &mut Raw) -> Capability {
    let boot = tokio::spawn({
        let client = client.clone();
        async move { client.bootstrap("svc", None).await }
    });
    let id = match raw.recv().await {
        Some(Frame::Call(c)) => c.id,
        other => panic!("{other:?}"),
    };
    raw.send(Frame::Result(CallResult {
        id,
        outcome: Outcome::Ok {
            value: Payload::encode(Codec::Json, &serde_json::json!({ "$cap": 0 })).unwrap(),
            caps: vec![CapDescriptor::Export(2)],
        },
    }))
    .await;
    boot.await.unwrap().expect("bootstrap")
}

#[tokio::test]
async fn a_peer_that_vanishes_mid_call_fails_pending_calls_unavailable() {
    for kind in [Kind::Mem, Kind::Tcp] {
        let (client, mut raw) = raw_server(kind).await;
        let svc = serve_bootstrap(&client, &mut raw).await;
        let pending = tokio::spawn(svc.call("work", Value::null()));
        assert!(matches!(raw.recv().await, Some(Frame::Call(_))));
        drop(raw);

        let r = within(Duration::from_secs(5), "the pending call", pending)
            .await
            .unwrap();
        assert_status(&r, Code::Unavailable, None);
        let end = within(Duration::from_secs(5), "the end", client.closed()).await;
        assert_eq!(end.code, Code::Unavailable, "{kind:?}");
        assert_status(
            &svc.call("work", Value::null()).await,
            Code::Unavailable,
            None,
        );
        assert_eq!(client.stats().questions, 0);
    }
}

#[tokio::test]
async fn a_goaway_from_the_peer_stops_new_calls() {
    let (client, mut raw) = raw_server(Kind::Mem).await;
    let svc = serve_bootstrap(&client, &mut raw).await;
    let in_flight = tokio::spawn(svc.call("work", Value::null()));
    let call_id = match raw.recv().await {
        Some(Frame::Call(c)) => c.id,
        other => panic!("{other:?}"),
    };

    let before = client.stats().frames_in;
    raw.send(Frame::Goaway(Goaway {
        status: Status::unavailable("down for maintenance"),
        grace_ms: 5000,
    }))
    .await;
    frames_in(&client, before, 1).await;

    let out = client.stats().frames_out;
    let r = svc.call("work", Value::null()).await;
    assert_status(&r, Code::Unavailable, None);
    assert!(r.unwrap_err().message.contains("maintenance"));
    let r = client.bootstrap("svc", None).await;
    assert_eq!(r.unwrap_err().code, Code::Unavailable);
    assert_eq!(client.stats().frames_out, out, "no call was sent");

    // Work in flight still completes during the grace period.
    raw.send(Frame::Result(CallResult {
        id: call_id,
        outcome: Outcome::Ok {
            value: Payload::encode(Codec::Json, &"done").unwrap(),
            caps: vec![],
        },
    }))
    .await;
    let v: String = in_flight.await.unwrap().unwrap().decode().unwrap();
    assert_eq!(v, "done");

    drop(raw);
    let end = within(Duration::from_secs(5), "the end", client.closed()).await;
    assert_eq!(end.code, Code::Unavailable);
    assert!(
        end.message.contains("maintenance"),
        "the goaway's reason: {end}"
    );
}

/// The closing side answers calls that arrive after its goaway with
/// `unavailable` and still sends the results of the calls it is finishing.
#[tokio::test(start_paused = true)]
async fn calls_arriving_after_our_goaway_are_answered_unavailable() {
    let (registry, _h, mut events) = probe_registry();
    let (session, mut raw) = Raw::handshake(registry, grace(1000)).await;
    let probe = raw.bootstrap(1, "probe").await;
    raw.call(2, probe, "sleep", serde_json::json!([100])).await;
    events.started().await;

    let closing = tokio::spawn({
        let session = session.clone();
        async move { session.close().await }
    });
    match raw.recv().await {
        Some(Frame::Goaway(g)) => {
            assert_eq!(g.status.code, Code::Ok);
            assert_eq!(g.grace_ms, 1000);
        }
        other => panic!("expected goaway, got {other:?}"),
    }
    raw.call(3, probe, "sleep", serde_json::json!([1])).await;
    assert_eq!(raw.error(3).await.code, Code::Unavailable);
    match raw.result().await {
        (2, Outcome::Ok { .. }) => {}
        other => panic!("the call in flight was not finished: {other:?}"),
    }
    assert_eq!(raw.recv().await, None, "then the connection closes");
    closing.await.unwrap();
}

/// A server shut down gracefully: it stops accepting at once, tells every
/// session (`goaway`), lets the call in flight finish, and returns once the
/// sessions have ended; the client's next call fails `unavailable` locally.
#[tokio::test]
async fn a_server_shuts_down_gracefully() {
    use capwire::dialect::{ServeConfig, Server};
    let (registry, _served, _probe) = probe_registry();
    let listener = Listener::bind(
        &"tcp://127.0.0.1:0".parse().unwrap(),
        TransportConfig::default(),
    )
    .await
    .unwrap();
    let addr = listener.local_addr().clone();
    let server = Server::start(listener, registry, ServeConfig::default());
    let t = transport::connect(&addr, &TransportConfig::default())
        .await
        .unwrap();
    let client = Session::new(t, Registry::new(), SessionConfig::default());
    let probe = client.bootstrap("probe", None).await.unwrap();
    eventually("the server holds the session", || {
        server.sessions().len() == 1
    })
    .await;

    let slow = tokio::spawn({
        let probe = probe.clone();
        async move { probe.call("sleep", Value::new(&(200u64,)).unwrap()).await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let started = Instant::now();
    within(Duration::from_secs(5), "the shutdown", server.shutdown()).await;
    let slept: u64 = slow
        .await
        .unwrap()
        .expect("the call in flight finished")
        .decode()
        .unwrap();
    assert_eq!(slept, 200);
    assert!(
        started.elapsed() >= Duration::from_millis(100),
        "it waited for the call"
    );

    // The listener is gone, and the client heard the goaway.
    assert!(transport::connect(&addr, &TransportConfig::default())
        .await
        .is_err());
    let after = probe.call("sleep", Value::new(&(0u64,)).unwrap()).await;
    assert_status(&after, Code::Unavailable, None);
    let closed = within(Duration::from_secs(5), "the client's end", client.closed()).await;
    assert_eq!(closed.code, Code::Unavailable, "{closed}");
}
