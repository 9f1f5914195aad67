//! Reply routing survives a restart: the correlations an endpoint received
//! are written with their delivery, kept within the per-endpoint bound and
//! the TTL, and read back when the broker starts again.

use std::time::Duration;

use capwire_broker::broker::{Delivery, Routed};
use capwire_broker::store::EndpointId;
use capwire_broker::{Client, Limits};
use futures_util::StreamExt;
use serde_json::json;

mod common;
use common::{pid, register, start};

async fn next(
    stream: &mut (impl futures_util::Stream<Item = Result<Delivery, capwire::Status>> + Unpin),
) -> Delivery {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("a delivery in time")
        .expect("the stream goes on")
        .expect("a delivery")
}

/// Bob replies to `correlation`: where did it go?
async fn reply(bob: &Client, b: EndpointId, correlation: &str) -> Routed {
    bob.api()
        .send(b, None, Some(correlation.into()), json!("re"), None, None)
        .await
        .unwrap()
        .routed
}

#[tokio::test]
async fn replies_route_after_a_restart_within_the_bound_and_the_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let mut limits = Limits::default();
    limits.correlation_capacity = 2;
    limits.correlation_ttl = Duration::from_secs(3);
    let (a, b, received) = {
        let daemon = start(dir.path(), limits.clone()).await;
        let d = daemon.discovery().clone();
        let alice = Client::connect(&d.unix, &d.token).await.unwrap();
        let bob = Client::connect(&d.unix, &d.token).await.unwrap();
        let a = register(&alice).await;
        let b = register(&bob).await;
        let mut inbox = bob.api().receive(b, None);
        let mut received = Vec::new();
        for n in 0..3 {
            alice
                .api()
                .send(a, Some(b), None, json!(n), None, None)
                .await
                .unwrap();
            let m = next(&mut inbox).await;
            bob.api().ack(b, vec![m.seq]).await.unwrap();
            received.push(m.envelope.correlation_id);
        }
        daemon.shutdown().await;
        (a, b, received)
    };

    // A new broker process would have no memory but the store.
    let daemon = start(dir.path(), limits.clone()).await;
    let d = daemon.discovery().clone();
    let bob = Client::connect(&d.unix, &d.token).await.unwrap();
    let alice = Client::connect(&d.unix, &d.token).await.unwrap();
    bob.api().reattach(b, pid()).await.unwrap();
    alice.api().reattach(a, pid()).await.unwrap();
    // The newest two are kept (the bound is 2): replies reach alice.
    for correlation in &received[1..] {
        let routed = reply(&bob, b, correlation).await;
        assert!(
            matches!(routed, Routed::Endpoint { endpoint_id, .. } if endpoint_id == a),
            "{routed:?}"
        );
    }
    // The oldest was evicted before the restart, in the store too.
    let routed = reply(&bob, b, &received[0]).await;
    assert!(
        matches!(&routed, Routed::Inbox { reason, .. } if reason == "unknown_correlation"),
        "{routed:?}"
    );
    let mut replies = alice.api().receive(a, None);
    assert_eq!(
        next(&mut replies).await.envelope.in_reply_to.as_deref(),
        Some(received[1].as_str())
    );
    daemon.shutdown().await;

    // Past the TTL, after another restart, none is left.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let daemon = start(dir.path(), limits.clone()).await;
    let d = daemon.discovery().clone();
    let bob = Client::connect(&d.unix, &d.token).await.unwrap();
    bob.api().reattach(b, pid()).await.unwrap();
    let routed = reply(&bob, b, &received[2]).await;
    assert!(
        matches!(&routed, Routed::Inbox { reason, .. } if reason == "unknown_correlation"),
        "{routed:?}"
    );
    daemon.shutdown().await;
}
