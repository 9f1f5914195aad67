//! The JSON-RPC dialect over real sockets: typed catalogs both ways, params
//! by position and by name, schema errors, batches, notifications in order,
//! cancellation, the end failing what is pending, HTTP POST, limits, error
//! classes, and exact numbers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use capwire::dialect::jsonrpc::{
    ErrorClass, ErrorClasses, JsonRpcConfig, JsonRpcPeer, JsonRpcSession, Separator,
};
use capwire::dialect::{ServeConfig, Server};
use capwire::transport::{self, Address, Listener, Transport, TransportConfig};
use capwire::typed::ItemsOf;
use capwire::{Code, Limits, Registry, Status};
use futures_util::StreamExt;
use serde_json::{json, Value as Json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, Debug, Clone, PartialEq)]
struct Point {
    x: i64,
    y: i64,
}

#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
struct OutOfStock {
    sku: String,
}

impl ErrorClass for OutOfStock {
    const CODE: i64 = 1001;
    const NAME: &'static str = "OutOfStock";
    fn message(&self) -> String {
        format!("{} is out of stock", self.sku)
    }
}

#[capwire::interface(name = "calc", version = "1.0")]
trait Calc {
    async fn add(&self, a: i64, b: i64) -> Result<i64, Status>;
    async fn scale(&self, p: Point, by: Option<i64>) -> Result<Point, Status>;
    async fn echo(&self, value: Json) -> Result<Json, Status>;
    async fn sleep(&self, ms: u64) -> Result<String, Status>;
    async fn buy(&self, sku: String) -> Result<(), Status>;
    #[capwire(stream, item = "tick")]
    async fn ticks(&self, n: u64) -> Result<ItemsOf<u64>, Status>;
    #[capwire(notification)]
    async fn note(&self, tag: String) -> Result<(), Status>;
    async fn notes(&self) -> Result<Vec<String>, Status>;
    async fn ask_back(&self, x: i64) -> Result<i64, Status>;
}

#[capwire::interface(name = "client", version = "1.0")]
trait ClientRole {
    async fn double(&self, x: i64) -> Result<i64, Status>;
    #[capwire(notification)]
    async fn progress(&self, pct: u64) -> Result<(), Status>;
}

struct CalcImpl {
    notes: Mutex<Vec<String>>,
    peer: ClientRoleClient,
    stopped: Arc<Mutex<u32>>,
}

struct Stop(Arc<Mutex<u32>>, bool);
impl Drop for Stop {
    fn drop(&mut self) {
        if !self.1 {
            *self.0.lock().unwrap() += 1;
        }
    }
}

impl Calc for CalcImpl {
    async fn add(&self, a: i64, b: i64) -> Result<i64, Status> {
        Ok(a + b)
    }
    async fn scale(&self, p: Point, by: Option<i64>) -> Result<Point, Status> {
        let by = by.unwrap_or(2);
        Ok(Point {
            x: p.x * by,
            y: p.y * by,
        })
    }
    async fn echo(&self, value: Json) -> Result<Json, Status> {
        Ok(value)
    }
    async fn sleep(&self, ms: u64) -> Result<String, Status> {
        let mut guard = Stop(self.stopped.clone(), false);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        guard.1 = true;
        Ok("slept".into())
    }
    async fn buy(&self, sku: String) -> Result<(), Status> {
        Err(OutOfStock { sku }.into_status())
    }
    async fn ticks(&self, n: u64) -> Result<ItemsOf<u64>, Status> {
        Ok(futures_util::stream::iter((0..n).map(Ok)).boxed())
    }
    async fn note(&self, tag: String) -> Result<(), Status> {
        // Slow enough that a request racing it would see it missing.
        tokio::time::sleep(Duration::from_millis(5)).await;
        self.notes.lock().unwrap().push(tag);
        Ok(())
    }
    async fn notes(&self) -> Result<Vec<String>, Status> {
        Ok(self.notes.lock().unwrap().clone())
    }
    async fn ask_back(&self, x: i64) -> Result<i64, Status> {
        self.peer.progress(50)?;
        Ok(self.peer.double(x).await? + 1)
    }
}

struct ClientImpl {
    progress: Arc<Mutex<Vec<u64>>>,
}

impl ClientRole for ClientImpl {
    async fn double(&self, x: i64) -> Result<i64, Status> {
        Ok(2 * x)
    }
    async fn progress(&self, pct: u64) -> Result<(), Status> {
        self.progress.lock().unwrap().push(pct);
        Ok(())
    }
}

