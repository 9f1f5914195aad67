//! Revocation and the registry: unserving revokes live instances, pending
//! calls fail `failed_precondition/revoked`, later calls fail without a round
//! trip; `replace`, `if_exists`, the reserved prefix and `serve_all`
//! atomicity (protocol [S23]).

mod common;

use std::sync::Arc;

use capwire::events::Direction;
use capwire::proto::{CallResult, CapDescriptor, Codec, Frame, Hello, Outcome, Payload};
use capwire::proto::{Release, Revoked};
use capwire::{
    Capability, Code, Event, IfExists, Methods, Object, Reason, Registry, Session, SessionConfig,
    Value,
};
use common::*;
use tokio::sync::broadcast;

fn named(name: &'static str) -> Arc<dyn Object> {
    Arc::new(Methods::new(name).method("who", move |_args, _ctx| async move { Value::new(name) }))
}

async fn who(cap: &Capability) -> Result<String, capwire::Status> {
    cap.call("who", Value::null()).await?.decode()
}

/// Waits until the client has processed a `revoked` from the server.
async fn revoke_seen(events: &mut broadcast::Receiver<Event>) -> Vec<u64> {
    loop {
        let event = within(std::time::Duration::from_secs(5), "revoked", events.recv())
            .await
            .expect("event");
        if let Event::Revoke {
            direction: Direction::Incoming,
            caps,
        } = event
        {
            return caps;
        }
    }
}

/// Drives one revocation through `revoke` and checks the promises of [S23].
async fn pending_and_later_calls_fail_revoked(
    kind: Kind,
    revoke: impl FnOnce(&Registry, capwire::ServeHandle),
) {
    let (registry, handle, mut events) = probe_registry();
    let p = pair(kind, registry.clone()).await;
    let mut client_events = p.client.events();
    let probe = p.client.bootstrap("probe", None).await.unwrap();
    let id = probe.remote_id().expect("remote");
    let pending = tokio::spawn(probe.call("hang", Value::null()));
    events.started().await;

    revoke(&registry, handle);

    let r = pending.await.unwrap();
    assert_status(&r, Code::FailedPrecondition, Some(Reason::REVOKED));
    let stopped = events.stopped().await;
    assert!(
        stopped.cancelled && !stopped.completed,
        "{kind:?}: the handler was stopped"
    );
    assert_eq!(revoke_seen(&mut client_events).await, vec![id]);

    // Later calls fail here, without a frame sent.
    let before = p.client.stats().frames_out;
    for _ in 0..3 {
        let r = probe.call("sleep", Value::new(&(1,)).unwrap()).await;
        assert_status(&r, Code::FailedPrecondition, Some(Reason::REVOKED));
    }
    assert_eq!(
        p.client.stats().frames_out,
        before,
        "{kind:?}: a round trip was made"
    );

    // Both sides agree the capability is gone, and the connection is fine.
    eventually("the export to be gone", || p.server.stats().exports == 0).await;
    eventually("the import to be gone", || p.client.stats().imports == 0).await;
    assert!(p.client.ping().await.is_ok());
    assert_status(
        &p.client
            .bootstrap("probe", None)
            .await
            .map(|_| Value::null()),
        Code::NotFound,
        None,
    );
}

#[tokio::test]
async fn dropping_the_serve_handle_revokes() {
    for kind in [Kind::Mem, Kind::Tcp] {
        pending_and_later_calls_fail_revoked(kind, |_, handle| drop(handle)).await;
    }
}

#[tokio::test]
async fn unserve_revokes() {
    for kind in [Kind::Mem, Kind::Unix] {
        pending_and_later_calls_fail_revoked(kind, |registry, handle| {
            assert!(registry.unserve("probe"));
            assert!(!registry.unserve("probe"), "already unserved");
            // The handle of an unserved name revokes nothing more.
            handle.unserve();
        })
        .await;
    }
}

