//! What keeps an endpoint active: the connection that registered it (or
//! last reattached it) and an open `receive` stream, wherever it is; for a
//! plugin without a lasting connection (JSON-RPC over HTTP POST), its
//! heartbeats. When the last of these ends while the process lives, the
//! endpoint becomes reconnecting.

use std::time::{Duration, Instant};

use capwire_broker::daemon::Daemon;
use capwire_broker::discovery::Discovery;
use capwire_broker::store::EndpointId;
use capwire_broker::{BrokerEvent, Client, EndpointState, Limits};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::{pid, register, start};

/// Waits for `id` to enter `want`; returns the transition's cause.
async fn wait_state(
    events: &mut tokio::sync::broadcast::Receiver<BrokerEvent>,
    id: EndpointId,
    want: EndpointState,
) -> String {
    wait_states(events, &[id], want).await.remove(0)
}

/// Waits for every one of `ids` to enter `want` (in any order); returns
/// the causes, in the order of `ids`.
async fn wait_states(
    events: &mut tokio::sync::broadcast::Receiver<BrokerEvent>,
    ids: &[EndpointId],
    want: EndpointState,
) -> Vec<String> {
    let mut causes: Vec<Option<String>> = vec![None; ids.len()];
    let wait = async {
        while causes.iter().any(Option::is_none) {
            match events.recv().await {
                Ok(BrokerEvent::EndpointState {
                    endpoint_id,
                    to,
                    cause,
                    ..
                }) if to == want => {
                    if let Some(i) = ids.iter().position(|id| *id == endpoint_id) {
                        causes[i] = Some(cause);
                    }
                }
                Ok(_) => {}
                Err(e) => panic!("events: {e}"),
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .is_err()
    {
        panic!("not all of {ids:?} became {want:?}: {causes:?}");
    }
    causes.into_iter().flatten().collect()
}

fn state_of(daemon: &Daemon, id: EndpointId) -> EndpointState {
    daemon
        .broker()
        .endpoints()
        .into_iter()
        .find(|e| e.record.id == id)
        .map(|e| e.record.state)
        .expect("a known endpoint")
}

#[tokio::test]
async fn a_closed_connection_makes_its_endpoints_reconnecting_without_receive() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(dir.path(), Limits::default()).await;
    let mut events = daemon.broker().subscribe();
    let d = daemon.discovery().clone();

    // Over the Unix socket and over a WebSocket: registered, never received.
    for address in [&d.unix, &d.ws] {
        let plugin = Client::connect(address, &d.token).await.unwrap();
        let a = register(&plugin).await;
        let b = register(&plugin).await;
        plugin.close().await;
        let causes = wait_states(&mut events, &[a, b], EndpointState::Reconnecting).await;
        assert_eq!(causes, ["connection closed", "connection closed"]);
        // The plugin comes back on a new connection, which holds it now.
        let again = Client::connect(address, &d.token).await.unwrap();
        again.api().reattach(a, pid()).await.unwrap();
        wait_state(&mut events, a, EndpointState::Active).await;
        again.close().await;
        wait_state(&mut events, a, EndpointState::Reconnecting).await;
    }
    daemon.shutdown().await;
}

#[tokio::test]
async fn an_endpoint_lives_while_its_connection_or_its_receiver_does() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(dir.path(), Limits::default()).await;
    let mut events = daemon.broker().subscribe();
    let d = daemon.discovery().clone();

    // Registered on one connection, receiving on another.
    let registrar = Client::connect(&d.unix, &d.token).await.unwrap();
    let receiver = Client::connect(&d.unix, &d.token).await.unwrap();
    let sender = Client::connect(&d.unix, &d.token).await.unwrap();
    let a = register(&registrar).await;
    let s = register(&sender).await;
    let mut stream = receiver.api().receive(a, None);
    sender
        .api()
        .send(s, Some(a), None, json!(1), None, None)
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.envelope.content, json!(1));
    // The registering connection goes; the receiver still holds it.
    registrar.close().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(state_of(&daemon, a), EndpointState::Active);
    sender
        .api()
        .send(s, Some(a), None, json!(2), None, None)
        .await
        .unwrap();
    let second = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(second.envelope.content, json!(2));
    // Then the receiving connection goes too.
    drop(stream);
    receiver.close().await;
    wait_state(&mut events, a, EndpointState::Reconnecting).await;

    // A receive stream cancelled on a connection that stays open: the
    // connection still holds the endpoint.
    sender.api().reattach(a, pid()).await.unwrap();
    wait_state(&mut events, a, EndpointState::Active).await;
    let stream = sender.api().receive(a, None);
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(stream);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(state_of(&daemon, a), EndpointState::Active);
    let status = daemon
        .broker()
        .endpoints()
        .into_iter()
        .find(|e| e.record.id == a)
        .unwrap();
    assert!(!status.receiver_attached, "the cancelled stream is gone");
    sender.close().await;
    wait_states(&mut events, &[a, s], EndpointState::Reconnecting).await;
    daemon.shutdown().await;
}