fn config(stopped: Arc<Mutex<u32>>) -> JsonRpcConfig {
    JsonRpcConfig::new()
        .errors(ErrorClasses::new().register::<OutOfStock>())
        .per_connection(move |peer: &JsonRpcPeer| {
            let registry = Registry::new();
            registry
                .serve_interface(CalcServer::new(CalcImpl {
                    notes: Mutex::new(Vec::new()),
                    peer: peer.client("client"),
                    stopped: stopped.clone(),
                }))
                .unwrap()
                .forget();
            registry
        })
}

struct Fixture {
    addr: Address,
    stopped: Arc<Mutex<u32>>,
    _server: Server,
}

async fn server_with(
    addr: &str,
    jsonrpc: impl FnOnce(Arc<Mutex<u32>>) -> JsonRpcConfig,
) -> Fixture {
    let listener = Listener::bind(&addr.parse().unwrap(), TransportConfig::default())
        .await
        .unwrap();
    let addr = listener.local_addr().clone();
    let stopped = Arc::new(Mutex::new(0));
    let mut serve = ServeConfig::default();
    serve.jsonrpc = jsonrpc(stopped.clone());
    let server = Server::start(listener, Registry::new(), serve);
    Fixture {
        addr,
        stopped,
        _server: server,
    }
}

async fn server(addr: &str) -> Fixture {
    server_with(addr, config).await
}

async fn client(addr: &Address) -> (JsonRpcSession, Arc<Mutex<Vec<u64>>>) {
    let progress = Arc::new(Mutex::new(Vec::new()));
    let registry = Registry::new();
    registry
        .serve_interface(ClientRoleServer::new(ClientImpl {
            progress: progress.clone(),
        }))
        .unwrap()
        .forget();
    let t = transport::connect(addr, &TransportConfig::default())
        .await
        .unwrap();
    let config = JsonRpcConfig::new().errors(ErrorClasses::new().register::<OutOfStock>());
    (JsonRpcSession::connect(t, registry, config), progress)
}

/// A raw WebSocket (or TCP) peer: text frames in, JSON out.
struct Raw(Transport);

impl Raw {
    async fn connect(addr: &Address) -> Raw {
        Raw(transport::connect(addr, &TransportConfig::default())
            .await
            .unwrap())
    }
    async fn send_text(&self, text: &str) {
        self.0
            .sender
            .send(bytes::Bytes::copy_from_slice(text.as_bytes()))
            .await
            .unwrap();
    }
    async fn send(&self, json: Json) {
        self.send_text(&json.to_string()).await;
    }
    async fn recv(&mut self) -> Json {
        let frame = tokio::time::timeout(Duration::from_secs(10), self.0.receiver.recv())
            .await
            .expect("an answer in time")
            .unwrap()
            .expect("a frame");
        serde_json::from_slice(&frame).unwrap()
    }
    async fn call(&mut self, request: Json) -> Json {
        self.send(request).await;
        self.recv().await
    }
}

