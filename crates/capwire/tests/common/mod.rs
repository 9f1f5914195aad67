//! Shared test fixtures: session pairs over every transport and a demo service.
#![allow(dead_code, unreachable_pub)]

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use capwire::proto::Codec;
use capwire::transport::{self, memory_pair, Address, Listener, TransportConfig};
use capwire::{Capability, Code, Methods, Registry, Session, SessionConfig, Status, Value};

/// Transports a session pair can run over.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    Mem,
    Tcp,
    Unix,
    Ws,
}

pub const ALL: [Kind; 4] = [Kind::Mem, Kind::Tcp, Kind::Unix, Kind::Ws];

/// A connected client/server session pair; `registry` is served by the server.
pub struct Pair {
    pub client: Session,
    pub server: Session,
    _dir: tempfile::TempDir,
}

pub async fn pair_with(
    kind: Kind,
    registry: Registry,
    server_config: SessionConfig,
    client_config: SessionConfig,
) -> Pair {
    let dir = tempfile::tempdir().expect("tempdir");
    let tc = TransportConfig::default();
    let (c, s) = match kind {
        Kind::Mem => memory_pair(&tc),
        _ => {
            let addr: Address = match kind {
                Kind::Tcp => "tcp://127.0.0.1:0".parse().expect("addr"),
                Kind::Unix => Address::Unix(dir.path().join("s.sock")),
                Kind::Ws => "ws://127.0.0.1:0/".parse().expect("addr"),
                Kind::Mem => unreachable!(),
            };
            let mut l = Listener::bind(&addr, tc.clone()).await.expect("bind");
            let c = transport::connect(l.local_addr(), &tc)
                .await
                .expect("connect");
            let s = l.accept().await.expect("accept");
            (c, s)
        }
    };
    let server = Session::new(s, registry, server_config);
    let client = Session::new(c, Registry::new(), client_config);
    Pair {
        client,
        server,
        _dir: dir,
    }
}

pub async fn pair(kind: Kind, registry: Registry) -> Pair {
    pair_with(
        kind,
        registry,
        SessionConfig::default(),
        SessionConfig::default(),
    )
    .await
}

pub fn json_config() -> SessionConfig {
    SessionConfig::default().codec(Codec::Json)
}

/// A counter object.
pub fn counter(start: i64) -> Methods {
    let value = Arc::new(AtomicI64::new(start));
    let v2 = value.clone();
    Methods::new("Counter")
        .method("increment", move |args: Value, _ctx| {
            let value = value.clone();
            async move {
                let (by,): (i64,) = args.decode()?;
                Value::new(&(value.fetch_add(by, Ordering::SeqCst) + by))
            }
        })
        .method("value", move |_args, _ctx| {
            let v = v2.load(Ordering::SeqCst);
            async move { Value::new(&v) }
        })
}

/// The demo service used across tests.
pub fn demo() -> Methods {
    Methods::new("Demo")
        .method("square", |args: Value, _ctx| async move {
            let (n,): (i64,) = args.decode()?;
            Value::new(&(n * n))
        })
        .method("makeCounter", |args: Value, ctx| async move {
            let (start,): (i64,) = args.decode()?;
            Ok(Value::capability(ctx.export(counter(start))))
        })
        .method("callMeBack", |args: Value, _ctx| async move {
            let f = args.cap(0)?;
            let r = f.call("call", Value::new(&(10,))?).await?;
            let r: serde_json::Value = r.decode()?;
            Value::new(&format!("callback returned {r}"))
        })
        .method("echoCap", |args: Value, _ctx| async move {
            Ok(Value::capability(args.cap(0)?))
        })
        .method("fail", |_args, _ctx| async move {
            Err::<Value, _>(Status::new(Code::InvalidArgument, "bad thing"))
        })
        .method("echo", |args: Value, _ctx| async move { Ok(args) })
}

pub fn demo_registry() -> (Registry, capwire::ServeHandle) {
    let registry = Registry::new();
    let handle = registry.serve("demo", "1.0", demo()).expect("serve");
    (registry, handle)
}

/// A local capability with one method, `call(n) -> n + 1`.
pub fn plus_one() -> Capability {
    Capability::local(
        Methods::new("PlusOne").method("call", |args: Value, _ctx| async move {
            let (n,): (i64,) = args.decode()?;
            Value::new(&(n + 1))
        }),
    )
}
