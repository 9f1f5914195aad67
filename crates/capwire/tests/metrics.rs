//! Metrics through the `metrics` facade, scraped the way Prometheus does:
//! a `GET /metrics` on the server's HTTP port after native, JSON-RPC and
//! capnweb calls, errors and a stream over real sockets. (One test: the recorder is
//! process-wide.)

use std::time::Duration;

use capwire::dialect::capnweb::CapnwebSession;
use capwire::dialect::jsonrpc::{JsonRpcConfig, JsonRpcSession};
use capwire::dialect::{ServeConfig, Server};
use capwire::transport::{self, Address, GetRoute, Listener, TransportConfig};
use capwire::{Code, Methods, Registry, Session, SessionConfig, Status, Value};
use futures_util::StreamExt;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn scrape(authority: &str, path: &str) -> String {
    let mut tcp = tokio::net::TcpStream::connect(authority).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut text = String::new();
    tcp.read_to_string(&mut text).await.unwrap();
    text
}

/// The value of the sample whose line starts with `series`.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
}

#[tokio::test]
async fn calls_errors_streams_bytes_and_sessions_reach_the_endpoint() {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .unwrap();
    capwire::metrics::enable();

    let registry = Registry::new();
    registry
        .serve(
            "m",
            "1.0",
            Methods::new("m")
                .method("ok", |_args: Value, _ctx| async { Value::new(&1) })
                .method("bad", |_args: Value, _ctx| async {
                    Err::<Value, _>(Status::new(Code::NotFound, "no"))
                })
                .stream("count", |_args: Value, _ctx| async {
                    let items = futures_util::stream::iter((0..3).map(|i| Value::new(&i)));
                    Ok(items.boxed())
                }),
        )
        .unwrap()
        .forget();
    let mut config = TransportConfig::default();
    config
        .get_routes
        .push(GetRoute::metrics("/metrics", move || handle.render()));
    let listener = Listener::bind(&"ws://127.0.0.1:0/".parse().unwrap(), config)
        .await
        .unwrap();
    let addr = listener.local_addr().clone();
    let Address::Ws { authority, .. } = &addr else {
        unreachable!()
    };
    let server = Server::start(listener, registry, ServeConfig::default());

    let t = transport::connect(&addr, &TransportConfig::default())
        .await
        .unwrap();
    let session = Session::new(t, Registry::new(), SessionConfig::default());
    let m = session.bootstrap("m", None).await.unwrap();
    m.call("ok", Value::null()).await.unwrap();
    m.call("ok", Value::null()).await.unwrap();
    assert_eq!(
        m.call("bad", Value::null()).await.unwrap_err().code,
        Code::NotFound
    );
    let items: Vec<_> = m.call_stream("count", Value::null()).collect().await;
    assert_eq!(items.len(), 3);

    let t = transport::connect(&addr, &TransportConfig::default())
        .await
        .unwrap();
    let rpc = JsonRpcSession::connect(t, Registry::new(), JsonRpcConfig::default());
    rpc.peer().request("m/ok", None, None).await.unwrap();

    let t = transport::connect(&addr, &TransportConfig::default())
        .await
        .unwrap();
    let web = CapnwebSession::new(
        t,
        capwire::Capability::error(Status::new(Code::NotFound, "")),
    );
    web.peer_main()
        .call("ok", Value::new(&json!([])).unwrap())
        .await
        .unwrap();

    // While the connections are open.
    let text = scrape(authority, "/metrics").await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("text/plain; version=0.0.4"), "{text}");
    // Two calls of `ok`, and the bootstrap (a call on the runtime capability).
    let calls = r#"capwire_calls_total{dialect="capwire",direction="incoming",code="#;
    assert_eq!(sample(&text, &format!("{calls}\"ok\"}}")), 3.0);
    assert_eq!(sample(&text, &format!("{calls}\"not_found\"}}")), 1.0);
    let outgoing = r#"capwire_calls_total{dialect="capwire",direction="outgoing",code="ok"}"#;
    assert_eq!(sample(&text, outgoing), 3.0, "the client side counts too");
    let rpc_calls = r#"capwire_calls_total{dialect="jsonrpc",direction="incoming",code="ok"}"#;
    assert_eq!(sample(&text, rpc_calls), 1.0);
    let web_calls = r#"capwire_calls_total{dialect="capnweb",direction="incoming",code="ok"}"#;
    assert_eq!(sample(&text, web_calls), 1.0);
    let streams = r#"capwire_streams_total{dialect="capwire",direction="incoming",code="ok"}"#;
    assert_eq!(sample(&text, streams), 1.0);
    assert_eq!(
        sample(&text, r#"capwire_stream_items_total{direction="sent"}"#),
        3.0
    );
    assert!(sample(&text, r#"capwire_bytes_total{direction="received"}"#) > 0.0);
    let open = r#"capwire_sessions_open{dialect="capwire"}"#;
    assert_eq!(sample(&text, open), 1.0);
    assert_eq!(
        sample(&text, r#"capwire_sessions_open{dialect="jsonrpc"}"#),
        1.0
    );
    let durations =
        r#"capwire_call_duration_seconds_count{dialect="capwire",direction="incoming"}"#;
    assert_eq!(sample(&text, durations), 4.0);
    let total = r#"capwire_call_duration_seconds_sum{dialect="capwire",direction="incoming"}"#;
    assert!(sample(&text, total) > 0.0, "durations are measured");
    assert!(!text.contains("method="), "method names are not labels");

    // Closed sessions leave the gauge.
    session.close().await;
    rpc.close().await;
    web.close().await;
    let mut left = f64::NAN;
    for _ in 0..100 {
        left = sample(&scrape(authority, "/metrics").await, open);
        if left == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(left, 0.0);

    // Other paths are not found.
    let text = scrape(authority, "/other").await;
    assert!(text.starts_with("HTTP/1.1 404"), "{text}");
    server.shutdown().await;
}