/// One JSON-RPC request as an HTTP POST on a connection of its own.
async fn post(d: &Discovery, method: &str, params: Value) -> Value {
    let authority = d
        .http
        .strip_prefix("http://")
        .and_then(|rest| rest.split('/').next())
        .expect("an http:// URL");
    let body = serde_json::to_vec(&json!({
        "jsonrpc": "2.0", "id": 1, "method": method, "params": params,
    }))
    .unwrap();
    let mut socket = tokio::net::TcpStream::connect(authority).await.unwrap();
    let head = format!(
        "POST / HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        d.token,
        body.len()
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(&body).await.unwrap();
    let mut answer = Vec::new();
    socket.read_to_end(&mut answer).await.unwrap();
    let text = String::from_utf8(answer).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    let reply: Value = serde_json::from_str(&body).unwrap();
    assert!(reply.get("error").is_none(), "{method}: {reply}");
    reply["result"].clone()
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").expect("a chunk size");
        let size = usize::from_str_radix(size.trim(), 16).expect("a hex chunk size");
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
}

#[tokio::test]
async fn heartbeats_keep_an_endpoint_without_a_connection_alive() {
    let dir = tempfile::tempdir().unwrap();
    let mut limits = Limits::default();
    limits.heartbeat_expiry = Duration::from_millis(600);
    limits.sweep_interval = Duration::from_millis(50);
    let daemon = start(dir.path(), limits).await;
    let mut events = daemon.broker().subscribe();
    let d = daemon.discovery().clone();

    let registered = post(
        &d,
        "capwire.broker/register",
        json!({"kind": "http-plugin", "pid": pid()}),
    )
    .await;
    let id = registered["endpoint_id"].as_u64().unwrap();
    // Its registering request ended at once, yet heartbeats keep it active
    // for well over the expiry.
    let until = Instant::now() + Duration::from_millis(1800);
    while Instant::now() < until {
        let state = post(&d, "capwire.broker/heartbeat", json!({"endpoint_id": id})).await;
        assert_eq!(state, json!("active"));
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(state_of(&daemon, id), EndpointState::Active);
    // Any call naming it counts: a send from it.
    post(
        &d,
        "capwire.broker/send",
        json!({"endpoint_id": id, "to": id, "content": "to myself"}),
    )
    .await;
    // Silence: it becomes reconnecting, and says why.
    let silent = Instant::now();
    let cause = wait_state(&mut events, id, EndpointState::Reconnecting).await;
    assert_eq!(cause, "heartbeat expired");
    assert!(
        silent.elapsed() >= Duration::from_millis(400),
        "not before the expiry"
    );
    // A heartbeat does not bring it back; reattach does.
    let state = post(&d, "capwire.broker/heartbeat", json!({"endpoint_id": id})).await;
    assert_eq!(state, json!("reconnecting"));
    post(
        &d,
        "capwire.broker/reattach",
        json!({"endpoint_id": id, "pid": pid()}),
    )
    .await;
    assert_eq!(state_of(&daemon, id), EndpointState::Active);
    daemon.shutdown().await;
}
