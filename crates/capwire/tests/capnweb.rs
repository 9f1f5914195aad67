//! The capnweb dialect from a raw WebSocket peer: exact frames, table
//! bookkeeping, protocol violations (abort, then close 3000), and one port
//! serving both capnweb and native clients.

mod common;

use std::time::Duration;

use capwire::dialect::{self, capnweb::CapnwebSession, ServeConfig, Served};
use capwire::transport::{self, Address, Listener, Transport, TransportConfig, TransportError};
use capwire::{Registry, Session, SessionConfig, Value};
use common::*;
use serde_json::{json, Value as Json};
use tokio::sync::mpsc;

/// A WebSocket listener serving the demo in every dialect; the capnweb
/// sessions it starts are reported on the channel.
async fn server() -> (
    Address,
    mpsc::UnboundedReceiver<CapnwebSession>,
    capwire::ServeHandle,
) {
    let (registry, handle) = demo_registry();
    let mut listener = Listener::bind(
        &"ws://127.0.0.1:0/".parse().unwrap(),
        TransportConfig::default(),
    )
    .await
    .unwrap();
    let addr = listener.local_addr().clone();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(t) = listener.accept().await {
            let mut config = ServeConfig::default();
            config.capnweb_main = Some("demo".into());
            let (registry, tx) = (registry.clone(), tx.clone());
            tokio::spawn(async move {
                if let Ok(Served::Capnweb(s)) = dialect::serve(t, registry, config).await {
                    let _ = tx.send(s);
                }
            });
        }
    });
    (addr, rx, handle)
}

struct Peer(Transport);

impl Peer {
    async fn connect(addr: &Address) -> Peer {
        Peer(
            transport::connect(addr, &TransportConfig::default())
                .await
                .unwrap(),
        )
    }

    async fn send(&self, message: Json) {
        self.0
            .sender
            .send(message.to_string().into())
            .await
            .unwrap();
    }

    /// The next message, or the close code once the server closed.
    async fn recv(&mut self) -> Result<Json, Option<u16>> {
        match within(
            Duration::from_secs(5),
            "a capnweb message",
            self.0.receiver.recv(),
        )
        .await
        {
            Ok(Some(bytes)) => Ok(serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&bytes))
            })),
            Ok(None) => Err(None),
            Err(TransportError::ClosedByPeer(reason)) => Err(Some(reason.code)),
            Err(e) => panic!("{e}"),
        }
    }
}

#[tokio::test]
async fn a_call_its_result_and_its_release() {
    let (addr, mut sessions, _h) = server().await;
    let mut peer = Peer::connect(&addr).await;
    peer.send(json!(["push", ["pipeline", 0, ["square"], [7]]]))
        .await;
    peer.send(json!(["pull", 1])).await;
    assert_eq!(peer.recv().await.unwrap(), json!(["resolve", 1, 49]));
    let session = sessions.recv().await.unwrap();
    assert_eq!(session.stats().exports, 2, "main and the push result");
    peer.send(json!(["release", 1, 1])).await;
    eventually("the result is released", || session.stats().exports == 1).await;

    // Arrays are escaped both ways; a user map that looks like a placeholder survives.
    peer.send(json!(["push", ["pipeline", 0, ["echo"], [[[1, [[2]], {"$cap": "x"}]]]]]))
        .await;
    peer.send(json!(["pull", 2])).await;
    assert_eq!(
        peer.recv().await.unwrap(),
        json!(["resolve", 2, [[[[1, [[2]], {"$cap": "x"}]]]]])
    );
}

