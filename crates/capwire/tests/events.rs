//! Events and stats: subscribers see bootstraps, calls (with outcome and
//! duration), revocations, errors and the end; a subscriber that never reads
//! does not slow the session; `stats()` counts frames, bytes and calls
//! (docs/architecture.md, "Events and stats").

mod common;

use std::time::Duration;

use capwire::events::Direction;
use capwire::{Code, Event, SessionConfig, Value};
use common::*;
use tokio::sync::broadcast::{self, error::TryRecvError};

async fn next(rx: &mut broadcast::Receiver<Event>) -> Event {
    within(Duration::from_secs(5), "an event", rx.recv())
        .await
        .expect("an event")
}

/// The next `Call` event: (direction, cap, method, duration, outcome).
async fn next_call(
    rx: &mut broadcast::Receiver<Event>,
) -> (Direction, u64, String, Duration, Code) {
    loop {
        if let Event::Call {
            direction,
            cap,
            method,
            duration,
            outcome,
            ..
        } = next(rx).await
        {
            return (direction, cap, method, duration, outcome);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn subscribers_see_bootstraps_and_calls_with_outcome_and_duration() {
    let (registry, handle, mut probe_events) = probe_registry();
    let p = pair(Kind::Mem, registry).await;
    let mut server = p.server.events();
    let mut client = p.client.events();

    let probe = p.client.bootstrap("probe", None).await.unwrap();
    let id = probe.remote_id().unwrap();
    match next(&mut server).await {
        Event::Bootstrap { name, outcome } => {
            assert_eq!((name.as_str(), outcome), ("probe", Code::Ok));
        }
        other => panic!("{other:?}"),
    }
    let (dir, cap, method, _, outcome) = next_call(&mut server).await;
    assert_eq!(
        (dir, cap, method.as_str(), outcome),
        (Direction::Incoming, 0, "bootstrap", Code::Ok)
    );
    let (dir, cap, method, _, outcome) = next_call(&mut client).await;
    assert_eq!(
        (dir, cap, method.as_str(), outcome),
        (Direction::Outgoing, 0, "bootstrap", Code::Ok)
    );

    // A call that takes 50 ms, and one that fails.
    probe
        .call("sleep", Value::new(&(50,)).unwrap())
        .await
        .unwrap();
    let _ = probe.call("nope", Value::null()).await;
    for rx in [&mut server, &mut client] {
        let (_, cap, method, duration, outcome) = next_call(rx).await;
        assert_eq!((cap, method.as_str(), outcome), (id, "sleep", Code::Ok));
        assert_eq!(duration, Duration::from_millis(50));
        let (_, _, method, _, outcome) = next_call(rx).await;
        assert_eq!((method.as_str(), outcome), ("nope", Code::Unimplemented));
    }

    // A call whose future is dropped is reported `cancelled` on both sides.
    let call = tokio::spawn(probe.call("hang", Value::null()));
    while probe_events.started().await.method != "hang" {}
    call.abort();
    for (rx, dir) in [
        (&mut client, Direction::Outgoing),
        (&mut server, Direction::Incoming),
    ] {
        let (d, _, method, _, outcome) = next_call(rx).await;
        assert_eq!(
            (d, method.as_str(), outcome),
            (dir, "hang", Code::Cancelled)
        );
    }

    // Revocation, seen from both sides.
    drop(handle);
    for (rx, dir) in [
        (&mut server, Direction::Outgoing),
        (&mut client, Direction::Incoming),
    ] {
        match next(rx).await {
            Event::Revoke { direction, caps } => assert_eq!((direction, caps), (dir, vec![id])),
            other => panic!("{other:?}"),
        }
    }

    // A denied bootstrap is an event with its outcome.
    let _ = p.client.bootstrap("probe", None).await;
    match next(&mut server).await {
        Event::Bootstrap { outcome, .. } => assert_eq!(outcome, Code::NotFound),
        other => panic!("{other:?}"),
    }

    p.client.close().await;
    loop {
        if let Event::Closed { status } = next(&mut client).await {
            assert_eq!(status.code, Code::Unavailable);
            break;
        }
    }
}

#[tokio::test]
async fn a_protocol_error_is_an_error_event_then_closed() {
    let (registry, _h) = demo_registry();
    let (session, raw) = Raw::handshake(registry, SessionConfig::default()).await;
    let mut events = session.events();
    raw.send_bytes(br#"{"bogus":{}}"#).await;
    match next(&mut events).await {
        Event::Error { status } => assert_eq!(status.code, Code::Aborted),
        other => panic!("{other:?}"),
    }
    match next(&mut events).await {
        Event::Closed { status } => assert_eq!(status.code, Code::Aborted),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_subscriber_that_never_reads_does_not_stall_the_session() {
    let (registry, _h) = demo_registry();
    let mut config = SessionConfig::default();
    config.event_buffer = 4;
    let p = pair_with(Kind::Mem, registry, config.clone(), config).await;
    let mut idle_server = p.server.events();
    let mut idle_client = p.client.events();
    let demo = p.client.bootstrap("demo", None).await.unwrap();
    within(Duration::from_secs(10), "200 calls", async {
        for n in 0..200i64 {
            let v: i64 = demo
                .call("square", Value::new(&(n,)).unwrap())
                .await
                .unwrap()
                .decode()
                .unwrap();
            assert_eq!(v, n * n);
        }
    })
    .await;
    // The idle subscribers lost the oldest events and get the newest.
    for rx in [&mut idle_server, &mut idle_client] {
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Lagged(n)) if n > 150));
        let mut kept = 0;
        while rx.try_recv().is_ok() {
            kept += 1;
        }
        assert_eq!(kept, 4, "the buffer holds the last 4");
    }
    // A subscriber that does read, after lagging, carries on with new events.
    let _ = demo
        .call("square", Value::new(&(2,)).unwrap())
        .await
        .unwrap();
    match idle_client.recv().await {
        Ok(Event::Call { method, .. }) => assert_eq!(method, "square"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn stats_count_frames_bytes_and_calls() {
    for kind in [Kind::Mem, Kind::Tcp] {
        let (registry, _h) = demo_registry();
        let p = pair(kind, registry).await;
        let demo = p.client.bootstrap("demo", None).await.unwrap();
        for n in 0..3i64 {
            demo.call("square", Value::new(&(n,)).unwrap())
                .await
                .unwrap();
        }
        let _ = demo.call("fail", Value::null()).await;

        // hello + 5 calls each way, hello + 5 results back.
        eventually("the server to read everything", || {
            p.server.stats().frames_in == 6
        })
        .await;
        let (c, s) = (p.client.stats(), p.server.stats());
        assert_eq!((c.frames_out, c.frames_in), (6, 6), "{kind:?}");
        assert_eq!((s.frames_out, s.frames_in), (6, 6), "{kind:?}");
        assert_eq!(c.bytes_out, s.bytes_in, "{kind:?}");
        assert_eq!(s.bytes_out, c.bytes_in, "{kind:?}");
        assert!(c.bytes_out > 6 * 10);
        let expected = vec![(Code::Ok, 4), (Code::InvalidArgument, 1)];
        assert_eq!(
            c.calls, expected,
            "{kind:?}: bootstrap + 3 squares ok, 1 failed"
        );
        assert_eq!(s.calls, expected, "{kind:?}");
        assert_eq!((c.imports, c.questions), (1, 0));
        assert_eq!((s.exports, s.answers), (1, 0));
        assert_eq!(c.last_rtt_us, None, "no ping yet");

        p.client.ping().await.unwrap();
        let c = p.client.stats();
        assert!(c.last_rtt_us.is_some());
        assert_eq!(c.frames_out, 7);
        // The runtime capability reports the same numbers.
        let remote: serde_json::Value = p
            .client
            .runtime()
            .call("stats", Value::null())
            .await
            .unwrap()
            .decode()
            .unwrap();
        assert_eq!(remote["frames_in"], 8, "{kind:?}: 6 + ping + this call");
        assert_eq!(remote["exports"], 1);
    }
}