#[tokio::test]
async fn replace_needs_the_same_version_and_revokes_the_old_object() {
    let registry = Registry::new();
    let _old = registry
        .serve_with("svc", "1.0", named("old"), IfExists::Throw)
        .unwrap();
    let p = pair(Kind::Mem, registry.clone()).await;
    let old = p.client.bootstrap("svc", None).await.unwrap();
    assert_eq!(who(&old).await.unwrap(), "old");

    let err = registry
        .replace("svc", "2.0", Methods::new("x"))
        .expect_err("version differs");
    assert_eq!(err.code, Code::FailedPrecondition);
    assert_eq!(err.reason, Some(Reason::VERSION_MISMATCH));
    assert_eq!(who(&old).await.unwrap(), "old", "nothing was replaced");

    let err = registry
        .replace("nope", "1.0", Methods::new("x"))
        .expect_err("not served");
    assert_eq!(err.code, Code::NotFound);

    let new_object = Methods::new("new").method("who", |_args, _ctx| async { Value::new("new") });
    let _new = registry.replace("svc", "1.0", new_object).unwrap();
    let r = who(&old).await;
    assert!(
        matches!(&r, Err(s) if s.reason == Some(Reason::REVOKED)),
        "{r:?}"
    );
    let new = p.client.bootstrap("svc", Some("1.0")).await.unwrap();
    assert_eq!(who(&new).await.unwrap(), "new");

    // Dropping the old handle does not unserve its replacement.
    drop(_old);
    assert_eq!(who(&new).await.unwrap(), "new");
    assert_eq!(registry.names(), vec![("svc".into(), "1.0".into())]);
}

#[tokio::test]
async fn if_exists_throw_replace_skip() {
    let registry = Registry::new();
    let first = registry
        .serve_with("svc", "1.0", named("first"), IfExists::Throw)
        .unwrap();
    let p = pair(Kind::Mem, registry.clone()).await;
    let cap = p.client.bootstrap("svc", None).await.unwrap();

    let err = registry
        .serve_with("svc", "1.0", named("second"), IfExists::Throw)
        .expect_err("taken");
    assert_eq!(err.code, Code::AlreadyExists);
    assert_eq!(err.reason, Some(Reason::NAME_COLLISION));

    let skipped = registry
        .serve_with("svc", "9.9", named("second"), IfExists::Skip)
        .unwrap();
    assert!(skipped.is_empty());
    assert!(!first.is_empty());
    drop(skipped);
    assert_eq!(who(&cap).await.unwrap(), "first", "skip revoked nothing");
    assert_eq!(registry.names(), vec![("svc".into(), "1.0".into())]);

    // Replace does not check the version (that is what `replace` is for).
    let _third = registry
        .serve_with("svc", "2.0", named("third"), IfExists::Replace)
        .unwrap();
    let r = who(&cap).await;
    assert!(
        matches!(&r, Err(s) if s.reason == Some(Reason::REVOKED)),
        "{r:?}"
    );
    let cap = p.client.bootstrap("svc", Some("2.0")).await.unwrap();
    assert_eq!(who(&cap).await.unwrap(), "third");
    drop(first);
    assert_eq!(who(&cap).await.unwrap(), "third");
}

#[tokio::test]
async fn the_capwire_prefix_is_reserved() {
    let registry = Registry::new();
    for if_exists in [IfExists::Throw, IfExists::Replace, IfExists::Skip] {
        let err = registry
            .serve_with("capwire.runtime", "1.0", named("x"), if_exists)
            .expect_err("reserved");
        assert_eq!(err.code, Code::InvalidArgument);
        assert_eq!(err.reason, Some(Reason::RESERVED_NAMESPACE));
    }
    let err = registry
        .replace("capwire.runtime", "1.0", Methods::new("x"))
        .expect_err("reserved");
    assert_eq!(err.reason, Some(Reason::RESERVED_NAMESPACE), "{err}");
    assert!(registry.names().is_empty());
}