#[tokio::test]
async fn returned_capabilities_pipelining_and_release() {
    let (addr, mut sessions, _h) = server().await;
    let mut peer = Peer::connect(&addr).await;
    peer.send(json!(["push", ["pipeline", 0, ["makeCounter"], [10]]]))
        .await; // 1
    peer.send(json!(["push", ["pipeline", 1, ["increment"], [5]]]))
        .await; // 2, on the unresolved 1
    peer.send(json!([
        "push",
        ["pipeline", 0, ["incrementCounter"], [["pipeline", 1], 100]]
    ]))
    .await; // 3
    peer.send(json!(["pull", 2])).await;
    assert_eq!(peer.recv().await.unwrap(), json!(["resolve", 2, 15]));
    peer.send(json!(["pull", 3])).await;
    assert_eq!(peer.recv().await.unwrap(), json!(["resolve", 3, 115]));
    peer.send(json!(["pull", 1])).await;
    let resolved = peer.recv().await.unwrap();
    let id = resolved[2][1].as_i64().expect("an export id");
    assert_eq!(resolved, json!(["resolve", 1, ["export", id]]));
    assert!(id < 0, "exporter-chosen ids are negative");
    // Calls on the exported stub, by its id.
    peer.send(json!(["push", ["pipeline", id, ["increment"], [1]]]))
        .await; // 4
    peer.send(json!(["pull", 4])).await;
    assert_eq!(peer.recv().await.unwrap(), json!(["resolve", 4, 116]));

    let session = sessions.recv().await.unwrap();
    for (export, n) in [(1, 1), (2, 1), (3, 1), (4, 1), (id, 1)] {
        peer.send(json!(["release", export, n])).await;
    }
    eventually("every export but main is released", || {
        session.stats().exports == 1
    })
    .await;
}

#[tokio::test]
async fn callbacks_go_to_the_peer_and_come_back_released() {
    let (addr, mut sessions, _h) = server().await;
    let mut peer = Peer::connect(&addr).await;
    peer.send(json!([
        "push",
        ["pipeline", 0, ["callMeBack"], [["export", -1]]]
    ]))
    .await;
    peer.send(json!(["pull", 1])).await;
    // The server calls the function (path []) and pulls the answer.
    assert_eq!(
        peer.recv().await.unwrap(),
        json!(["push", ["pipeline", -1, [], [10]]])
    );
    assert_eq!(peer.recv().await.unwrap(), json!(["pull", 1]));
    peer.send(json!(["resolve", 1, 30])).await;
    let mut rest = Vec::new();
    while rest.len() < 3 {
        rest.push(peer.recv().await.unwrap());
    }
    assert!(rest.contains(&json!(["release", 1, 1])), "{rest:?}");
    assert!(
        rest.contains(&json!(["release", -1, 1])),
        "the callback is released: {rest:?}"
    );
    assert!(
        rest.contains(&json!(["resolve", 1, "callback returned 30"])),
        "{rest:?}"
    );
    let session = sessions.recv().await.unwrap();
    assert_eq!(session.stats().imports, 0);
}

#[tokio::test]
async fn errors_are_rejected_with_name_message_and_props() {
    let (addr, _sessions, _h) = server().await;
    let mut peer = Peer::connect(&addr).await;
    peer.send(json!(["push", ["pipeline", 0, ["fail"], []]]))
        .await;
    peer.send(json!(["pull", 1])).await;
    let reject = peer.recv().await.unwrap();
    assert_eq!(reject[0], "reject");
    assert_eq!(reject[2][0], "error");
    assert_eq!(reject[2][2], "bad thing");
    assert_eq!(reject[2][4]["capwireCode"], "invalid_argument");
    peer.send(json!(["push", ["pipeline", 0, ["nope"], [1]]]))
        .await;
    peer.send(json!(["pull", 2])).await;
    let reject = peer.recv().await.unwrap();
    assert_eq!(reject[2][1], "TypeError", "{reject}");
}

/// Each violation gets `abort` and close 3000, and the server keeps serving.
#[tokio::test]
async fn protocol_violations_abort_and_close_3000() {
    let (addr, _sessions, _h) = server().await;
    for (bad, says) in [
        (json!(["bogus", 1]), "bad RPC message"),
        (json!(["pull", 5]), "no such export ID: 5"),
        (json!(["release", 9, 1]), "no such export ID: 9"),
        (json!(["release", 0, 5]), "refcount would go negative"),
        (json!(["push"]), "bad RPC message"),
        (
            json!(["push", ["pipeline", 7, ["x"], []]]),
            "no such entry on exports table: 7",
        ),
        (json!(["push", ["map", []]]), "unknown special value"),
    ] {
        let mut peer = Peer::connect(&addr).await;
        peer.send(bad.clone()).await;
        let abort = peer.recv().await.unwrap();
        assert_eq!(abort[0], "abort", "{bad}: {abort}");
        let message = abort[1][2].as_str().unwrap_or_default();
        assert!(message.contains(says), "{bad}: {message}");
        assert_eq!(
            peer.recv().await,
            Err(Some(3000)),
            "{bad}: close 3000 after abort"
        );
    }
    let mut peer = Peer::connect(&addr).await;
    peer.send(json!(["push", ["pipeline", 0, ["square"], [3]]]))
        .await;
    peer.send(json!(["pull", 1])).await;
    assert_eq!(
        peer.recv().await.unwrap(),
        json!(["resolve", 1, 9]),
        "still serving"
    );
}

