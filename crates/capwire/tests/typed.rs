//! Typed interfaces end to end: `#[capwire::interface]` clients and servers
//! over real transports, typed pipelining, capabilities in values, streams,
//! sinks, schemas.
#![allow(missing_docs)]

mod common;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use capwire::typed::{sink, ItemsOf, Sink};
use capwire::{Code, Registry, Status};
use common::*;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Point {
    pub x: f64,
    pub y: f64,
}

#[capwire::interface(name = "calc", version = "2.1")]
pub trait Calc {
    /// Squares a number.
    async fn square(&self, n: i64) -> Result<i64, Status>;
    async fn add(&self, a: i64, b: i64) -> Result<i64, Status>;
    async fn midpoint(&self, a: Point, b: Point) -> Result<Point, Status>;
    /// A counter starting at `start`.
    async fn counter(&self, start: i64) -> Result<CounterClient, Status>;
    /// Adds `by` to a counter the caller holds (maybe a promise).
    async fn bump(&self, counter: CounterClient, by: i64) -> Result<i64, Status>;
    /// Several counters inside one value.
    async fn pair(&self) -> Result<Vec<CounterClient>, Status>;
    #[capwire(stream)]
    async fn count(&self, n: u64) -> Result<ItemsOf<u64>, Status>;
    /// A sink the caller writes numbers into; `total` reports their sum.
    async fn summer(&self) -> Result<Sink<i64>, Status>;
    #[capwire(idempotent)]
    async fn total(&self) -> Result<i64, Status>;
    async fn fail(&self) -> Result<(), Status>;
    #[capwire(name = "callBack")]
    async fn call_back(&self, f: CounterClient) -> Result<i64, Status>;
    #[capwire(timeout_ms = 50)]
    async fn slow(&self) -> Result<(), Status>;
}

#[capwire::interface(version = "1.0")]
pub trait Counter {
    async fn increment(&self, by: i64) -> Result<i64, Status>;
    async fn value(&self) -> Result<i64, Status>;
}

struct MyCounter(AtomicI64);

impl Counter for MyCounter {
    async fn increment(&self, by: i64) -> Result<i64, Status> {
        Ok(self.0.fetch_add(by, Ordering::SeqCst) + by)
    }
    async fn value(&self) -> Result<i64, Status> {
        Ok(self.0.load(Ordering::SeqCst))
    }
}

#[derive(Default)]
struct MyCalc {
    total: Arc<AtomicI64>,
}

impl Calc for MyCalc {
    async fn square(&self, n: i64) -> Result<i64, Status> {
        n.checked_mul(n)
            .ok_or_else(|| Status::new(Code::InvalidArgument, "overflow"))
    }
    async fn add(&self, a: i64, b: i64) -> Result<i64, Status> {
        Ok(a + b)
    }
    async fn midpoint(&self, a: Point, b: Point) -> Result<Point, Status> {
        Ok(Point {
            x: (a.x + b.x) / 2.0,
            y: (a.y + b.y) / 2.0,
        })
    }
    async fn counter(&self, start: i64) -> Result<CounterClient, Status> {
        Ok(CounterClient::from_impl(MyCounter(AtomicI64::new(start))))
    }
    async fn bump(&self, counter: CounterClient, by: i64) -> Result<i64, Status> {
        counter.increment(by).await
    }
    async fn pair(&self) -> Result<Vec<CounterClient>, Status> {
        Ok(vec![
            CounterClient::from_impl(MyCounter(AtomicI64::new(1))),
            CounterClient::from_impl(MyCounter(AtomicI64::new(2))),
        ])
    }
    async fn count(&self, n: u64) -> Result<ItemsOf<u64>, Status> {
        Ok(futures_util::stream::iter((0..n).map(Ok)).boxed())
    }
    async fn summer(&self) -> Result<Sink<i64>, Status> {
        let (sink, mut items) = sink::<i64>(16);
        let total = self.total.clone();
        tokio::spawn(async move {
            while let Some(Ok(n)) = items.next().await {
                total.fetch_add(n, Ordering::SeqCst);
            }
        });
        Ok(sink)
    }
    async fn total(&self) -> Result<i64, Status> {
        Ok(self.total.load(Ordering::SeqCst))
    }
    async fn fail(&self) -> Result<(), Status> {
        Err(Status::new(Code::FailedPrecondition, "nope")
            .with_details(serde_json::json!({"why": "test"})))
    }
    async fn call_back(&self, f: CounterClient) -> Result<i64, Status> {
        // The handler sees its call's context.
        let ctx = capwire::typed::context().expect("inside a handler");
        assert_eq!(ctx.method(), "callBack");
        f.increment(100).await
    }
    async fn slow(&self) -> Result<(), Status> {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Ok(())
    }
}

