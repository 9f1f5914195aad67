//! Bad input on every operation gets a clear status with a reason, and
//! changes nothing: unknown endpoints, wrong pids, forbidden metadata,
//! oversize messages, full queues, a full inbox, missing or wrong tokens.

use capwire::{Code, Status};
use capwire_broker::daemon::{Daemon, DaemonConfig};
use capwire_broker::{Client, Limits};
use serde_json::json;

fn reason(s: &Status) -> Option<&str> {
    s.reason.as_ref().map(|r| r.as_str())
}

#[tokio::test]
async fn every_operation_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = DaemonConfig::new(dir.path());
    let mut limits = Limits::default();
    limits.max_queue_messages = 2;
    limits.max_message_bytes = 1024;
    limits.max_inbox = 1;
    limits.max_task_hint_chars = 4;
    config.limits = limits;
    let daemon = Daemon::start(config).await.unwrap();
    let d = daemon.discovery().clone();
    let c = Client::connect(&d.unix, &d.token).await.unwrap();
    let api = c.api();
    let pid = std::process::id();
    let reg = |kind: &str| api.register(kind.into(), pid, None, None, None, None, None);
    let empty = reg(" ").await.unwrap_err();
    assert_eq!(
        (empty.code, reason(&empty)),
        (Code::InvalidArgument, Some("kind_required"))
    );
    let a = reg("t").await.unwrap().endpoint_id;
    let b = reg("t").await.unwrap().endpoint_id;

    // Unknown endpoints.
    for err in [
        api.heartbeat(999).await.unwrap_err(),
        api.unregister(999).await.unwrap_err(),
        api.reattach(999, pid).await.unwrap_err(),
        api.send(999, Some(b), None, json!(1), None, None)
            .await
            .unwrap_err(),
        api.ack(999, vec![1]).await.unwrap_err(),
        api.set_task_hint(999, "x".into()).await.unwrap_err(),
    ] {
        assert_eq!(
            (err.code, reason(&err)),
            (Code::NotFound, Some("unknown_endpoint"))
        );
    }
    // A wrong pid.
    let err = api.reattach(a, pid + 1).await.unwrap_err();
    assert_eq!(
        (err.code, reason(&err)),
        (Code::PermissionDenied, Some("reattach_pid_mismatch"))
    );
    // Forbidden metadata.
    let meta = |k: &str, v: serde_json::Value| {
        let mut m = serde_json::Map::new();
        m.insert(k.into(), v);
        Some(m)
    };
    let cases = [
        (
            meta("correlation_id", json!("c")),
            Code::InvalidArgument,
            "correlation_id_forbidden",
        ),
        (
            meta("target_endpoint_id", json!(b)),
            Code::InvalidArgument,
            "target_endpoint_id_forbidden",
        ),
        (
            meta("source_endpoint_id", json!(b)),
            Code::PermissionDenied,
            "source_endpoint_id_mismatch",
        ),
    ];
    for (metadata, code, why) in cases {
        let err = api
            .send(a, Some(b), None, json!(1), None, metadata)
            .await
            .unwrap_err();
        assert_eq!((err.code, reason(&err)), (code, Some(why)));
    }
    // Its own id as source is fine.
    api.send(
        a,
        Some(b),
        None,
        json!(1),
        None,
        meta("source_endpoint_id", json!(a)),
    )
    .await
    .unwrap();
    // Oversize.
    let err = api
        .send(a, Some(b), None, json!("x".repeat(2000)), None, None)
        .await
        .unwrap_err();
    assert_eq!(
        (err.code, reason(&err)),
        (Code::ResourceExhausted, Some("max_message_bytes"))
    );
    // Queue full (the bound is 2; one is queued).
    api.send(a, Some(b), None, json!(2), None, None)
        .await
        .unwrap();
    let err = api
        .send(a, Some(b), None, json!(3), None, None)
        .await
        .unwrap_err();
    assert_eq!(
        (err.code, reason(&err)),
        (Code::ResourceExhausted, Some("queue_full"))
    );
    // Inbox full (the bound is 1).
    api.send(a, Some(777), None, json!(4), None, None)
        .await
        .unwrap();
    let err = api
        .send(a, Some(777), None, json!(5), None, None)
        .await
        .unwrap_err();
    assert_eq!(
        (err.code, reason(&err)),
        (Code::ResourceExhausted, Some("inbox_full"))
    );
    // Task hints are cut, and the caller is told.
    let hint = api.set_task_hint(a, "abcdefgh".into()).await.unwrap();
    assert_eq!((hint.task_hint.as_str(), hint.truncated), ("abcd", true));
    // A window out of range; a second receiver; acks of undelivered messages.
    use futures_util::StreamExt;
    let err = api.receive(b, Some(0)).next().await.unwrap().unwrap_err();
    assert_eq!(reason(&err), Some("bad_window"));
    let mut first = api.receive(b, None);
    first.next().await.unwrap().unwrap();
    let err = api.receive(b, None).next().await.unwrap().unwrap_err();
    assert_eq!(
        (err.code, reason(&err)),
        (Code::AlreadyExists, Some("receiver_attached"))
    );
    let acked = api.ack(a, vec![1, 2, 3]).await.unwrap();
    assert_eq!((acked.acked, acked.ignored), (0, vec![1, 2, 3]));
    // Closed endpoints refuse everything but a look.
    api.unregister(a).await.unwrap();
    let err = api
        .send(a, Some(b), None, json!(1), None, None)
        .await
        .unwrap_err();
    assert_eq!(
        (err.code, reason(&err)),
        (Code::FailedPrecondition, Some("endpoint_not_active"))
    );
    let err = api.reattach(a, pid).await.unwrap_err();
    assert_eq!(reason(&err), Some("endpoint_closed"));
    daemon.shutdown().await;
}

#[tokio::test]
async fn a_missing_or_wrong_token_gets_unauthenticated_on_every_listener() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(DaemonConfig::new(dir.path())).await.unwrap();
    let d = daemon.discovery().clone();
    for address in [&d.unix, &d.ws] {
        for token in ["", "wrong", &d.token[..d.token.len() - 1]] {
            let err = Client::connect(address, token).await.unwrap_err();
            assert_eq!(err.code, Code::Unauthenticated, "{address} with {token:?}");
        }
        Client::connect(address, &d.token).await.unwrap();
    }
    // The discovery file and the store are the user's alone.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        for file in ["broker.json", "broker.redb", "broker.sock"] {
            let mode = std::fs::metadata(dir.path().join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{file} is {mode:o}");
        }
    }
    // A second broker on the same directory refuses to start.
    let second = Daemon::start(DaemonConfig::new(dir.path())).await;
    assert!(second.is_err());
    daemon.shutdown().await;
}