fn req(id: i64, method: &str, params: Json) -> Json {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

#[tokio::test]
async fn typed_calls_both_ways_over_websocket_and_tcp() {
    for addr in ["ws://127.0.0.1:0/", "tcp://127.0.0.1:0"] {
        let f = server(addr).await;
        let (session, progress) = client(&f.addr).await;
        let calc: CalcClient = session.peer().client("calc");
        assert_eq!(calc.add(2, 3).await.unwrap(), 5, "{addr}");
        assert_eq!(
            calc.scale(Point { x: 1, y: 2 }, None).await.unwrap(),
            Point { x: 2, y: 4 }
        );
        assert_eq!(
            calc.scale(Point { x: 1, y: 2 }, Some(3)).await.unwrap(),
            Point { x: 3, y: 6 }
        );
        // The server calls the client back (a request and a notification).
        assert_eq!(calc.ask_back(20).await.unwrap(), 41);
        assert_eq!(*progress.lock().unwrap(), vec![50]);
        // Notifications take effect in order, before the request behind them.
        for tag in ["a", "b", "c"] {
            calc.note(tag.into()).unwrap();
        }
        assert_eq!(calc.notes().await.unwrap(), vec!["a", "b", "c"]);
        // An error class comes back typed.
        let err = calc.buy("A1".into()).await.unwrap_err();
        assert_eq!(
            OutOfStock::from_status(&err),
            Some(OutOfStock { sku: "A1".into() })
        );
        session.close().await;
    }
}

#[tokio::test]
async fn params_by_position_and_name_and_schema_errors_name_the_field() {
    let f = server("ws://127.0.0.1:0/").await;
    let mut raw = Raw::connect(&f.addr).await;
    let r = raw.call(req(1, "calc/add", json!([2, 3]))).await;
    assert_eq!(r, json!({"jsonrpc": "2.0", "id": 1, "result": 5}));
    let r = raw.call(req(2, "calc/add", json!({"b": 3, "a": 2}))).await;
    assert_eq!(r["result"], 5);
    let r = raw
        .call(req(3, "calc/scale", json!({"p": {"x": 1, "y": "no"}})))
        .await;
    assert_eq!(r["error"]["code"], -32602);
    assert_eq!(r["error"]["data"]["field"], "p");
    assert_eq!(r["error"]["data"]["path"], "/p/y");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("`p`"),
        "{r}"
    );
    for (params, field) in [
        (json!({"a": 1}), "`b`"),
        (json!({"a": 1, "b": 2.5}), "`b`"),
        (json!({"a": 1, "b": 2, "c": 3}), "`c`"),
        (json!([1, 2, 3]), "2 parameters"),
    ] {
        let r = raw.call(req(4, "calc/add", params.clone())).await;
        assert_eq!(r["error"]["code"], -32602, "{params}");
        assert!(
            r["error"]["message"].as_str().unwrap().contains(field),
            "{params}: {r}"
        );
        assert_eq!(r["id"], 4);
    }
    let r = raw.call(req(5, "calc/nosuch", json!([]))).await;
    assert_eq!(r["error"]["code"], -32601);
    let r = raw.call(req(6, "other/add", json!([]))).await;
    assert_eq!(r["error"]["code"], -32601);
    let r = raw.call(req(7, "noseparator", json!([]))).await;
    assert_eq!(r["error"]["code"], -32601);
}

#[tokio::test]
async fn bad_input_gets_the_right_error_and_the_connection_stays_usable() {
    let f = server("ws://127.0.0.1:0/").await;
    let mut raw = Raw::connect(&f.addr).await;
    // Not JSON at all, as the first message: a parse error, still open.
    raw.send_text("this is not json").await;
    let r = raw.recv().await;
    assert_eq!(r["error"]["code"], -32700);
    assert_eq!(r["id"], Json::Null);
    for (text, code, id) in [
        ("{\"jsonrpc\":\"2.0\",\"method\":", -32700, Json::Null),
        ("[]", -32600, Json::Null),
        ("{\"jsonrpc\":\"2.0\",\"id\":9}", -32600, json!(9)),
        (
            "{\"jsonrpc\":\"1.0\",\"id\":9,\"method\":\"calc/add\"}",
            -32600,
            json!(9),
        ),
        (
            "{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":1}",
            -32600,
            json!(9),
        ),
        (
            "{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"calc/add\",\"params\":3}",
            -32600,
            json!(9),
        ),
        (
            "{\"jsonrpc\":\"2.0\",\"id\":[1],\"method\":\"calc/add\"}",
            -32600,
            Json::Null,
        ),
        ("42", -32600, Json::Null),
        (
            "{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"rpc.discover\"}",
            -32601,
            json!(9),
        ),
    ] {
        raw.send_text(text).await;
        let r = raw.recv().await;
        assert_eq!(r["error"]["code"], code, "{text}: {r}");
        assert_eq!(r["id"], id, "{text}");
    }
    let r = raw.call(req(10, "calc/add", json!([1, 1]))).await;
    assert_eq!(r["result"], 2);
    // A whole float is an integer (JSON Schema's rule), and arguments that
    // pass the schema but do not decode (past i64) are still -32602.
    let r = raw
        .call(req(11, "calc/add", json!({"a": 1.0, "b": 2})))
        .await;
    assert_eq!(r["result"], 3, "{r}");
    let r = raw
        .call(req(
            12,
            "calc/add",
            json!([1, 9_223_372_036_854_775_808u64]),
        ))
        .await;
    assert_eq!(r["error"]["code"], -32602, "{r}");
}

