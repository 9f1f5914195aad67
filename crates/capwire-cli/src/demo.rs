//! `capwire demo`: the demo service, a server for it, and a guided tour.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use capwire::transport::{self, Address, Listener, TransportConfig};
use capwire::{
    path, sink, CallOptions, Capability, Code, Methods, Registry, Session, SessionConfig,
    SinkWriter, Status, Value,
};
use futures_util::StreamExt;
use tokio::sync::mpsc;

/// The name and version the demo service is served under.
pub(crate) const NAME: &str = "demo";
/// The demo service's version.
pub(crate) const VERSION: &str = "1.0";

fn counter(start: i64) -> Methods {
    let value = Arc::new(AtomicI64::new(start));
    let read = value.clone();
    Methods::new("Counter")
        .method("increment", move |args: Value, _ctx| {
            let value = value.clone();
            async move {
                let (by,): (i64,) = args.decode()?;
                Value::new(&(value.fetch_add(by, Ordering::SeqCst) + by))
            }
        })
        .method("value", move |_args, _ctx| {
            let v = read.load(Ordering::SeqCst);
            async move { Value::new(&v) }
        })
}

/// The demo service. `cancelled` receives the name of each handler that saw
/// its call cancelled or stopped.
pub(crate) fn service(cancelled: mpsc::UnboundedSender<String>) -> Methods {
    Methods::new("Demo")
        .method("square", |args: Value, _ctx| async move {
            let (n,): (i64,) = args.decode()?;
            n.checked_mul(n)
                .ok_or_else(|| Status::new(Code::InvalidArgument, "square overflows i64"))
                .and_then(|sq| Value::new(&sq))
        })
        .method("makeCounter", |args: Value, ctx| async move {
            let (start,): (i64,) = args.decode()?;
            Ok(Value::capability(ctx.export(counter(start))))
        })
        .method("incrementCounter", |args: Value, _ctx| async move {
            let counter = args.cap(0)?;
            let (_, by): (serde_json::Value, i64) = args.decode()?;
            counter.call("increment", Value::new(&(by,))?).await
        })
        .method("callMeBack", |args: Value, _ctx| async move {
            let f = args.cap(0)?;
            let r: serde_json::Value = f.call("call", Value::new(&(10,))?).await?.decode()?;
            Value::new(&format!("callback returned {r}"))
        })
        .method(
            "listIds",
            |_args, _ctx| async move { Value::new(&[1, 2, 3]) },
        )
        .method("getName", |args: Value, _ctx| async move {
            let (id,): (i64,) = args.decode()?;
            Value::new(&format!("user{id}"))
        })
        .method("fail", |_args, _ctx| async move {
            Err::<Value, _>(
                Status::new(Code::InvalidArgument, "bad thing")
                    .with_details(serde_json::json!({ "name": "RangeError", "code": "E_BAD" })),
            )
        })
        .method("echo", |args: Value, _ctx| async move { Ok(args) })
        .stream("makeStream", |args: Value, _ctx| async move {
            let (n,): (u64,) = args.decode()?;
            Ok(futures_util::stream::iter((0..n).map(|i| Value::new(&i))))
        })
        .method("writeTo", |args: Value, _ctx| async move {
            let mut writer = SinkWriter::new(args.cap(0)?);
            for item in ["a", "b", "c"] {
                writer.send(Value::new(item)?).await?;
            }
            writer.end().await?;
            Value::new("done")
        })
        .method("sleep", move |args: Value, _ctx| {
            // A stopped handler is dropped where it waits; the guard reports it.
            let guard = StopReport {
                to: cancelled.clone(),
                finished: false,
            };
            async move {
                let mut guard = guard;
                let (ms,): (u64,) = args.decode()?;
                tokio::time::sleep(Duration::from_millis(ms)).await;
                guard.finished = true;
                Value::new(&"slept")
            }
        })
}

/// Reports a handler that was dropped before it finished.
struct StopReport {
    to: mpsc::UnboundedSender<String>,
    finished: bool,
}

impl Drop for StopReport {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.to.send("sleep".to_owned());
        }
    }
}

/// Accepts connections on `listener` forever, each with its own session on `registry`.
pub(crate) async fn serve(mut listener: Listener, registry: Registry) -> anyhow::Result<()> {
    loop {
        let t = listener.accept().await?;
        tracing::info!(peer = ?t.attestation.peer_addr, "connection");
        let _session = Session::new(t, registry.clone(), SessionConfig::default());
    }
}