#[tokio::test]
async fn serve_all_is_atomic() {
    let registry = Registry::new();
    let _taken = registry
        .serve_with("taken", "1.0", named("taken"), IfExists::Throw)
        .unwrap();
    let batch = |names: &[&str]| -> Vec<(String, String, Arc<dyn Object>)> {
        names
            .iter()
            .map(|n| (n.to_string(), "1.0".to_string(), named("batch")))
            .collect()
    };
    for (names, reason) in [
        (&["a", "capwire.b", "c"][..], Reason::RESERVED_NAMESPACE),
        (&["a", "b", "a"][..], Reason::NAME_COLLISION),
        (&["a", "taken"][..], Reason::NAME_COLLISION),
    ] {
        let err = registry
            .serve_all(batch(names), IfExists::Throw)
            .expect_err("refused");
        assert_eq!(err.reason, Some(reason), "{names:?}: {err}");
        assert_eq!(
            registry.names(),
            vec![("taken".into(), "1.0".into())],
            "{names:?}: nothing served"
        );
    }
    let handles = registry
        .serve_all(batch(&["a", "b"]), IfExists::Throw)
        .unwrap();
    assert_eq!(registry.names().len(), 3);
    drop(handles);
    assert_eq!(registry.names(), vec![("taken".into(), "1.0".into())]);
}

/// A `release` that crossed the `revoked` on the wire is not a protocol
/// violation: the exporter keeps revoked entries until their count is 0.
#[tokio::test]
async fn a_release_crossing_the_revocation_is_accepted() {
    let (registry, handle, _events) = probe_registry();
    let (session, mut raw) = Raw::handshake(registry, SessionConfig::default()).await;
    let probe = raw.bootstrap(1, "probe").await;
    assert_eq!(session.stats().exports, 1);
    drop(handle);
    match raw.recv().await {
        Some(Frame::Revoked(Revoked { caps })) => assert_eq!(caps, vec![probe]),
        other => panic!("expected revoked, got {other:?}"),
    }
    // The peer had released before it saw the revocation.
    raw.send(Frame::Release(Release { cap: probe, n: 1 })).await;
    raw.call(2, probe, "sleep", serde_json::json!([1])).await;
    let status = raw.error(2).await;
    assert_eq!(status.reason, Some(Reason::REVOKED), "{status}");
    assert_eq!(session.stats().exports, 0);
    // Releasing it again is over the count: a violation.
    raw.send(Frame::Release(Release { cap: probe, n: 1 })).await;
    raw.expect_goaway_and_close(Code::Aborted, Some(Reason::PROTOCOL_VIOLATION))
        .await;
}

/// The importer releases what the exporter revoked, with its full count,
/// and fails later calls locally.
#[tokio::test]
async fn the_importer_releases_revoked_capabilities() {
    let (client, mut raw) = Raw::connect(
        Registry::new(),
        SessionConfig::default(),
        &Default::default(),
    )
    .await;
    raw.send(Frame::Hello(Hello::new())).await;
    let boot = tokio::spawn({
        let client: Session = client.clone();
        async move { client.bootstrap("x", None).await }
    });
    let id = match raw.recv().await {
        Some(Frame::Call(call)) => call.id,
        other => panic!("{other:?}"),
    };
    // Export 9 is introduced twice in the one result.
    raw.send(Frame::Result(CallResult {
        id,
        outcome: Outcome::Ok {
            value: Payload::encode(Codec::Json, &serde_json::json!([{"$cap": 0}, {"$cap": 1}]))
                .unwrap(),
            caps: vec![CapDescriptor::Export(9), CapDescriptor::Export(9)],
        },
    }))
    .await;
    let cap = boot.await.unwrap().expect("bootstrap");
    assert_eq!(cap.remote_id(), Some(9));

    raw.send(Frame::Revoked(Revoked {
        caps: vec![9, 12345],
    }))
    .await;
    match raw.recv().await {
        Some(Frame::Release(r)) => assert_eq!(r, Release { cap: 9, n: 2 }),
        other => panic!("expected the release of 9, got {other:?}"),
    }
    let before = client.stats().frames_out;
    let r = cap.call("x", Value::null()).await;
    assert_status(&r, Code::FailedPrecondition, Some(Reason::REVOKED));
    assert_eq!(client.stats().frames_out, before);
    // Dropping the handle later releases nothing more.
    drop(cap);
    raw.send(Frame::Ping(capwire::proto::Ping { nonce: 1 }))
        .await;
    match raw.recv().await {
        Some(Frame::Pong(_)) => {}
        other => panic!("expected only a pong, got {other:?}"),
    }
}
