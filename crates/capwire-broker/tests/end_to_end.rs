//! Plugins over a real Unix socket and a loopback WebSocket: register,
//! send, receive on the credit stream, ack, reply, lose the connection,
//! reattach and get the held messages in order; restart the broker.

use std::time::Duration;

use capwire::Code;
use capwire_broker::broker::Delivery;
use capwire_broker::store::EndpointId;
use capwire_broker::{BrokerEvent, Client, EndpointState, Limits};
use futures_util::StreamExt;
use serde_json::json;

mod common;
use common::{pid, register, start};

async fn send(client: &Client, from: EndpointId, to: EndpointId, n: u64) {
    let sent = client
        .api()
        .send(from, Some(to), None, json!(n), None, None)
        .await
        .expect("send");
    assert!(matches!(
        sent.routed,
        capwire_broker::broker::Routed::Endpoint { endpoint_id, .. } if endpoint_id == to
    ));
}

async fn next(
    stream: &mut (impl futures_util::Stream<Item = Result<Delivery, capwire::Status>> + Unpin),
) -> Delivery {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("a delivery in time")
        .expect("the stream goes on")
        .expect("a delivery, not an error")
}

async fn wait_state(
    events: &mut tokio::sync::broadcast::Receiver<BrokerEvent>,
    id: EndpointId,
    want: EndpointState,
) {
    let wait = async {
        loop {
            match events.recv().await {
                Ok(BrokerEvent::EndpointState {
                    endpoint_id, to, ..
                }) if endpoint_id == id && to == want => return,
                Ok(_) => {}
                Err(e) => panic!("events: {e}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .unwrap_or_else(|_| panic!("endpoint {id} never became {want:?}"));
}

#[tokio::test]
async fn send_receive_ack_and_reply_across_unix_and_websocket() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(dir.path(), Limits::default()).await;
    let d = daemon.discovery().clone();
    let alice = Client::connect(&d.unix, &d.token).await.unwrap();
    let bob = Client::connect(&d.ws, &d.token).await.unwrap();
    let a = register(&alice).await;
    let b = register(&bob).await;
    assert_ne!(a, b);

    for n in 0..5 {
        send(&alice, a, b, n).await;
    }
    let mut inbox = bob.api().receive(b, Some(8));
    let mut seqs = Vec::new();
    for n in 0..5 {
        let m = next(&mut inbox).await;
        assert_eq!(m.envelope.content, json!(n), "in order");
        assert_eq!(m.envelope.from, Some(a));
        assert_eq!(m.envelope.metadata["source_endpoint_id"], json!(a));
        assert!(!m.redelivered);
        assert_eq!(m.delivery_count, 1);
        seqs.push(m.seq);
    }
    let acked = bob.api().ack(b, seqs.clone()).await.unwrap();
    assert_eq!(acked.acked, 5);
    // Acking again does nothing, and says so.
    let again = bob.api().ack(b, seqs.clone()).await.unwrap();
    assert_eq!((again.acked, again.ignored.len()), (0, 5));

    // Reply routing: bob answers the last message without naming alice.
    send(&alice, a, b, 99).await;
    let m = next(&mut inbox).await;
    let reply = bob
        .api()
        .send(
            b,
            None,
            Some(m.envelope.correlation_id.clone()),
            json!("re"),
            None,
            None,
        )
        .await
        .unwrap();
    let mut alice_inbox = alice.api().receive(a, None);
    let r = next(&mut alice_inbox).await;
    assert_eq!(r.envelope.content, json!("re"));
    assert_eq!(
        r.envelope.in_reply_to.as_deref(),
        Some(m.envelope.correlation_id.as_str())
    );
    assert_eq!(r.envelope.correlation_id, reply.correlation_id);
    // Alice cannot reply by a correlation id she never received.
    let stray = alice
        .api()
        .send(
            a,
            None,
            Some(m.envelope.correlation_id.clone()),
            json!("x"),
            None,
            None,
        )
        .await
        .unwrap();
    assert!(matches!(
        stray.routed,
        capwire_broker::broker::Routed::Inbox { ref reason, .. } if reason == "unknown_correlation"
    ));
    let status = alice.admin().await.unwrap().status().await.unwrap();
    assert_eq!((status.active, status.inbox), (2, 1));
    daemon.shutdown().await;
}

#[tokio::test]
async fn a_dropped_connection_holds_messages_until_reattach_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(dir.path(), Limits::default()).await;
    let mut events = daemon.broker().subscribe();
    let d = daemon.discovery().clone();
    let alice = Client::connect(&d.unix, &d.token).await.unwrap();
    let bob = Client::connect(&d.ws, &d.token).await.unwrap();
    let a = register(&alice).await;
    let b = register(&bob).await;

    send(&alice, a, b, 0).await;
    let mut inbox = bob.api().receive(b, None);
    let first = next(&mut inbox).await;
    assert_eq!(first.envelope.content, json!(0));
    // Bob's connection drops before he acks.
    drop(inbox);
    bob.close().await;
    wait_state(&mut events, b, EndpointState::Reconnecting).await;

    for n in 1..4 {
        send(&alice, a, b, n).await;
    }
    let bob = Client::connect(&d.unix, &d.token).await.unwrap();
    // A receive before reattach is refused; a wrong pid too.
    let early = bob.api().receive(b, None).next().await.unwrap();
    assert_eq!(early.unwrap_err().code, Code::FailedPrecondition);
    let wrong = bob.api().reattach(b, pid() + 1).await.unwrap_err();
    assert_eq!(wrong.code, Code::PermissionDenied);
    let back = bob.api().reattach(b, pid()).await.unwrap();
    assert_eq!(back.held, 4);
    wait_state(&mut events, b, EndpointState::Active).await;

    let mut inbox = bob.api().receive(b, None);
    let again = next(&mut inbox).await;
    assert_eq!(again.seq, first.seq);
    assert!(again.redelivered);
    assert_eq!(again.delivery_count, 2);
    for n in 1..4 {
        let m = next(&mut inbox).await;
        assert_eq!(m.envelope.content, json!(n));
        assert!(!m.redelivered);
    }
    daemon.shutdown().await;
}

#[tokio::test]
async fn a_restarted_broker_keeps_endpoints_queues_and_delivery_counts() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, first_seq) = {
        let daemon = start(dir.path(), Limits::default()).await;
        let d = daemon.discovery().clone();
        let alice = Client::connect(&d.unix, &d.token).await.unwrap();
        let bob = Client::connect(&d.unix, &d.token).await.unwrap();
        let a = register(&alice).await;
        let b = register(&bob).await;
        for n in 0..3 {
            send(&alice, a, b, n).await;
        }
        let mut inbox = bob.api().receive(b, Some(1));
        let first = next(&mut inbox).await;
        daemon.shutdown().await;
        (a, b, first.seq)
    };
    assert!(
        !dir.path().join("broker.json").exists(),
        "a clean shutdown removes the discovery file"
    );
    let daemon = start(dir.path(), Limits::default()).await;
    let d = daemon.discovery().clone();
    let endpoints = daemon.broker().endpoints();
    assert_eq!(endpoints.len(), 2);
    assert!(endpoints
        .iter()
        .all(|e| e.record.state == EndpointState::Reconnecting));
    let bob = Client::connect(&d.ws, &d.token).await.unwrap();
    bob.api().reattach(b, pid()).await.unwrap();
    let mut inbox = bob.api().receive(b, None);
    let m = next(&mut inbox).await;
    assert_eq!(
        (m.seq, m.redelivered, m.delivery_count),
        (first_seq, true, 2)
    );
    assert_eq!(next(&mut inbox).await.envelope.content, json!(1));
    assert_eq!(next(&mut inbox).await.envelope.content, json!(2));
    // The sender is still known and can reattach too.
    let alice = Client::connect(&d.unix, &d.token).await.unwrap();
    alice.api().reattach(a, pid()).await.unwrap();
    daemon.shutdown().await;
}