fn registry() -> (Registry, capwire::ServeHandle) {
    let registry = Registry::new();
    let handle = registry
        .serve_interface(CalcServer::new(MyCalc::default()))
        .expect("serve");
    (registry, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_calls_over_every_transport() {
    for kind in ALL {
        let (registry, _h) = registry();
        let p = pair(kind, registry).await;
        let calc = CalcClient::bootstrap(&p.client).await.expect("bootstrap");
        assert_eq!(calc.square(12).await.unwrap(), 144, "{kind:?}");
        assert_eq!(calc.add(2, 3).await.unwrap(), 5);
        let m = calc
            .midpoint(Point { x: 0.0, y: 0.0 }, Point { x: 2.0, y: 4.0 })
            .await
            .unwrap();
        assert_eq!(m, Point { x: 1.0, y: 2.0 });
        let err = calc.square(i64::MAX).await.unwrap_err();
        assert_eq!(err.code, Code::InvalidArgument);
        let err = calc.fail().await.unwrap_err();
        assert_eq!(err.code, Code::FailedPrecondition);
        assert_eq!(err.details_json(), Some(serde_json::json!({"why": "test"})));
    }
}

/// `calc.counter(5).increment(1)`: typed pipelining, one round trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_pipelining_takes_one_round_trip() {
    let (registry, _h) = registry();
    // A round trip is 200 ms on this link: one takes 200, two 400. The
    // bound sits halfway, so a loaded machine's scheduling delays do not
    // turn one round trip into a failure.
    let (client, _server) = delayed_pair(registry, Duration::from_millis(100));
    let calc = CalcClient::bootstrap(&client).await.unwrap();
    let started = std::time::Instant::now();
    let n = calc.counter(5).increment(1).await.unwrap();
    let took = started.elapsed();
    assert_eq!(n, 6);
    assert!(
        took < Duration::from_millis(300),
        "two pipelined calls took {took:?}"
    );

    // A promised counter as an argument.
    let counter = calc.counter(10);
    assert_eq!(calc.bump(counter.pipeline().clone(), 5).await.unwrap(), 15);
    assert_eq!(counter.value().await.unwrap(), 15);
    let held: CounterClient = counter.await.unwrap();
    assert_eq!(held.increment(1).await.unwrap(), 16);
}

#[tokio::test]
async fn capabilities_inside_values_and_callbacks() {
    let (registry, _h) = registry();
    let p = pair(Kind::Tcp, registry).await;
    let calc = CalcClient::bootstrap(&p.client).await.unwrap();
    let counters = calc.pair().await.unwrap();
    assert_eq!(counters.len(), 2);
    assert_eq!(counters[0].value().await.unwrap(), 1);
    assert_eq!(counters[1].increment(1).await.unwrap(), 3);

    // A local implementation passed to the server and called back.
    let mine = CounterClient::from_impl(MyCounter(AtomicI64::new(0)));
    assert_eq!(calc.call_back(mine.clone()).await.unwrap(), 100);
    assert_eq!(
        mine.value().await.unwrap(),
        100,
        "the server called our object"
    );
}

#[tokio::test]
async fn typed_streams_and_sinks() {
    for kind in ALL {
        let (registry, _h) = registry();
        let p = pair(kind, registry).await;
        let calc = CalcClient::bootstrap(&p.client).await.unwrap();
        let items = calc.count(100).collect_all().await.unwrap();
        assert_eq!(items, (0..100).collect::<Vec<_>>(), "{kind:?}");

        let summer = calc.summer().await.unwrap();
        let mut w = summer.writer();
        for i in 1..=100 {
            w.send(&i).await.unwrap();
        }
        w.end().await.unwrap();
        let mut total = 0;
        for _ in 0..100 {
            total = calc.total().await.unwrap();
            if total == 5050 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(total, 5050, "{kind:?}");
    }
}

#[tokio::test]
async fn default_deadlines_and_wrong_calls() {
    let (registry, _h) = registry();
    let p = pair(Kind::Mem, registry).await;
    let calc = CalcClient::bootstrap(&p.client).await.unwrap();
    let err = calc.slow().await.unwrap_err();
    assert_eq!(err.code, Code::DeadlineExceeded, "timeout_ms = 50 applies");

    // The untyped view of the same object, with wrong arguments.
    let raw = p.client.bootstrap("calc", Some("2.1")).await.unwrap();
    let r = raw
        .call("square", capwire::Value::new(&("seven",)).unwrap())
        .await;
    assert_status(
        &r,
        Code::InvalidArgument,
        Some(capwire::Reason::BAD_ARGUMENTS),
    );
    let r = raw.call("count", capwire::Value::new(&(3,)).unwrap()).await;
    assert_status(&r, Code::InvalidArgument, None);
    let r = raw.call("nope", capwire::Value::null()).await;
    assert_status(&r, Code::Unimplemented, None);
    // Wrong version.
    let err = p.client.bootstrap("calc", Some("1.0")).await.unwrap_err();
    assert_eq!(err.code, Code::FailedPrecondition);
}

#[tokio::test]
async fn the_schema_is_served() {
    let (registry, _h) = registry();
    let p = pair(Kind::Mem, registry).await;
    let schemas: serde_json::Value = p
        .client
        .runtime()
        .call("schemas", capwire::Value::null())
        .await
        .unwrap()
        .decode()
        .unwrap();
    let calc = &schemas[0];
    assert_eq!(calc["name"], "calc");
    assert_eq!(calc["version"], "2.1");
    let schema = &calc["schema"];
    assert_eq!(schema["interface"], "Calc");
    let square = &schema["methods"]["square"];
    assert_eq!(square["kind"], "call");
    assert_eq!(square["params"][0]["name"], "n");
    assert_eq!(square["params"][0]["schema"]["type"], "integer");
    assert_eq!(schema["methods"]["count"]["kind"], "stream");
    assert_eq!(schema["methods"]["total"]["idempotent"], true);
    assert_eq!(schema["methods"]["slow"]["timeout_ms"], 50);
    assert!(
        schema["methods"]["callBack"].is_object(),
        "renamed on the wire"
    );
    assert!(schema["$defs"]["Point"].is_object());
    let counter = &schema["$defs"]["Counter"];
    assert_eq!(counter["x-capwire-interface"], "Counter");
    assert!(counter["x-capwire-methods"]["increment"].is_object());
}

/// The TypeScript declarations for the schema type-check with `tsc`, and a
/// use of them that gets a type wrong is refused.
#[test]
fn typescript_declarations_type_check() {
    let schemas = serde_json::json!([{
        "name": "calc",
        "version": "2.1",
        "schema": capwire::typed::interface_schema::<CalcClient>("calc", "2.1"),
    }]);
    let ts = capwire::typescript::declarations(&schemas);
    for line in [
        "export interface Calc {",
        "  square(n: number): Promise<number>;",
        "  add(a: number, b: number): Promise<number>;",
        "  counter(start: number): Promise<Counter>;",
        "  bump(counter: Counter, by: number): Promise<number>;",
        "  pair(): Promise<Counter[]>;",
        "  count(n: number): Promise<ReadableStream<number>>;",
        "  callBack(f: Counter): Promise<number>;",
        "export interface Counter {",
        "  increment(by: number): Promise<number>;",
        "export interface Point { x: number; y: number }",
    ] {
        assert!(ts.contains(line), "missing `{line}` in:\n{ts}");
    }

    let Some(tsc) = tsc() else { return };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("calc.ts"), &ts).unwrap();
    let good = r#"
import type { Calc, Point } from "./calc";
export async function use(calc: Calc): Promise<number> {
  const n: number = await calc.square(7);
  const counter = await calc.counter(n);
  const p: Point = await calc.midpoint({ x: 0, y: 0 }, { x: 2, y: 2 });
  const items: ReadableStream<number> = await calc.count(3);
  const sink: WritableStream<number> = await calc.summer();
  void items; void sink;
  return (await counter.increment(1)) + p.x;
}
"#;
    std::fs::write(dir.path().join("good.ts"), good).unwrap();
    let out = run_tsc(&tsc, dir.path(), &["calc.ts", "good.ts"]);
    assert!(
        out.status.success(),
        "tsc refused the declarations:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let bad = "import type { Calc } from \"./calc\";\nexport async function f(calc: Calc) { const s: string = await calc.square(7); return s; }\n";
    std::fs::write(dir.path().join("bad.ts"), bad).unwrap();
    let out = run_tsc(&tsc, dir.path(), &["calc.ts", "bad.ts"]);
    assert!(!out.status.success(), "a number is not a string");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("TS2322"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// `tsc` from `interop/node_modules` (installed by `.ci/run`). Missing, it
/// fails the test, unless `CAPWIRE_SKIP_NODE=1` says to skip Node tools.
fn tsc() -> Option<std::path::PathBuf> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../interop/node_modules/.bin/tsc");
    if path.exists() {
        return Some(path);
    }
    if std::env::var_os("CAPWIRE_SKIP_NODE").is_some() {
        eprintln!("skipping the tsc check: CAPWIRE_SKIP_NODE is set");
        return None;
    }
    panic!("TypeScript is not installed: run `npm ci --prefix interop` (as .ci/run does), or set CAPWIRE_SKIP_NODE=1");
}

fn run_tsc(tsc: &std::path::Path, dir: &std::path::Path, files: &[&str]) -> std::process::Output {
    std::process::Command::new(tsc)
        .current_dir(dir)
        .args([
            "--strict",
            "--noEmit",
            "--target",
            "es2022",
            "--module",
            "es2022",
            "--moduleResolution",
            "bundler",
            "--lib",
            "es2022,dom",
        ])
        .args(files)
        .output()
        .expect("run tsc")
}

/// One way to encode a value with capabilities: `Value::new` takes handles
/// anywhere in a value (the dynamic API sends them like the typed one), and
/// `Value::decode` gives them back; `with_caps` refuses handles (it takes
/// placeholders and their table).
#[tokio::test]
async fn value_new_carries_capability_handles() {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Holder {
        label: String,
        counter: CounterClient,
    }
    let (registry, _h) = registry();
    let p = pair(Kind::Tcp, registry).await;
    let calc = CalcClient::bootstrap(&p.client).await.unwrap();
    let mine = CounterClient::from_impl(MyCounter(AtomicI64::new(5)));
    let value = capwire::Value::new(&Holder {
        label: "mine".into(),
        counter: mine.clone(),
    })
    .expect("handles encode inside Value::new");
    assert_eq!(value.caps().len(), 1);
    let back: Holder = value.decode().expect("and decode back");
    assert_eq!(back.label, "mine");
    assert_eq!(back.counter.value().await.unwrap(), 5);
    // Sent through the dynamic API: the server's `bump` gets a working handle.
    let args = capwire::Value::new(&(mine.clone(), 2_i64)).unwrap();
    let bumped = capwire::typed::Client::cap(&calc)
        .call("bump", args)
        .await
        .unwrap();
    assert_eq!(bumped.decode::<i64>().unwrap(), 7);
    let refused = capwire::Value::with_caps(&mine, vec![]);
    assert_eq!(refused.unwrap_err().code, capwire::Code::InvalidArgument);
}

/// Arguments that do not fit a typed method are refused in JSON terms: the
/// method, its parameters, what was expected and what came — never the name
/// of the codec they travelled in.
#[tokio::test]
async fn wrong_arguments_are_explained_in_json_terms() {
    let (registry, _h) = registry();
    let p = pair(Kind::Mem, registry).await;
    let calc = CalcClient::bootstrap(&p.client).await.unwrap();
    let cap = capwire::typed::Client::cap(&calc).clone();
    for (args, wanted) in [
        (serde_json::json!(7), "expected an array of length 1"),
        (
            serde_json::json!(["seven"]),
            "invalid type: string \"seven\"",
        ),
        (serde_json::json!([1, 2]), "expected 1"),
    ] {
        let err = cap
            .call("square", capwire::Value::new(&args).unwrap())
            .await
            .unwrap_err();
        assert_eq!(err.code, capwire::Code::InvalidArgument);
        assert!(
            err.message
                .starts_with("`square` takes its arguments as a JSON array [n]"),
            "{err}"
        );
        assert!(err.message.contains(wanted), "{args}: {err}");
        assert!(!err.message.contains("msgpack"), "{err}");
        assert!(!err.message.contains(" at line "), "{err}");
    }
}

/// Captures nest: a `Serialize` impl that encodes a value of its own while
/// being encoded keeps its handles apart from the outer value's, and the
/// outer placeholders still count from 0.
#[test]
fn nested_encodes_keep_their_own_capabilities() {
    struct Outer {
        first: CounterClient,
        inner: CounterClient,
        last: CounterClient,
    }
    impl serde::Serialize for Outer {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::{Error, SerializeSeq};
            let nested = capwire::Value::new(&(&self.inner,)).map_err(S::Error::custom)?;
            assert_eq!(
                nested.caps().len(),
                1,
                "the nested value has its own handle"
            );
            let mut seq = s.serialize_seq(Some(3))?;
            seq.serialize_element(&self.first)?;
            seq.serialize_element(&nested.to_json().map_err(S::Error::custom)?)?;
            seq.serialize_element(&self.last)?;
            seq.end()
        }
    }
    let counter = |n| CounterClient::from_impl(MyCounter(AtomicI64::new(n)));
    let value = capwire::Value::new(&Outer {
        first: counter(1),
        inner: counter(2),
        last: counter(3),
    })
    .unwrap();
    assert_eq!(value.caps().len(), 2, "only the outer value's own handles");
    assert_eq!(
        value.to_json().unwrap(),
        serde_json::json!([{ "$cap": 0 }, [{ "$cap": 0 }], { "$cap": 1 }])
    );
}
