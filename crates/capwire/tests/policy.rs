//! The bootstrap policy: denials, failing and panicking policies, and the
//! attestation a policy decides on (docs/architecture.md, "Bootstrap and revocation").

mod common;

use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};

use capwire::attestation::{Attestation, TransportKind};
use capwire::policy::{policy_fn, BootstrapRequest, Decision, Policy};
use capwire::{Code, Reason, SessionConfig, Value};
use common::*;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;

fn with_policy(policy: Arc<dyn Policy>) -> SessionConfig {
    SessionConfig::default().policy(policy)
}

async fn square(p: &Pair) -> Result<i64, capwire::Status> {
    let demo = p.client.bootstrap("demo", None).await?;
    demo.call("square", Value::new(&(3,))?).await?.decode()
}

#[tokio::test]
async fn a_denial_is_permission_denied_unauthorized() {
    let (registry, _h) = demo_registry();
    let _other = registry.serve("other", "1.0", counter(0)).unwrap();
    let policy = policy_fn(|req| {
        Ok(if req.name == "other" {
            Decision::Allow
        } else {
            Decision::Deny(format!("no {} for you", req.name))
        })
    });
    let p = pair_with(
        Kind::Mem,
        registry,
        with_policy(policy),
        SessionConfig::default(),
    )
    .await;
    let err = square(&p).await.expect_err("denied");
    assert_eq!(err.code, Code::PermissionDenied);
    assert_eq!(err.reason, Some(Reason::UNAUTHORIZED));
    assert_eq!(err.message, "no demo for you");
    assert!(p.client.bootstrap("other", None).await.is_ok());
    assert_eq!(p.server.stats().exports, 1, "only `other` was exported");
}

#[tokio::test]
async fn a_failing_policy_denies_with_internal() {
    let (registry, _h) = demo_registry();
    let policy = policy_fn(|_| Err("the policy store is down".into()));
    let p = pair_with(
        Kind::Mem,
        registry,
        with_policy(policy),
        SessionConfig::default(),
    )
    .await;
    let err = square(&p).await.expect_err("denied");
    assert_eq!(err.code, Code::Internal);
    assert!(
        !err.message.contains("policy store"),
        "the policy's error stays on the server: {err}"
    );
}

/// Panics in the policy call itself and in the future it returns.
struct Panicky {
    calls: Mutex<u32>,
}

impl Policy for Panicky {
    fn decide(&self, request: BootstrapRequest) -> BoxFuture<'static, Result<Decision, String>> {
        let n = {
            let mut calls = self.calls.lock().unwrap();
            *calls += 1;
            *calls
        };
        match n {
            1 => panic!("policy bug in decide"),
            2 => async { panic!("policy bug in the future") }.boxed(),
            _ => async move {
                assert_eq!(request.name, "demo");
                Ok(Decision::Allow)
            }
            .boxed(),
        }
    }
}

#[tokio::test]
async fn a_panicking_policy_denies_with_internal_and_the_session_keeps_working() {
    let (registry, _h) = demo_registry();
    let policy = Arc::new(Panicky {
        calls: Mutex::new(0),
    });
    let p = pair_with(
        Kind::Mem,
        registry,
        with_policy(policy),
        SessionConfig::default(),
    )
    .await;
    for _ in 0..2 {
        let err = square(&p).await.expect_err("denied");
        assert_eq!(err.code, Code::Internal, "{err}");
    }
    assert_eq!(square(&p).await.unwrap(), 9, "third time allowed");
    assert!(p.client.ping().await.is_ok());
    assert!(p.server.ping().await.is_ok());
}

fn recording() -> (Arc<dyn Policy>, Arc<Mutex<Vec<BootstrapRequest>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let policy = policy_fn(move |req| {
        log.lock().unwrap().push(req.clone());
        Ok(Decision::Allow)
    });
    (policy, seen)
}

#[tokio::test]
async fn the_policy_sees_the_unix_peer_credentials() {
    let (registry, _h) = demo_registry();
    let (policy, seen) = recording();
    let p = pair_with(
        Kind::Unix,
        registry,
        with_policy(policy),
        SessionConfig::default(),
    )
    .await;
    // This process's uid, as the file system reports it for a file we created.
    let file = tempfile::NamedTempFile::new().unwrap();
    let uid = std::fs::metadata(file.path()).unwrap().uid();
    let gid = std::fs::metadata(file.path()).unwrap().gid();

    let demo = p.client.bootstrap("demo", Some("1.0")).await.unwrap();
    drop(demo);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let req = &seen[0];
    assert_eq!(req.name, "demo");
    assert_eq!(req.version.as_deref(), Some("1.0"));
    let att: &Attestation = &req.attestation;
    assert_eq!(att.transport, TransportKind::Unix);
    let unix = att.unix.expect("SO_PEERCRED credentials");
    assert_eq!(unix.uid, uid);
    assert_eq!(unix.gid, gid);
    assert_eq!(unix.pid, Some(std::process::id() as i32));
    assert_eq!(att.identity, None, "no token, no identity");
    assert_eq!(p.server.attestation(), att);
}

#[tokio::test]
async fn the_policy_sees_the_transport_kind_and_address() {
    for (kind, transport) in [
        (Kind::Mem, TransportKind::Memory),
        (Kind::Tcp, TransportKind::Tcp),
        (Kind::Ws, TransportKind::WebSocket),
    ] {
        let (registry, _h) = demo_registry();
        let (policy, seen) = recording();
        let p = pair_with(
            kind,
            registry,
            with_policy(policy),
            SessionConfig::default(),
        )
        .await;
        p.client.bootstrap("demo", None).await.unwrap();
        let seen = seen.lock().unwrap().clone();
        let att = &seen[0].attestation;
        assert_eq!(att.transport, transport, "{kind:?}");
        assert_eq!(att.unix, None);
        if kind != Kind::Mem {
            let addr = att.peer_addr.as_deref().expect("peer address");
            assert!(addr.starts_with("127.0.0.1:"), "{kind:?}: {addr}");
        }
    }
}

/// The policy is asked only for names that exist at the version asked for;
/// it is not asked again for calls on a capability it allowed.
#[tokio::test]
async fn the_policy_decides_bootstraps_only() {
    let (registry, _h) = demo_registry();
    let (policy, seen) = recording();
    let p = pair_with(
        Kind::Mem,
        registry,
        with_policy(policy),
        SessionConfig::default(),
    )
    .await;
    assert_eq!(square(&p).await.unwrap(), 9);
    assert_eq!(square(&p).await.unwrap(), 9);
    assert_eq!(seen.lock().unwrap().len(), 2);
}