#[tokio::test]
async fn grace_expiry_closes_the_endpoint_and_the_inbox_takes_its_messages() {
    let dir = tempfile::tempdir().unwrap();
    let mut limits = Limits::default();
    limits.grace = Duration::from_millis(200);
    let daemon = start(dir.path(), limits).await;
    let mut events = daemon.broker().subscribe();
    let d = daemon.discovery().clone();
    let alice = Client::connect(&d.unix, &d.token).await.unwrap();
    let bob = Client::connect(&d.unix, &d.token).await.unwrap();
    let carol = Client::connect(&d.unix, &d.token).await.unwrap();
    let a = register(&alice).await;
    let b = register(&bob).await;
    let c = register(&carol).await;
    send(&alice, a, b, 7).await;
    // Delivered but never acknowledged.
    let mut inbox = bob.api().receive(b, None);
    assert_eq!(next(&mut inbox).await.envelope.content, json!(7));
    drop(inbox);
    bob.close().await;
    wait_state(&mut events, b, EndpointState::Reconnecting).await;
    wait_state(&mut events, b, EndpointState::Closed).await;

    let admin = alice.admin().await.unwrap();
    let entries = admin.inbox_list().await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].reason, "endpoint_closed");
    assert_eq!(entries[0].target_hint, Some(b));
    assert_eq!(entries[0].envelope.content, json!(7));
    // A send to the closed endpoint lands in the inbox too.
    let late = alice
        .api()
        .send(a, Some(b), None, json!(8), None, None)
        .await
        .unwrap();
    assert!(matches!(
        late.routed,
        capwire_broker::broker::Routed::Inbox { ref reason, .. } if reason == "endpoint_closed"
    ));
    // An operator dispatches the first to carol and drops the second.
    let dispatched = admin.inbox_dispatch(entries[0].id, c).await.unwrap();
    assert_eq!(dispatched.endpoint_id, c);
    let mut carol_inbox = carol.api().receive(c, None);
    let m = next(&mut carol_inbox).await;
    assert_eq!(m.envelope.content, json!(7));
    assert_eq!(m.envelope.metadata["dispatched_from"], json!(entries[0].id));
    let rest = admin.inbox_list().await.unwrap();
    assert_eq!(rest.len(), 1);
    admin.inbox_drop(rest[0].id).await.unwrap();
    assert!(admin.inbox_list().await.unwrap().is_empty());
    assert_eq!(
        admin.inbox_drop(rest[0].id).await.unwrap_err().code,
        Code::NotFound
    );
    daemon.shutdown().await;
}
