//! `capwire demo`: the demo service, a server for it, and a guided tour.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use capwire::dialect::{self, ServeConfig, Served, Server};
use capwire::transport::{self, Address, Listener, TransportConfig};
use capwire::typed::{sink, ItemsOf, Sink, Source};
use capwire::{path, CallOptions, Code, Registry, Session, SessionConfig, Status, Value};
use futures_util::StreamExt;
use tokio::sync::mpsc;

/// The name and version the demo service is served under.
pub(crate) const NAME: &str = "demo";
/// The demo service's version.
pub(crate) const VERSION: &str = "1.0";

/// The demo service: what `capwire demo` tours and `capwire demo serve`
/// serves (the contract the capnweb interop tests rely on).
#[capwire::interface(name = "demo", version = "1.0")]
pub(crate) trait Demo {
    /// `n * n`.
    async fn square(&self, n: i64) -> Result<i64, Status>;
    /// A new counter starting at `start`.
    async fn make_counter(&self, start: i64) -> Result<CounterClient, Status>;
    /// `counter.increment(by)`, for a counter the caller holds.
    async fn increment_counter(&self, counter: CounterClient, by: i64) -> Result<i64, Status>;
    /// Calls `f(10)` and says what it returned.
    async fn call_me_back(&self, f: CallbackClient) -> Result<String, Status>;
    /// `[1, 2, 3]`.
    async fn list_ids(&self) -> Result<Vec<i64>, Status>;
    /// `"user" + id`.
    async fn get_name(&self, id: i64) -> Result<String, Status>;
    /// Always fails: `RangeError`, `bad thing`, code `E_BAD`.
    async fn fail(&self) -> Result<(), Status>;
    /// Returns its argument.
    async fn echo(&self, value: serde_json::Value) -> Result<serde_json::Value, Status>;
    /// `0, 1, …, n - 1` as a stream.
    #[capwire(stream)]
    async fn make_stream(&self, n: u64) -> Result<ItemsOf<u64>, Status>;
    /// Writes `"a"`, `"b"`, `"c"` to the caller's sink, ends it, returns `"done"`.
    async fn write_to(&self, writable: Sink<String>) -> Result<String, Status>;
    /// Sleeps `ms` milliseconds (the tour cancels it, and times it out).
    async fn sleep(&self, ms: u64) -> Result<String, Status>;
    /// Reads the caller's stream to its end and returns its items.
    async fn collect(
        &self,
        stream: Source<serde_json::Value>,
    ) -> Result<Vec<serde_json::Value>, Status>;
}

/// A counter.
#[capwire::interface(version = "1.0")]
pub(crate) trait Counter {
    /// Adds `by`, returns the new value.
    async fn increment(&self, by: i64) -> Result<i64, Status>;
    /// The current value.
    async fn value(&self) -> Result<i64, Status>;
}

/// A function the caller passes (`callMeBack`).
#[capwire::interface(version = "1.0")]
pub(crate) trait Callback {
    /// Calls the function.
    async fn call(&self, arg: serde_json::Value) -> Result<serde_json::Value, Status>;
}

struct CountImpl(AtomicI64);

impl Counter for CountImpl {
    async fn increment(&self, by: i64) -> Result<i64, Status> {
        Ok(self.0.fetch_add(by, Ordering::SeqCst) + by)
    }
    async fn value(&self) -> Result<i64, Status> {
        Ok(self.0.load(Ordering::SeqCst))
    }
}

/// The demo's implementation. `cancelled` receives the name of each handler
/// that was stopped before it finished.
pub(crate) struct DemoImpl {
    cancelled: mpsc::UnboundedSender<String>,
}

impl Demo for DemoImpl {
    async fn square(&self, n: i64) -> Result<i64, Status> {
        n.checked_mul(n)
            .ok_or_else(|| Status::new(Code::InvalidArgument, "square overflows i64"))
    }
    async fn make_counter(&self, start: i64) -> Result<CounterClient, Status> {
        Ok(CounterClient::from_impl(CountImpl(AtomicI64::new(start))))
    }
    async fn increment_counter(&self, counter: CounterClient, by: i64) -> Result<i64, Status> {
        counter.increment(by).await
    }
    async fn call_me_back(&self, f: CallbackClient) -> Result<String, Status> {
        let r = f.call(serde_json::json!(10)).await?;
        Ok(format!("callback returned {r}"))
    }
    async fn list_ids(&self) -> Result<Vec<i64>, Status> {
        Ok(vec![1, 2, 3])
    }
    async fn get_name(&self, id: i64) -> Result<String, Status> {
        Ok(format!("user{id}"))
    }
    async fn fail(&self) -> Result<(), Status> {
        Err(Status::new(Code::InvalidArgument, "bad thing")
            .with_details(serde_json::json!({ "name": "RangeError", "code": "E_BAD" })))
    }
    async fn echo(&self, value: serde_json::Value) -> Result<serde_json::Value, Status> {
        Ok(value)
    }
    async fn make_stream(&self, n: u64) -> Result<ItemsOf<u64>, Status> {
        Ok(futures_util::stream::iter((0..n).map(Ok)).boxed())
    }
    async fn write_to(&self, writable: Sink<String>) -> Result<String, Status> {
        let mut writer = writable.writer();
        for item in ["a", "b", "c"] {
            writer.send(&item.to_owned()).await?;
        }
        writer.end().await?;
        Ok("done".to_owned())
    }
    async fn collect(
        &self,
        stream: Source<serde_json::Value>,
    ) -> Result<Vec<serde_json::Value>, Status> {
        stream.read().collect_all().await
    }
    async fn sleep(&self, ms: u64) -> Result<String, Status> {
        // A stopped handler is dropped where it waits; the guard reports it.
        let mut guard = StopReport {
            to: self.cancelled.clone(),
            finished: false,
        };
        tokio::time::sleep(Duration::from_millis(ms)).await;
        guard.finished = true;
        Ok("slept".to_owned())
    }
}