#[tokio::test]
async fn an_invalid_batch_as_the_first_message_is_answered_entry_by_entry() {
    let f = server("ws://127.0.0.1:0/").await;
    let mut raw = Raw::connect(&f.addr).await;
    raw.send_text("[1,2,3]").await;
    let r = raw.recv().await;
    let entries = r.as_array().expect("an array of errors");
    assert_eq!(entries.len(), 3, "{r}");
    assert!(entries
        .iter()
        .all(|e| e["error"]["code"] == -32600 && e["id"].is_null()));
    assert_eq!(
        raw.call(req(1, "calc/add", json!([1, 2]))).await["result"],
        3
    );
}

#[tokio::test]
async fn batches_follow_the_specification() {
    let f = server("ws://127.0.0.1:0/").await;
    let mut raw = Raw::connect(&f.addr).await;
    // Mixed: valid, invalid, a notification: responses only for entries with ids.
    raw.send(json!([
        req(1, "calc/add", json!([1, 2])),
        {"jsonrpc": "2.0", "method": "calc/note", "params": {"tag": "n"}},
        1,
        req(2, "calc/nosuch", json!([])),
    ]))
    .await;
    let r = raw.recv().await;
    let entries = r.as_array().expect("a batch response");
    assert_eq!(entries.len(), 3, "{r}");
    assert_eq!(entries[0], json!({"jsonrpc": "2.0", "id": 1, "result": 3}));
    assert_eq!(entries[1]["error"]["code"], -32600);
    assert_eq!(entries[2]["error"]["code"], -32601);
    // All notifications: nothing comes back; the next answer is the next request's.
    raw.send(json!([
        {"jsonrpc": "2.0", "method": "calc/note", "params": {"tag": "x"}},
        {"jsonrpc": "2.0", "method": "calc/note", "params": ["y"]},
    ]))
    .await;
    let r = raw.call(req(3, "calc/notes", json!([]))).await;
    assert_eq!(r["id"], 3);
    let mut notes: Vec<String> = serde_json::from_value(r["result"].clone()).unwrap();
    notes.sort();
    assert_eq!(notes, vec!["n", "x", "y"]);
    // A batch of one invalid entry: an array of one error.
    raw.send(json!([1])).await;
    let r = raw.recv().await;
    assert_eq!(r.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn streams_are_notifications_then_the_count() {
    let f = server("ws://127.0.0.1:0/").await;
    let mut raw = Raw::connect(&f.addr).await;
    raw.send(req(7, "calc/ticks", json!({"n": 3}))).await;
    for i in 0..3 {
        let n = raw.recv().await;
        assert_eq!(n["method"], "calc/tick");
        assert_eq!(n["params"], i);
        assert_eq!(n["subscription"], 7);
        assert!(n.get("id").is_none());
    }
    assert_eq!(
        raw.recv().await,
        json!({"jsonrpc": "2.0", "id": 7, "result": 3})
    );
}

#[tokio::test]
async fn cancel_request_stops_the_handler_and_answers_cancelled() {
    let f = server("ws://127.0.0.1:0/").await;
    let mut raw = Raw::connect(&f.addr).await;
    raw.send(json!({"jsonrpc": "2.0", "id": "s", "method": "calc/sleep", "params": [60000]}))
        .await;
    // The same id while it runs is refused.
    let r = raw
        .call(json!({"jsonrpc": "2.0", "id": "s", "method": "calc/add", "params": [1, 2]}))
        .await;
    assert_eq!(r["error"]["code"], -32600, "{r}");
    raw.send(json!({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": "s"}}))
        .await;
    let r = raw.recv().await;
    assert_eq!(r["id"], "s");
    assert_eq!(r["error"]["code"], -32800);
    assert_eq!(*f.stopped.lock().unwrap(), 1);
    // Cancelling what is not running is a no-op.
    raw.send(json!({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": 99}}))
        .await;
    assert_eq!(
        raw.call(req(1, "calc/add", json!([1, 2]))).await["result"],
        3
    );
}

#[tokio::test]
async fn client_timeouts_cancel_at_the_server_and_close_fails_pending() {
    let f = server("ws://127.0.0.1:0/").await;
    let (session, _) = client(&f.addr).await;
    let peer = session.peer();
    let err = peer
        .request(
            "calc/sleep",
            Some(json!([60000])),
            Some(Duration::from_millis(50)),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::DeadlineExceeded);
    for _ in 0..200 {
        if *f.stopped.lock().unwrap() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        *f.stopped.lock().unwrap(),
        1,
        "the server's handler stopped"
    );
    // Pending requests fail with `unavailable` when the connection ends.
    let pending = tokio::spawn({
        let peer = peer.clone();
        async move { peer.request("calc/sleep", Some(json!([60000])), None).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    session.close().await;
    let err = pending.await.unwrap().unwrap_err();
    assert_eq!(err.code, Code::Unavailable);
    let err = peer
        .request("calc/add", Some(json!([1, 2])), None)
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::Unavailable);
}

#[tokio::test]
async fn the_peer_vanishing_mid_call_cancels_its_requests() {
    let f = server("ws://127.0.0.1:0/").await;
    let raw = Raw::connect(&f.addr).await;
    raw.send(req(1, "calc/sleep", json!([60000]))).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(raw);
    for _ in 0..200 {
        if *f.stopped.lock().unwrap() == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the handler was not stopped when its caller vanished");
}

#[tokio::test]
async fn in_flight_requests_are_bounded() {
    let f = server_with("ws://127.0.0.1:0/", |stopped| {
        let mut limits = Limits::default();
        limits.max_in_flight_in = 2;
        config(stopped).limits(limits)
    })
    .await;
    let mut raw = Raw::connect(&f.addr).await;
    raw.send(req(1, "calc/sleep", json!([60000]))).await;
    raw.send(req(2, "calc/sleep", json!([60000]))).await;
    let r = raw.call(req(3, "calc/add", json!([1, 2]))).await;
    assert_eq!(r["id"], 3);
    assert_eq!(r["error"]["code"], -32005, "{r}");
    assert_eq!(r["error"]["data"]["status"], "resource_exhausted");
}

#[tokio::test]
async fn numbers_keep_their_kind_and_bits() {
    let f = server("ws://127.0.0.1:0/").await;
    let mut raw = Raw::connect(&f.addr).await;
    let sent = "[1,1.0,-0.0,0.1,1e300,9007199254740993,18446744073709551615,-9223372036854775808,5e-324,2.5,-1]";
    let text = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"calc/echo","params":[{sent}]}}"#);
    raw.send_text(&text).await;
    let got = raw.recv().await;
    let want: Json = serde_json::from_str(sent).unwrap();
    let (got, want) = (got["result"].as_array().unwrap(), want.as_array().unwrap());
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        // Integers stay integers of the same value, floats stay floats with
        // the same bits.
        assert_eq!(
            (g.is_i64(), g.is_u64(), g.is_f64()),
            (w.is_i64(), w.is_u64(), w.is_f64()),
            "{g} vs {w}"
        );
        match (g.as_f64(), w.as_f64()) {
            (Some(a), Some(b)) if w.is_f64() => assert_eq!(a.to_bits(), b.to_bits(), "{g} vs {w}"),
            _ => assert_eq!(g, w),
        }
    }
}

#[tokio::test]
async fn dot_separator_names_methods_name_dot_method() {
    let f = server_with("ws://127.0.0.1:0/", |s| config(s).separator(Separator::Dot)).await;
    let mut raw = Raw::connect(&f.addr).await;
    assert_eq!(
        raw.call(req(1, "calc.add", json!([1, 2]))).await["result"],
        3
    );
    assert_eq!(
        raw.call(req(2, "calc/add", json!([1, 2]))).await["error"]["code"],
        -32601
    );
}

async fn post(addr: &Address, content_type: Option<&str>, body: &str) -> (u16, String, String) {
    let Address::Ws { authority, .. } = addr else {
        panic!("a ws address")
    };
    let mut tcp = tokio::net::TcpStream::connect(authority.as_str())
        .await
        .unwrap();
    let ct = content_type
        .map(|c| format!("Content-Type: {c}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{ct}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let status = head[9..12].parse().unwrap();
    let ctype = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_default();
    (status, ctype, body.to_owned())
}

#[tokio::test]
async fn http_post_serves_requests_batches_and_notifications() {
    let f = server("ws://127.0.0.1:0/").await;
    let (status, ctype, body) = post(
        &f.addr,
        Some("application/json"),
        r#"{"jsonrpc":"2.0","id":1,"method":"calc/add","params":{"a":2,"b":3}}"#,
    )
    .await;
    assert_eq!((status, ctype.as_str()), (200, "application/json"));
    assert_eq!(serde_json::from_str::<Json>(&body).unwrap()["result"], 5);
    let (_, _, body) = post(
        &f.addr,
        Some("application/json; charset=utf-8"),
        r#"[{"jsonrpc":"2.0","id":1,"method":"calc/add","params":[1,1]},{"jsonrpc":"2.0","method":"calc/note","params":["x"]},{"jsonrpc":"2.0","id":2,"method":"calc/add","params":[2,2]}]"#,
    )
    .await;
    let r: Json = serde_json::from_str(&body).unwrap();
    assert_eq!(r[0]["result"], 2);
    assert_eq!(r[1]["result"], 4);
    let (status, _, body) = post(
        &f.addr,
        Some("application/json"),
        r#"{"jsonrpc":"2.0","method":"calc/note","params":["x"]}"#,
    )
    .await;
    assert_eq!((status, body.as_str()), (204, ""));
    for bad in ["", "{nope"] {
        let (status, _, body) = post(&f.addr, Some("application/json"), bad).await;
        assert_eq!(status, 200);
        let r: Json = serde_json::from_str(&body).unwrap();
        assert_eq!(r["error"]["code"], -32700, "{bad:?}");
    }
    // Over HTTP the server cannot call back, nor stream.
    let (_, _, body) = post(
        &f.addr,
        Some("application/json"),
        r#"{"jsonrpc":"2.0","id":1,"method":"calc/askBack","params":[1]}"#,
    )
    .await;
    let r: Json = serde_json::from_str(&body).unwrap();
    assert_eq!(r["error"]["code"], -32004, "{r}");
    let (_, _, body) = post(
        &f.addr,
        Some("application/json"),
        r#"{"jsonrpc":"2.0","id":1,"method":"calc/ticks","params":[2]}"#,
    )
    .await;
    let r: Json = serde_json::from_str(&body).unwrap();
    assert_eq!(r["error"]["code"], -32004, "{r}");
}

#[tokio::test]
async fn one_port_serves_native_capnweb_and_jsonrpc() {
    let f = server("ws://127.0.0.1:0/").await;
    let mut raw = Raw::connect(&f.addr).await;
    assert_eq!(
        raw.call(req(1, "calc/add", json!([1, 2]))).await["result"],
        3
    );
    // A native client on the same port gets its own dialect.
    let t = transport::connect(&f.addr, &TransportConfig::default())
        .await
        .unwrap();
    let native = capwire::Session::new(t, Registry::new(), capwire::SessionConfig::default());
    assert!(native.ping().await.is_ok());
}

#[tokio::test]
async fn our_requests_in_flight_are_bounded() {
    let f = server("ws://127.0.0.1:0/").await;
    let t = transport::connect(&f.addr, &TransportConfig::default())
        .await
        .unwrap();
    let mut limits = Limits::default();
    limits.max_in_flight_out = 1;
    let session = JsonRpcSession::connect(t, Registry::new(), JsonRpcConfig::new().limits(limits));
    let peer = session.peer();
    let slow = tokio::spawn({
        let peer = peer.clone();
        async move { peer.request("calc/sleep", Some(json!([200])), None).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let err = peer
        .request("calc/add", Some(json!([1, 2])), None)
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::ResourceExhausted, "{err}");
    assert_eq!(slow.await.unwrap().unwrap(), json!("slept"));
    // Room again once it is answered.
    assert_eq!(
        peer.request("calc/add", Some(json!([1, 2])), None)
            .await
            .unwrap(),
        json!(3)
    );
}

#[tokio::test]
async fn null_ids_may_be_in_flight_together() {
    let f = server("ws://127.0.0.1:0/").await;
    let mut raw = Raw::connect(&f.addr).await;
    let null =
        |ms: u64| json!({"jsonrpc": "2.0", "id": null, "method": "calc/sleep", "params": [ms]});
    raw.send(null(100)).await;
    raw.send(null(10)).await;
    for _ in 0..2 {
        let r = raw.recv().await;
        assert_eq!(r["result"], "slept", "{r}");
        assert!(r["id"].is_null());
    }
}

#[tokio::test]
async fn an_http_body_over_the_frame_limit_is_refused_unread() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let f = server("ws://127.0.0.1:0/").await;
    let Address::Ws { authority, .. } = &f.addr else {
        panic!("a ws address")
    };
    let mut tcp = tokio::net::TcpStream::connect(authority.as_str())
        .await
        .unwrap();
    // Announced past the 16 MiB limit; no body follows.
    tcp.write_all(
        b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 99999999\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_string(&mut out))
        .await
        .expect("an answer without the body")
        .unwrap();
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
}
