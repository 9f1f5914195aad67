//! What a session does with bad input from its peer (protocol §7): fatal
//! errors get `goaway` then close; per-call errors answer that call only.
//! The peer here is raw: frames built and encoded by hand.

mod common;

use capwire::proto::{
    codec, Cancel, CapDescriptor, Codec, Credit, Finish, Frame, Hello, Outcome, Ping, Pong,
    Release, Revoked, StreamEnd,
};
use capwire::{Code, Reason, Session, SessionConfig};
use common::*;

async fn demo_peer() -> (Session, Raw, capwire::ServeHandle) {
    let (registry, handle) = demo_registry();
    let (session, raw) = Raw::handshake(registry, SessionConfig::default()).await;
    (session, raw, handle)
}

/// The session ends, and says why in its `closed()` status.
async fn assert_ended(session: &Session, code: Code) {
    let end = within(
        std::time::Duration::from_secs(5),
        "the end",
        session.closed(),
    )
    .await;
    assert_eq!(end.code, code, "{end}");
}

#[tokio::test]
async fn a_frame_before_hello_is_a_protocol_violation() {
    let (registry, _h) = demo_registry();
    let (session, mut raw) =
        Raw::connect(registry, SessionConfig::default(), &Default::default()).await;
    raw.send(Frame::Ping(Ping { nonce: 1 })).await;
    let status = raw
        .expect_goaway_and_close(Code::Aborted, Some(Reason::PROTOCOL_VIOLATION))
        .await;
    assert!(status.message.contains("before hello"), "{status}");
    assert_ended(&session, Code::Aborted).await;
}

#[tokio::test]
async fn a_second_hello_is_a_protocol_violation() {
    let (_session, mut raw, _h) = demo_peer().await;
    raw.send(Frame::Hello(Hello::new())).await;
    raw.expect_goaway_and_close(Code::Aborted, Some(Reason::PROTOCOL_VIOLATION))
        .await;
}

#[tokio::test]
async fn a_wrong_hello_version_is_refused() {
    let (registry, _h) = demo_registry();
    let (session, mut raw) =
        Raw::connect(registry, SessionConfig::default(), &Default::default()).await;
    let mut hello = Hello::new();
    hello.v = 2;
    raw.send(Frame::Hello(hello)).await;
    let status = raw
        .expect_goaway_and_close(Code::FailedPrecondition, Some(Reason::VERSION_MISMATCH))
        .await;
    assert!(
        status.message.contains('2') && status.message.contains('1'),
        "names both versions: {status}"
    );
    assert_ended(&session, Code::FailedPrecondition).await;
}

#[tokio::test]
async fn undecodable_frames_are_fatal() {
    let cases: [&[u8]; 7] = [
        br#"{"bogus":{}}"#,                            // unknown op
        br#"{"jsonrpc":"2.0","method":"x","id":1}"#,   // another dialect
        br#"{"ping":{}}"#,                             // missing field
        br#"{"ping":{"nonce":1},"pong":{"nonce":1}}"#, // two ops
        b"[1,2,3]",                                    // not a frame encoding
        b"   ",                                        // empty
        &[
            0x81, 0xa4, b'p', b'i', b'n', b'g', 0xc6, 0xff, 0xff, 0xff, 0xff,
        ], // a bin claiming 4 GiB
    ];
    for bytes in cases {
        let (session, mut raw, _h) = demo_peer().await;
        raw.send_bytes(bytes).await;
        let status = raw
            .expect_goaway_and_close(Code::Aborted, Some(Reason::PROTOCOL_VIOLATION))
            .await;
        assert!(!status.message.is_empty());
        assert_ended(&session, Code::Aborted).await;
    }
}