/// The demo service, ready to serve.
pub(crate) fn service(cancelled: mpsc::UnboundedSender<String>) -> DemoServer<DemoImpl> {
    DemoServer::new(DemoImpl { cancelled })
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

/// Accepts connections on `listener` forever, each served in the dialect its
/// peer speaks (capwire/1, or capnweb with the demo as its main object).
pub(crate) async fn serve(listener: Listener, registry: Registry) -> anyhow::Result<()> {
    Ok(dialect::serve_forever(listener, registry, serve_config()).await?)
}

/// How the demo is served: capnweb peers get the demo as their main
/// object, JSON-RPC peers the demo's JSON-RPC face.
fn serve_config() -> ServeConfig {
    let mut config = ServeConfig::default();
    config.capnweb_main = Some(NAME.to_owned());
    config.jsonrpc = crate::demo_rpc::config();
    config
}

/// `capwire demo serve`: serves the demo until interrupted. `stdio:` serves
/// one session on this process's stdin and stdout, in the dialect of the
/// peer's first message, until the peer closes it.
pub(crate) async fn serve_forever(
    listen: &Address,
    transport_config: TransportConfig,
    token: Option<String>,
) -> anyhow::Result<()> {
    let mut config = serve_config();
    config.tokens = token.map(|t| capwire::auth::Tokens::new().with(t, "client"));
    let registry = Registry::new();
    let (tx, _rx) = mpsc::unbounded_channel();
    registry.serve_interface(service(tx))?.forget();
    if matches!(listen, Address::Stdio) {
        eprintln!("serving \"{NAME}\" v{VERSION} on stdio");
        let transport = transport::stdio(&transport_config);
        match dialect::serve(transport, registry, config).await? {
            Served::Native(session) => {
                let status = session.closed().await;
                tracing::info!(%status, "stdio session ended");
            }
            Served::JsonRpc(session) => session.closed().await,
            Served::Capnweb(session) => {
                session.closed().await;
            }
        }
        return Ok(());
    }
    let listener = Listener::bind(listen, transport_config).await?;
    outln!("serving \"{NAME}\" v{VERSION} on {}", listener.local_addr());
    let grace = config.session.close_grace;
    let server = Server::start(listener, registry, config);
    capwire::dialect::shutdown_signal().await?;
    eprintln!(
        "shutting down: no new connections; calls in flight get up to {} s",
        grace.as_secs_f64()
    );
    server.shutdown().await;
    Ok(())
}

/// A result as the tour prints it: the value as JSON, or the error.
fn show<T: serde::Serialize>(r: &Result<T, Status>) -> String {
    match r {
        Ok(v) => serde_json::to_string(v).unwrap_or_else(|e| format!("<{e}>")),
        Err(s) => format!("error {s}"),
    }
}

/// The tour's own callback: `f(n) = n + 1`.
struct PlusOne;

impl Callback for PlusOne {
    async fn call(&self, arg: serde_json::Value) -> Result<serde_json::Value, Status> {
        let n = arg
            .as_i64()
            .ok_or_else(|| Status::new(Code::InvalidArgument, "expected a number"))?;
        outln!("                    (client) our callback was called with {n}");
        Ok(serde_json::json!(n + 1))
    }
}

/// `capwire demo`: a server and a client in one process, over a real socket.
pub(crate) async fn tour(listen: &Address) -> anyhow::Result<()> {
    let registry = Registry::new();
    let (cancel_tx, mut cancel_rx) = mpsc::unbounded_channel();
    let serving = registry.serve_interface(service(cancel_tx))?;
    let listener = Listener::bind(listen, TransportConfig::default()).await?;
    let addr = listener.local_addr().clone();
    outln!("capwire demo: server and client in one process, over {addr}\n");
    tokio::spawn(serve(listener, registry.clone()));

    let session = Session::new(
        transport::connect(&addr, &TransportConfig::default()).await?,
        Registry::new(),
        SessionConfig::default(),
    );
    let rtt = session.ping().await?;
    outln!("connected           ping round trip {} µs", rtt.as_micros());

    let demo = DemoClient::bootstrap(&session).await?;
    outln!("bootstrap           \"{NAME}\" v{VERSION} -> a typed DemoClient");
    let wrong = session.bootstrap(NAME, Some("2.0")).await.map(|_| ());
    outln!("bootstrap v2.0      {}", show(&wrong));

    let t = Instant::now();
    let r = demo.square(7).await;
    outln!(
        "call                square(7) = {}   ({} µs)",
        show(&r),
        t.elapsed().as_micros()
    );

    let counter = demo.make_counter(5).await?;
    let a = counter.increment(2).await;
    let b = counter.increment(3).await;
    outln!(
        "returned capability makeCounter(5) -> counter; increment(2) = {}, increment(3) = {}",
        show(&a),
        show(&b)
    );
    let c = demo.increment_counter(counter.clone(), 10).await;
    outln!("passed back         incrementCounter(counter, 10) = {}  (the server called its own object)", show(&c));

    // Pipelining: the second call goes out before the first has answered.
    let t = Instant::now();
    let frames = session.stats().frames_in;
    let r = demo.make_counter(100).increment(1).await;
    outln!(
        "pipelining          makeCounter(100).increment(1) = {}  (2 calls, 1 round trip, {} µs, {} frames back)",
        show(&r),
        t.elapsed().as_micros(),
        session.stats().frames_in - frames
    );
    let untyped = session.bootstrap(NAME, Some(VERSION)).await?;
    let ids = untyped.call("listIds", Value::null());
    let r = ids
        .get(path![0usize])
        .call("x", Value::null())
        .await
        .map(|_| ());
    outln!(
        "                    listIds()[0].x() -> {}  (a path must lead to a capability)",
        show(&r)
    );

    let items: Vec<String> = demo.make_stream(5).map(|item| show(&item)).collect().await;
    outln!(
        "stream              makeStream(5) -> {}  (credit window 32)",
        items.join(", ")
    );

    let (out, received) = sink::<String>(32);
    let r = demo.write_to(out).await;
    let written: Vec<String> = received.map(|item| show(&item)).collect().await;
    outln!(
        "sink                writeTo(sink) = {}; the sink got {}",
        show(&r),
        written.join(", ")
    );

    let r = demo.call_me_back(CallbackClient::from_impl(PlusOne)).await;
    outln!("callback            callMeBack(fn) = {}", show(&r));

    let r = demo.fail().await;
    outln!("error               fail() -> {}", show(&r));

    let slow = demo.sleep(10_000);
    let r = tokio::time::timeout(Duration::from_millis(50), slow).await;
    let seen = tokio::time::timeout(Duration::from_secs(2), cancel_rx.recv()).await;
    outln!(
        "cancellation        sleep(10000) dropped after 50 ms ({}); server handler stopped: {}",
        if r.is_err() {
            "caller gave up"
        } else {
            "finished?"
        },
        matches!(seen, Ok(Some(_)))
    );

    let r = untyped
        .call_with(
            "sleep",
            Value::new(&(1_000,))?,
            CallOptions::timeout(Duration::from_millis(100)),
        )
        .await
        .map(|_| ());
    outln!(
        "deadline            sleep(1000) with a 100 ms deadline -> {}",
        show(&r)
    );

    drop(serving);
    let before = session.stats().frames_out;
    let wait = Instant::now();
    let mut r = demo.square(2).await;
    while r.is_ok() && wait.elapsed() < Duration::from_secs(2) {
        tokio::task::yield_now().await;
        r = demo.square(2).await;
    }
    let sent = session.stats().frames_out - before;
    outln!(
        "revocation          server unserved \"{NAME}\"; square(2) -> {}  ({} frames sent)",
        show(&r),
        sent
    );
    let r = demo.square(3).await;
    let again = session.stats().frames_out;
    outln!(
        "                    and again -> {}  (failed locally: {})",
        show(&r),
        session.stats().frames_out == again
    );

    let stats = session.stats();
    let calls: Vec<String> = stats
        .calls
        .iter()
        .map(|(code, n)| format!("{code} {n}"))
        .collect();
    outln!(
        "\nclient stats        {} frames / {} bytes out, {} frames / {} bytes in; calls: {}",
        stats.frames_out,
        stats.bytes_out,
        stats.frames_in,
        stats.bytes_in,
        calls.join(", ")
    );
    session.close().await;
    outln!("closed");
    Ok(())
}