/// One port, every client: a native capwire session on the same listener.
#[tokio::test]
async fn native_clients_share_the_port() {
    let (addr, _sessions, _h) = server().await;
    let t = transport::connect(&addr, &TransportConfig::default())
        .await
        .unwrap();
    let session = Session::new(t, Registry::new(), SessionConfig::default());
    let demo = session.bootstrap("demo", None).await.unwrap();
    let n: i64 = demo
        .call("square", Value::new(&(11,)).unwrap())
        .await
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(n, 121);
}

#[test]
fn dialects_are_told_by_the_first_byte() {
    use capwire::dialect::{detect, Dialect};
    assert_eq!(detect(b"  [\"push\",1]"), Dialect::Capnweb);
    assert_eq!(detect(b"{\"hello\":{\"v\":1}}"), Dialect::Native);
    assert_eq!(detect(&[0x81, 0xa5]), Dialect::Native);
}

/// Raw HTTP on the WebSocket port: a POSTed batch gets its answers, one per
/// line; an empty batch gets an empty 200; anything but POST gets 405.
#[tokio::test]
async fn http_batch_on_the_same_port() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (addr, _sessions, _h) = server().await;
    let Address::Ws { authority, .. } = &addr else {
        panic!("{addr}")
    };
    async fn http(authority: &str, request: String) -> String {
        let mut tcp = tokio::net::TcpStream::connect(authority).await.unwrap();
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        within(
            Duration::from_secs(5),
            "the HTTP response",
            tcp.read_to_string(&mut out),
        )
        .await
        .unwrap();
        out
    }
    let body = [
        json!(["push", ["pipeline", 0, ["square"], [6]]]),
        json!(["push", ["pipeline", 0, ["makeCounter"], [2]]]),
        json!(["push", ["pipeline", 2, ["increment"], [3]]]),
        json!(["push", ["pipeline", 0, ["fail"], []]]),
        json!(["pull", 1]),
        json!(["pull", 3]),
        json!(["pull", 4]),
    ]
    .iter()
    .map(Json::to_string)
    .collect::<Vec<_>>()
    .join("\n");
    let response = http(
        authority,
        format!(
            "POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    let (_, answer) = response.split_once("\r\n\r\n").unwrap();
    let lines: Vec<Json> = answer
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.contains(&json!(["resolve", 1, 36])), "{lines:?}");
    assert!(lines.contains(&json!(["resolve", 3, 5])), "{lines:?}");
    assert!(
        lines.iter().any(|l| l[0] == "reject" && l[1] == 4),
        "{lines:?}"
    );
    assert_eq!(lines.len(), 3, "only pulled ids are answered: {lines:?}");

    let empty = http(
        authority,
        "POST / HTTP/1.1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n".into(),
    )
    .await;
    assert!(
        empty.starts_with("HTTP/1.1 200 OK") && empty.ends_with("\r\n\r\n"),
        "{empty}"
    );
    let get = http(
        authority,
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into(),
    )
    .await;
    assert!(get.starts_with("HTTP/1.1 405"), "{get}");
    // A chunked body is read like any other.
    let push = r#"["push",["pipeline",0,["square"],[4]]]"#.to_owned() + "\n" + r#"["pull",1]"#;
    let chunked = http(
        authority,
        format!(
            "POST / HTTP/1.1\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{push}\r\n0\r\n\r\n",
            push.len()
        ),
    )
    .await;
    assert!(chunked.starts_with("HTTP/1.1 200"), "{chunked}");
    assert!(chunked.ends_with(r#"["resolve",1,16]"#), "{chunked}");
}

/// A peer that pushes without ever releasing hits the export table's bound:
/// abort, close 3000, nothing kept.
#[tokio::test]
async fn the_export_table_is_bounded() {
    let max_exports = capwire::Limits::default().max_exports;
    let (addr, mut sessions, _h) = server().await;
    let mut peer = Peer::connect(&addr).await;
    for _ in 0..max_exports {
        peer.send(json!(["push", ["pipeline", 0, ["square"], [2]]]))
            .await;
    }
    let abort = peer.recv().await.unwrap();
    assert_eq!(abort[0], "abort", "{abort}");
    assert!(
        abort[1][2]
            .as_str()
            .unwrap()
            .contains("max_caps_per_connection"),
        "{abort}"
    );
    assert_eq!(peer.recv().await, Err(Some(3000)));
    let session = sessions.recv().await.unwrap();
    eventually("the table is dropped", || session.stats().exports == 0).await;
}

/// A resolve for an id nobody waits on is not evaluated (it could wait
/// forever on a promise); what it introduces is released at once.
#[tokio::test]
async fn an_unwanted_resolve_releases_what_it_introduced() {
    let (addr, _sessions, _h) = server().await;
    let mut peer = Peer::connect(&addr).await;
    peer.send(json!(["resolve", 77, {"f": ["export", -3], "p": ["promise", -4]}]))
        .await;
    let mut got = vec![peer.recv().await.unwrap(), peer.recv().await.unwrap()];
    got.sort_by_key(|m| m[1].as_i64());
    assert_eq!(got, [json!(["release", -4, 1]), json!(["release", -3, 1])]);
}

/// A peer that keeps writing into a pipe nobody reads cannot make the
/// session hold its chunks without bound: the pipe acknowledges its window,
/// further writes wait, and past `max_in_flight_in` waiting messages the
/// session aborts.
#[tokio::test]
async fn writes_into_an_unread_pipe_are_bounded() {
    let max_in_flight = capwire::Limits::default().max_in_flight_in;
    let (addr, _sessions, _h) = server().await;
    let mut peer = Peer::connect(&addr).await;
    peer.send(json!(["pipe"])).await;
    let window = 16;
    for _ in 0..window + max_in_flight + 1 {
        peer.send(json!(["stream", ["pipeline", 1, ["write"], ["chunk"]]]))
            .await;
    }
    let mut acked = Vec::new();
    let abort = loop {
        let m = peer.recv().await.unwrap();
        if m[0] == "resolve" {
            acked.push(m[1].as_i64().unwrap());
        } else {
            break m;
        }
    };
    // The pipe took id 1; its first `window` writes (ids 2..) were taken in.
    assert_eq!(acked, (2..2 + window as i64).collect::<Vec<_>>());
    assert_eq!(abort[0], "abort", "{abort}");
    assert!(
        abort[1][2]
            .as_str()
            .unwrap()
            .contains("max_concurrent_calls"),
        "{abort}"
    );
    assert_eq!(peer.recv().await, Err(Some(3000)));
}

/// A push lives in the answer table from its `push` to its `release`: a
/// release before the pull frees it (the result is never sent), a second
/// release of it, or one of more than its one reference, is a violation,
/// and a pull after the release names nothing.
#[tokio::test]
async fn a_released_push_is_freed_and_cannot_be_pulled() {
    let (addr, mut sessions, _h) = server().await;
    let mut peer = Peer::connect(&addr).await;
    peer.send(json!(["push", ["pipeline", 0, ["square"], [3]]]))
        .await;
    peer.send(json!(["release", 1, 1])).await;
    let session = sessions.recv().await.unwrap();
    eventually("the push is freed", || session.stats().exports == 1).await;
    // Pipelining on a push that lives: push 3 squares the result of push 2.
    peer.send(json!(["push", ["pipeline", 0, ["square"], [4]]]))
        .await; // 2
    peer.send(json!([
        "push",
        ["pipeline", 0, ["square"], [["pipeline", 2]]]
    ]))
    .await; // 3
    peer.send(json!(["pull", 3])).await;
    assert_eq!(peer.recv().await.unwrap(), json!(["resolve", 3, 256]));
    peer.send(json!(["release", 2, 2])).await;
    let abort = peer.recv().await.unwrap();
    assert_eq!(abort[0], "abort", "{abort}");
    assert!(
        abort[1][2]
            .as_str()
            .unwrap()
            .contains("refcount would go negative"),
        "{abort}"
    );

    let mut peer = Peer::connect(&addr).await;
    peer.send(json!(["push", ["pipeline", 0, ["square"], [3]]]))
        .await;
    peer.send(json!(["release", 1, 1])).await;
    peer.send(json!(["pull", 1])).await;
    let abort = peer.recv().await.unwrap();
    assert_eq!(abort[0], "abort", "{abort}");
    assert!(
        abort[1][2]
            .as_str()
            .unwrap()
            .contains("no such export ID: 1"),
        "{abort}"
    );
}