#[tokio::test]
async fn a_long_decoder_error_is_cut_in_the_goaway() {
    let (_session, mut raw, _h) = demo_peer().await;
    let op = "x".repeat(10_000);
    raw.send_bytes(format!(r#"{{"{op}":{{}}}}"#).as_bytes())
        .await;
    let status = raw
        .expect_goaway_and_close(Code::Aborted, Some(Reason::PROTOCOL_VIOLATION))
        .await;
    assert!(
        status.message.len() <= 256,
        "{} bytes",
        status.message.len()
    );
}

#[tokio::test]
async fn per_call_errors_answer_that_call_only() {
    let (session, mut raw, _h) = demo_peer().await;
    let demo = raw.bootstrap(1, "demo").await;

    // A capability id never exported.
    raw.call(2, 4242, "square", serde_json::json!([2])).await;
    assert_eq!(raw.error(2).await.code, Code::NotFound);
    // An unknown method.
    raw.call(3, demo, "nope", serde_json::json!([])).await;
    assert_eq!(raw.error(3).await.code, Code::Unimplemented);
    // Arguments of the wrong shape.
    raw.call(4, demo, "square", serde_json::json!(["seven"]))
        .await;
    assert_eq!(raw.error(4).await.code, Code::InvalidArgument);
    raw.call(5, demo, "square", serde_json::json!({"n": 7}))
        .await;
    assert_eq!(raw.error(5).await.code, Code::InvalidArgument);
    // An unknown method of the bootstrap object, and an unknown name.
    raw.call(6, 0, "frobnicate", serde_json::json!({})).await;
    assert_eq!(raw.error(6).await.code, Code::Unimplemented);
    raw.call(7, 0, "bootstrap", serde_json::json!({ "name": "nope" }))
        .await;
    assert_eq!(raw.error(7).await.code, Code::NotFound);
    raw.call(8, 0, "bootstrap", serde_json::json!([1, 2])).await;
    assert_eq!(raw.error(8).await.code, Code::InvalidArgument);
    // An `import` descriptor naming something the session never exported.
    let mut call = call_frame(9, demo, "echoCap", serde_json::json!({ "$cap": 0 }));
    call.caps = vec![CapDescriptor::Import(777)];
    raw.send(Frame::Call(call)).await;
    assert_eq!(raw.error(9).await.code, Code::NotFound);

    // The connection is fine: a good call works, ids can be reused once answered.
    raw.call(2, demo, "square", serde_json::json!([7])).await;
    match raw.result().await {
        (2, Outcome::Ok { value, .. }) => assert_eq!(value.to_json().unwrap(), 49),
        other => panic!("{other:?}"),
    }
    raw.send(Frame::Ping(Ping { nonce: 4 })).await;
    assert!(matches!(
        raw.recv().await,
        Some(Frame::Pong(Pong { nonce: 4 }))
    ));
    assert_eq!(session.stats().answers, 0);
}

#[tokio::test]
async fn a_release_of_unknown_ids_or_over_the_count_is_a_violation() {
    for release in [
        Release { cap: 4242, n: 1 }, // never exported
        Release { cap: 0, n: 1 },    // the bootstrap object
        Release { cap: 1, n: 1 },    // the runtime capability
        Release { cap: 2, n: 2 },    // over the count
    ] {
        let (session, mut raw, _h) = demo_peer().await;
        let demo = raw.bootstrap(1, "demo").await;
        assert_eq!(demo, 2);
        raw.send(Frame::Release(release)).await;
        raw.expect_goaway_and_close(Code::Aborted, Some(Reason::PROTOCOL_VIOLATION))
            .await;
        assert_ended(&session, Code::Aborted).await;
    }
}

#[tokio::test]
async fn a_double_release_is_a_violation() {
    let (session, mut raw, _h) = demo_peer().await;
    let demo = raw.bootstrap(1, "demo").await;
    raw.send(Frame::Release(Release { cap: demo, n: 0 })).await; // does nothing
    raw.send(Frame::Release(Release { cap: demo, n: 1 })).await;
    raw.send(Frame::Ping(Ping { nonce: 1 })).await;
    assert!(
        matches!(raw.recv().await, Some(Frame::Pong(_))),
        "the first release is fine"
    );
    eventually("the export to be released", || session.stats().exports == 0).await;
    raw.send(Frame::Release(Release { cap: demo, n: 1 })).await;
    raw.expect_goaway_and_close(Code::Aborted, Some(Reason::PROTOCOL_VIOLATION))
        .await;
}

#[tokio::test]
async fn a_duplicate_live_question_id_is_a_violation() {
    let (registry, _h, mut events) = probe_registry();
    let (session, mut raw) = Raw::handshake(registry, SessionConfig::default()).await;
    let probe = raw.bootstrap(1, "probe").await;
    raw.call(5, probe, "hang", serde_json::json!(null)).await;
    events.started().await;
    raw.call(5, probe, "sleep", serde_json::json!([1])).await;
    // No result for 5 (it would cross the running call's answer): goaway.
    raw.expect_goaway_and_close(Code::Aborted, Some(Reason::PROTOCOL_VIOLATION))
        .await;
    assert!(
        events.stopped().await.cancelled,
        "the running call was stopped"
    );
    assert_ended(&session, Code::Aborted).await;
}

#[tokio::test]
async fn stray_frames_that_are_ignored() {
    let (session, mut raw, _h) = demo_peer().await;
    let demo = raw.bootstrap(1, "demo").await;
    // A result for a question the session never asked.
    raw.send(Frame::Result(capwire::proto::CallResult {
        id: 999,
        outcome: Outcome::Err(capwire::Status::new(Code::Internal, "stray")),
    }))
    .await;
    // cancel / finish / credit for unknown ids, a pong nobody asked for, a
    // revocation of ids the session does not import.
    raw.send(Frame::Cancel(Cancel { id: 77 })).await;
    raw.send(Frame::Finish(Finish { id: 77 })).await;
    raw.send(Frame::Credit(Credit { id: 77, n: 5 })).await;
    raw.send(Frame::Pong(Pong { nonce: 12345 })).await;
    raw.send(Frame::Revoked(Revoked {
        caps: vec![0, 1, 5],
    }))
    .await;
    // A frame of the other codec is fine too ([S1]).
    let ping = codec::encode(&Frame::Ping(Ping { nonce: 9 }), Codec::Msgpack).unwrap();
    raw.send_bytes(&ping).await;
    match raw.recv().await {
        Some(Frame::Pong(Pong { nonce: 9 })) => {}
        other => panic!("{other:?}"),
    }
    raw.call(2, demo, "square", serde_json::json!([3])).await;
    assert!(matches!(raw.result().await, (2, Outcome::Ok { .. })));
    // Ids 0 and 1 cannot be revoked: calls to them still go to the peer.
    let boot = tokio::spawn({
        let session = session.clone();
        async move { session.bootstrap("anything", None).await }
    });
    let ping = tokio::spawn(session.runtime().call("ping", capwire::Value::null()));
    let mut targets = Vec::new();
    for _ in 0..2 {
        match raw.recv().await {
            Some(Frame::Call(c)) => targets.push(c.target),
            other => panic!("expected the session's call, got {other:?}"),
        }
    }
    targets.sort_by_key(|t| format!("{t:?}"));
    assert_eq!(
        targets,
        vec![
            capwire::proto::Target::Cap(0),
            capwire::proto::Target::Cap(1)
        ]
    );
    boot.abort();
    ping.abort();
}

#[tokio::test]
async fn stream_frames_for_questions_that_are_not_streams_are_violations() {
    let (_session, mut raw, _h) = demo_peer().await;
    raw.send(Frame::End(StreamEnd { id: 3 })).await;
    raw.expect_goaway_and_close(Code::Aborted, Some(Reason::PROTOCOL_VIOLATION))
        .await;
}

/// §7: a length prefix over the receiver's limit gets `goaway`
/// `resource_exhausted`/`max_frame_bytes`, then close. The raw peer's own
/// limit is larger, so the frame really reaches the session's reader.
#[tokio::test]
async fn an_oversize_frame_gets_max_frame_bytes() {
    use capwire::transport::{self, Listener, TransportConfig};
    let small = TransportConfig::default().max_frame_bytes(1024);
    let mut listener = Listener::bind(&"tcp://127.0.0.1:0".parse().unwrap(), small)
        .await
        .unwrap();
    let raw_end = transport::connect(listener.local_addr(), &TransportConfig::default())
        .await
        .unwrap();
    let (registry, _h) = demo_registry();
    let session = Session::new(
        listener.accept().await.unwrap(),
        registry,
        SessionConfig::default(),
    );
    let mut raw = Raw {
        transport: raw_end,
        codec: Codec::Json,
    };
    match raw.recv().await {
        Some(Frame::Hello(h)) => assert_eq!(h.limits.max_frame_bytes, Some(1024)),
        other => panic!("{other:?}"),
    }
    raw.send(Frame::Hello(Hello::new())).await;
    let pending = tokio::spawn({
        let session = session.clone();
        async move { session.ping().await }
    });
    raw.call(
        1,
        0,
        "bootstrap",
        serde_json::json!({ "name": "x".repeat(2000) }),
    )
    .await;
    // The session's ping may come first; then the goaway naming the limit
    // (the session's receiver leaves the close to the session), then close.
    let mut next = raw.recv().await;
    if let Some(Frame::Ping(_)) = next {
        next = raw.recv().await;
    }
    match next {
        Some(Frame::Goaway(g)) => {
            assert_eq!(g.status.code, Code::ResourceExhausted, "{}", g.status);
            assert_eq!(g.status.reason, Some(Reason::MAX_FRAME_BYTES));
        }
        other => panic!("expected goaway, got {other:?}"),
    }
    assert_eq!(raw.recv().await, None, "then close");
    assert_ended(&session, Code::ResourceExhausted).await;
    // What was pending fails `unavailable` (§7.1).
    let ping = pending.await.unwrap();
    assert!(
        matches!(&ping, Err(s) if s.code == Code::Unavailable),
        "{ping:?}"
    );
}

/// A WebSocket or HTTP client on a raw capwire/1 port: its `GET ` is not read
/// as a 1.2 GB frame; the session ends saying what arrived and what to use.
#[tokio::test]
async fn an_http_request_on_a_raw_port_is_named() {
    use capwire::transport::{Listener, TransportConfig};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut listener = Listener::bind(
        &"tcp://127.0.0.1:0".parse().unwrap(),
        TransportConfig::default(),
    )
    .await
    .unwrap();
    let capwire::transport::Address::Tcp(authority) = listener.local_addr().clone() else {
        panic!("a tcp address")
    };
    let mut client = tokio::net::TcpStream::connect(authority.as_str())
        .await
        .unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n")
        .await
        .unwrap();
    let t = listener.accept().await.unwrap();
    let session = Session::new(t, capwire::Registry::new(), SessionConfig::default());
    let status = within(
        std::time::Duration::from_secs(5),
        "the session's end",
        session.closed(),
    )
    .await;
    assert_eq!(status.reason, Some(Reason::PROTOCOL_VIOLATION), "{status}");
    assert!(
        status.message.contains("an HTTP request arrived"),
        "{status}"
    );
    assert!(status.message.contains("ws://"), "{status}");
    // The client is told too (a goaway it cannot read, then the close).
    let mut rest = Vec::new();
    let _ = within(
        std::time::Duration::from_secs(5),
        "the close",
        client.read_to_end(&mut rest),
    )
    .await;
}