/// `capwire demo serve`: serves the demo until interrupted. `stdio:` serves
/// one session on this process's stdin and stdout, until the peer closes it.
pub(crate) async fn serve_forever(listen: &Address) -> anyhow::Result<()> {
    let registry = Registry::new();
    let (tx, _rx) = mpsc::unbounded_channel();
    registry.serve(NAME, VERSION, service(tx))?.forget();
    if matches!(listen, Address::Stdio) {
        eprintln!("serving \"{NAME}\" v{VERSION} on stdio");
        let session = Session::new(
            transport::stdio(&TransportConfig::default()),
            registry,
            SessionConfig::default(),
        );
        let status = session.closed().await;
        tracing::info!(%status, "stdio session ended");
        return Ok(());
    }
    let listener = Listener::bind(listen, TransportConfig::default()).await?;
    println!("serving \"{NAME}\" v{VERSION} on {}", listener.local_addr());
    tokio::select! {
        r = serve(listener, registry) => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

fn show(r: &Result<Value, Status>) -> String {
    match r {
        Ok(v) => v
            .to_json()
            .map(|j| j.to_string())
            .unwrap_or_else(|e| format!("<{e}>")),
        Err(s) => format!("error {s}"),
    }
}

/// `capwire demo`: a server and a client in one process, over a real socket.
pub(crate) async fn tour(listen: &Address) -> anyhow::Result<()> {
    let registry = Registry::new();
    let (cancel_tx, mut cancel_rx) = mpsc::unbounded_channel();
    let serving = registry.serve(NAME, VERSION, service(cancel_tx))?;
    let listener = Listener::bind(listen, TransportConfig::default()).await?;
    let addr = listener.local_addr().clone();
    println!("capwire demo: server and client in one process, over {addr}\n");
    tokio::spawn(serve(listener, registry.clone()));

    let session = Session::new(
        transport::connect(&addr, &TransportConfig::default()).await?,
        Registry::new(),
        SessionConfig::default(),
    );
    let rtt = session.ping().await?;
    println!("connected           ping round trip {} µs", rtt.as_micros());

    let demo = session.bootstrap(NAME, Some(VERSION)).await?;
    println!("bootstrap           \"{NAME}\" v{VERSION} -> a capability");
    let wrong = session
        .bootstrap(NAME, Some("2.0"))
        .await
        .map(|_| Value::null());
    println!("bootstrap v2.0      {}", show(&wrong));

    let t = Instant::now();
    let r = demo.call("square", Value::new(&(7,))?).await;
    println!(
        "call                square(7) = {}   ({} µs)",
        show(&r),
        t.elapsed().as_micros()
    );

    let counter = demo.call("makeCounter", Value::new(&(5,))?).await?.cap(0)?;
    let a = counter.call("increment", Value::new(&(2,))?).await;
    let b = counter.call("increment", Value::new(&(3,))?).await;
    println!(
        "returned capability makeCounter(5) -> counter; increment(2) = {}, increment(3) = {}",
        show(&a),
        show(&b)
    );
    let c = demo
        .call(
            "incrementCounter",
            Value::with_caps(&serde_json::json!([{"$cap": 0}, 10]), vec![counter.clone()])?,
        )
        .await;
    println!("passed back         incrementCounter(counter, 10) = {}  (the server called its own object)", show(&c));

    // Pipelining: the second call goes out before the first has answered.
    let t = Instant::now();
    let frames = session.stats().frames_in;
    let r = demo
        .call("makeCounter", Value::new(&(100,))?)
        .call("increment", Value::new(&(1,))?)
        .await;
    println!(
        "pipelining          makeCounter(100).increment(1) = {}  (2 calls, 1 round trip, {} µs, {} frames back)",
        show(&r),
        t.elapsed().as_micros(),
        session.stats().frames_in - frames
    );
    let nested = demo.call("listIds", Value::null());
    let r = nested.get(path![0usize]).call("x", Value::null()).await;
    println!(
        "                    listIds()[0].x() -> {}  (a path must lead to a capability)",
        show(&r)
    );

    let items: Vec<String> = demo
        .call_stream("makeStream", Value::new(&(5,))?)
        .map(|item| show(&item))
        .collect()
        .await;
    println!(
        "stream              makeStream(5) -> {}  (credit window 32)",
        items.join(", ")
    );

    let (out, received) = sink(32);
    let r = demo.call("writeTo", Value::capability(out)).await;
    let written: Vec<String> = received.map(|item| show(&item)).collect().await;
    println!(
        "sink                writeTo(sink) = {}; the sink got {}",
        show(&r),
        written.join(", ")
    );

    let plus_one = Capability::local(Methods::new("PlusOne").method(
        "call",
        |args: Value, _ctx| async move {
            let (n,): (i64,) = args.decode()?;
            println!("                    (client) our callback was called with {n}");
            Value::new(&(n + 1))
        },
    ));
    let r = demo.call("callMeBack", Value::capability(plus_one)).await;
    println!("callback            callMeBack(fn) = {}", show(&r));

    let r = demo.call("fail", Value::null()).await;
    println!("error               fail() -> {}", show(&r));

    let slow = demo.call("sleep", Value::new(&(10_000,))?);
    let r = tokio::time::timeout(Duration::from_millis(50), slow).await;
    let seen = tokio::time::timeout(Duration::from_secs(2), cancel_rx.recv()).await;
    println!(
        "cancellation        sleep(10000) dropped after 50 ms ({}); server handler stopped: {}",
        if r.is_err() {
            "caller gave up"
        } else {
            "finished?"
        },
        matches!(seen, Ok(Some(_)))
    );

    let r = demo
        .call_with(
            "sleep",
            Value::new(&(1_000,))?,
            CallOptions::timeout(Duration::from_millis(100)),
        )
        .await;
    println!(
        "deadline            sleep(1000) with a 100 ms deadline -> {}",
        show(&r)
    );

    drop(serving);
    let before = session.stats().frames_out;
    let wait = Instant::now();
    let mut r = demo.call("square", Value::new(&(2,))?).await;
    while r.is_ok() && wait.elapsed() < Duration::from_secs(2) {
        tokio::task::yield_now().await;
        r = demo.call("square", Value::new(&(2,))?).await;
    }
    let sent = session.stats().frames_out - before;
    println!(
        "revocation          server unserved \"{NAME}\"; square(2) -> {}  ({} frames sent)",
        show(&r),
        sent
    );
    let r = demo.call("square", Value::new(&(3,))?).await;
    let again = session.stats().frames_out;
    println!(
        "                    and again -> {}  (failed locally: {})",
        show(&r),
        session.stats().frames_out == again
    );

    let stats = session.stats();
    println!(
        "\nclient stats        {} frames / {} bytes out, {} frames / {} bytes in, calls {:?}",
        stats.frames_out, stats.bytes_out, stats.frames_in, stats.bytes_in, stats.calls
    );
    session.close().await;
    println!("closed");
    Ok(())
}
