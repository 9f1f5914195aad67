//! Bearer tokens over every transport and dialect: the right token admits
//! the connection and its identity reaches the handler; a wrong or missing
//! one gets `unauthenticated` in the peer's dialect and nothing else.

use std::time::Duration;

use capwire::auth::Tokens;
use capwire::dialect::jsonrpc::{JsonRpcConfig, JsonRpcSession};
use capwire::dialect::{ServeConfig, Server};
use capwire::transport::{self, Address, Listener, TransportConfig};
use capwire::{Code, Methods, Registry, Session, SessionConfig, Value};
use serde_json::{json, Value as Json};

/// A server requiring a token, serving `who/ami` -> the caller's identity.
async fn server(addr: &str) -> (Address, Server) {
    let registry = Registry::new();
    registry
        .serve(
            "who",
            "1.0",
            Methods::new("who").method("ami", |_args: Value, ctx| async move {
                Value::new(&ctx.attestation().identity)
            }),
        )
        .unwrap()
        .forget();
    let listener = Listener::bind(&addr.parse().unwrap(), TransportConfig::default())
        .await
        .unwrap();
    let addr = listener.local_addr().clone();
    let mut config = ServeConfig::default();
    config.tokens = Some(Tokens::new().with("t-alice", "alice").with("t-bob", "bob"));
    config.capnweb_main = Some("who".into());
    (addr, Server::start(listener, registry, config))
}

async fn native(addr: &Address, token: Option<&str>) -> Session {
    let t = transport::connect(addr, &TransportConfig::default())
        .await
        .unwrap();
    let mut config = SessionConfig::default();
    config.token = token.map(str::to_owned);
    Session::new(t, Registry::new(), config)
}

#[tokio::test]
async fn native_sessions_present_the_token_in_hello() {
    for addr in ["tcp://127.0.0.1:0", "ws://127.0.0.1:0/"] {
        let (addr, _server) = server(addr).await;
        let session = native(&addr, Some("t-bob")).await;
        let who = session.bootstrap("who", None).await.unwrap();
        let got: Option<String> = who
            .call("ami", Value::null())
            .await
            .unwrap()
            .decode()
            .unwrap();
        assert_eq!(got.as_deref(), Some("bob"), "{addr}");
        for token in [Some("t-eve"), None, Some("")] {
            let session = native(&addr, token).await;
            let status = tokio::time::timeout(Duration::from_secs(5), session.closed())
                .await
                .expect("closed");
            assert_eq!(
                status.code,
                Code::Unauthenticated,
                "{addr} {token:?}: {status}"
            );
            let err = session.bootstrap("who", None).await.unwrap_err();
            assert!(
                matches!(err.code, Code::Unauthenticated | Code::Unavailable),
                "{err}"
            );
        }
    }
}

#[tokio::test]
async fn websocket_and_http_present_the_token_in_a_header_or_the_query() {
    let (addr, _server) = server("ws://127.0.0.1:0/").await;
    let Address::Ws { authority, .. } = &addr else {
        panic!()
    };
    // A header, on a WebSocket and on HTTP POSTs.
    for url in [format!("ws://{authority}/"), format!("http://{authority}/")] {
        let mut config = TransportConfig::default();
        config.bearer = Some("t-alice".into());
        let t = transport::connect(&url.parse().unwrap(), &config)
            .await
            .unwrap();
        let s = JsonRpcSession::connect(t, Registry::new(), JsonRpcConfig::new());
        let who = s.peer().request("who/ami", None, None).await.unwrap();
        assert_eq!(who, json!("alice"), "{url}");
        s.close().await;
    }
    // The query parameter, as browsers must.
    let url: Address = format!("ws://{authority}/?token=t-bob").parse().unwrap();
    let t = transport::connect(&url, &TransportConfig::default())
        .await
        .unwrap();
    let s = JsonRpcSession::connect(t, Registry::new(), JsonRpcConfig::new());
    assert_eq!(
        s.peer().request("who/ami", None, None).await.unwrap(),
        json!("bob")
    );
    // Wrong or missing: -32000 and the connection closes; nothing is served.
    for (url, bearer) in [
        (format!("ws://{authority}/"), None),
        (format!("ws://{authority}/"), Some("t-eve")),
        (format!("http://{authority}/"), None),
    ] {
        let mut config = TransportConfig::default();
        config.bearer = bearer.map(str::to_owned);
        let t = transport::connect(&url.parse().unwrap(), &config)
            .await
            .unwrap();
        let s = JsonRpcSession::connect(t, Registry::new(), JsonRpcConfig::new());
        let err = s.peer().request("who/ami", None, None).await.unwrap_err();
        assert!(
            matches!(err.code, Code::Unauthenticated | Code::Unavailable),
            "{url}: {err}"
        );
    }
}

#[tokio::test]
async fn a_refused_jsonrpc_peer_reads_unauthenticated() {
    let (addr, _server) = server("ws://127.0.0.1:0/").await;
    let mut t = transport::connect(&addr, &TransportConfig::default())
        .await
        .unwrap();
    t.sender
        .send(bytes::Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":1,"method":"who/ami"}"#,
        ))
        .await
        .unwrap();
    let frame = t.receiver.recv().await.unwrap().unwrap();
    let r: Json = serde_json::from_slice(&frame).unwrap();
    assert_eq!(r["error"]["code"], -32000, "{r}");
    assert_eq!(r["error"]["data"]["status"], "unauthenticated");
    assert!(t.receiver.recv().await.map_or(true, |f| f.is_none()));
    // A capnweb peer gets an abort.
    let mut t = transport::connect(&addr, &TransportConfig::default())
        .await
        .unwrap();
    t.sender
        .send(bytes::Bytes::from_static(br#"["pull",1]"#))
        .await
        .unwrap();
    let frame = t.receiver.recv().await.unwrap().unwrap();
    let r: Json = serde_json::from_slice(&frame).unwrap();
    assert_eq!(r[0], "abort", "{r}");
}
