//! Calls, capabilities in both directions and the runtime capability, over
//! every transport and both codecs.

mod common;

use capwire::{Code, Reason, Value};
use common::*;

#[tokio::test]
async fn calls_capabilities_and_callbacks_over_every_transport() {
    for kind in ALL {
        for json in [false, true] {
            let (registry, _h) = demo_registry();
            let p = if json {
                pair_with(kind, registry, json_config(), json_config()).await
            } else {
                pair(kind, registry).await
            };
            let demo = p
                .client
                .bootstrap("demo", Some("1.0"))
                .await
                .expect("bootstrap");
            let r: i64 = demo
                .call("square", Value::new(&(7,)).unwrap())
                .await
                .unwrap()
                .decode()
                .unwrap();
            assert_eq!(r, 49, "{kind:?}");

            let counter = demo
                .call("makeCounter", Value::new(&(5,)).unwrap())
                .await
                .unwrap()
                .cap(0)
                .unwrap();
            assert!(!counter.is_local());
            let v: i64 = counter
                .call("increment", Value::new(&(2,)).unwrap())
                .await
                .unwrap()
                .decode()
                .unwrap();
            assert_eq!(v, 7);

            let text: String = demo
                .call("callMeBack", Value::capability(plus_one()))
                .await
                .unwrap()
                .decode()
                .unwrap();
            assert_eq!(text, "callback returned 11");

            let err = demo.call("fail", Value::null()).await.expect_err("fails");
            assert_eq!(err.code, Code::InvalidArgument);
            assert_eq!(err.message, "bad thing");

            // A capability passed back to its owner is the owner's own object.
            let mine = plus_one();
            let back = demo
                .call("echoCap", Value::capability(mine.clone()))
                .await
                .unwrap()
                .cap(0)
                .unwrap();
            assert!(back.same_as(&mine), "{kind:?}: came back as a proxy");
        }
    }
}

#[tokio::test]
async fn bootstrap_errors() {
    let (registry, _h) = demo_registry();
    let p = pair(Kind::Mem, registry).await;
    let err = p.client.bootstrap("nope", None).await.expect_err("unknown");
    assert_eq!(err.code, Code::NotFound);
    let err = p
        .client
        .bootstrap("demo", Some("2.0"))
        .await
        .expect_err("version");
    assert_eq!(err.code, Code::FailedPrecondition);
    assert_eq!(err.reason, Some(Reason::VERSION_MISMATCH));
    assert!(p.client.bootstrap("demo", None).await.is_ok());
}

#[tokio::test]
async fn runtime_capability_pings_lists_and_counts() {
    let (registry, _h) = demo_registry();
    let p = pair(Kind::Tcp, registry).await;
    let rt = p.client.runtime();
    let pong: String = rt
        .call("ping", Value::null())
        .await
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(pong, "pong");
    let names: serde_json::Value = rt
        .call("names", Value::null())
        .await
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(
        names,
        serde_json::json!([{"name": "demo", "version": "1.0"}])
    );
    let stats: serde_json::Value = rt
        .call("stats", Value::null())
        .await
        .unwrap()
        .decode()
        .unwrap();
    assert!(stats["frames_in"].as_u64().unwrap() >= 3, "{stats}");
    let rtt = p.client.ping().await.expect("ping");
    assert!(rtt.as_secs() < 5);
    assert!(p.client.stats().last_rtt_us.is_some());
}

#[tokio::test]
async fn dropping_the_last_handle_releases_the_export() {
    let (registry, _h) = demo_registry();
    let p = pair(Kind::Mem, registry).await;
    let demo = p.client.bootstrap("demo", None).await.unwrap();
    let counter = demo
        .call("makeCounter", Value::new(&(1,)).unwrap())
        .await
        .unwrap()
        .cap(0)
        .unwrap();
    assert_eq!(p.server.stats().exports, 2, "demo + counter");
    let clone = counter.clone();
    drop(counter);
    tokio::task::yield_now().await;
    assert_eq!(p.server.stats().exports, 2, "a clone still holds it");
    drop(clone);
    for _ in 0..1000 {
        if p.server.stats().exports == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(p.server.stats().exports, 1, "the counter was released");
    assert_eq!(p.client.stats().imports, 1);
}

/// protocol.md [S1]: the accepting side answers in the codec of the peer's
/// `hello` — a JSON peer gets JSON back, a MessagePack peer MessagePack,
/// whatever the server's configured codec.
#[tokio::test]
async fn the_server_answers_in_the_codec_of_the_peers_hello() {
    use capwire::dialect::{serve, ServeConfig};
    use capwire::proto::{codec, Codec, Frame, Hello, Outcome};
    use capwire::transport::memory_pair;
    for (peer, server) in [(Codec::Json, Codec::Msgpack), (Codec::Msgpack, Codec::Json)] {
        let (registry, _h) = demo_registry();
        let (a, mut b) = memory_pair(&Default::default());
        let mut config = ServeConfig::default();
        config.session.codec = server;
        let hello = codec::encode(&Frame::Hello(Hello::new()), peer).unwrap();
        b.sender.send(hello.into()).await.unwrap();
        let _served = serve(a, registry, config).await.expect("served");
        let (got, _) = next_frame(&mut b.receiver).await;
        assert_eq!(got, peer, "the server's hello is in the peer's codec");
        let call = call_frame(1, 0, "bootstrap", serde_json::json!({ "name": "demo" }));
        let call = codec::encode(&Frame::Call(call), peer).unwrap();
        b.sender.send(call.into()).await.unwrap();
        let (got, bytes) = next_frame(&mut b.receiver).await;
        assert_eq!(got, peer, "and so is its result");
        match codec::decode_bytes(&bytes).unwrap().0 {
            Frame::Result(r) => assert!(matches!(r.outcome, Outcome::Ok { .. }), "{r:?}"),
            other => panic!("expected a result, got {other:?}"),
        }
    }
}

/// The next frame a raw peer receives, with its codec.
async fn next_frame(
    receiver: &mut capwire::transport::FrameReceiver,
) -> (capwire::proto::Codec, bytes::Bytes) {
    let bytes = within(
        std::time::Duration::from_secs(5),
        "a frame",
        receiver.recv(),
    )
    .await
    .expect("open")
    .expect("a frame");
    (
        capwire::proto::Codec::detect(&bytes).expect("a codec"),
        bytes,
    )
}
