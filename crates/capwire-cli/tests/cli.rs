//! The `capwire` binary, run as a child process: its stdin and stdout are
//! the stdio transport of that process.

use std::io::Write;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_capwire");
const SAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/samples");

fn run(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn capwire");
    let mut input = child.stdin.take().expect("stdin");
    let bytes = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&bytes);
    });
    let out = child.wait_with_output().expect("wait");
    writer.join().expect("writer");
    out
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn version() {
    let out = run(&["--version"], b"");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("capwire {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn encode_then_decode_round_trips_in_both_codecs() {
    let source = std::fs::read(format!("{SAMPLES}/tour.ndjson")).expect("sample");
    let lines = source
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    for codec in ["json", "msgpack"] {
        let encoded = run(&["frames", "encode", "--codec", codec], &source);
        assert!(encoded.status.success(), "{}", stderr(&encoded));
        let decoded = run(&["frames", "decode"], &encoded.stdout);
        assert!(decoded.status.success(), "{}", stderr(&decoded));
        let text = String::from_utf8(decoded.stdout).expect("utf8");
        let frames: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&text)
            .into_iter()
            .collect::<Result<_, _>>()
            .expect("pretty JSON objects");
        assert_eq!(frames.len(), lines);
        assert!(frames.iter().all(|f| f["codec"] == codec));
        assert_eq!(frames[2]["frame"]["call"]["method"], "makeCounter");
    }
    // JSON lines out are the canonical form of the sample.
    let ndjson = run(
        &["frames", "encode", "--codec", "json", "--framing", "ndjson"],
        &source,
    );
    assert_eq!(ndjson.stdout, source);
}

#[test]
fn shipped_binary_sample_decodes() {
    let out = run(&["frames", "decode", &format!("{SAMPLES}/tour.bin")], b"");
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("\"codec\": \"msgpack\""));
    assert!(text.contains("\"goaway\""));
}

#[test]
fn bad_frames_are_reported_and_skipped() {
    let input = b"{\"ping\":{\"nonce\":1}}\ngarbage\n{\"bogus\":{}}\n{\"pong\":{\"nonce\":1}}\n";
    let out = run(&["frames", "decode", "--framing", "ndjson"], input);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("frame 2 (7 bytes): unknown frame encoding: first byte 0x67"),
        "{err}"
    );
    assert!(
        err.contains("frame 3 (12 bytes): unknown op `bogus`"),
        "{err}"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("\"ping\"") && text.contains("\"pong\""),
        "{text}"
    );
}

#[test]
fn framing_errors_end_the_input_with_a_clear_message() {
    let out = run(
        &["frames", "decode", "--max-frame-bytes", "16"],
        &[0, 0, 0, 100, 1],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("after 0 frames: frame of 100 bytes exceeds the limit of 16 bytes"),
        "{}",
        stderr(&out)
    );
    let out = run(&["frames", "decode"], &[0, 0, 0, 10, b'{']);
    assert!(
        stderr(&out).contains("connection closed mid-frame: 5 of 14 bytes received"),
        "{}",
        stderr(&out)
    );
    let out = run(&["frames", "decode", "/nonexistent/file"], b"");
    assert!(
        stderr(&out).contains("cannot open /nonexistent/file"),
        "{}",
        stderr(&out)
    );
    let out = run(&["frames", "encode", "--framing", "ndjson"], b"");
    assert!(
        stderr(&out).contains("ndjson framing carries JSON frames only"),
        "{}",
        stderr(&out)
    );
    let out = run(&["frames", "encode"], b"{\"nope\":1}\n");
    assert!(
        stderr(&out).contains("line 1: unknown op `nope`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn demo_tour_runs_every_step() {
    let out = run(&["demo"], b"");
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "square(7) = 49",
        "increment(2) = 7, increment(3) = 10",
        "incrementCounter(counter, 10) = 20",
        "callMeBack(fn) = \"callback returned 11\"",
        "fail() -> error invalid_argument: bad thing",
        "server handler stopped: true",
        "error deadline_exceeded",
        "failed_precondition/revoked",
        "(failed locally: true)",
        "calls: ok ",
        "closed",
    ] {
        assert!(text.contains(want), "missing `{want}` in:\n{text}");
    }
}

/// Kills the child when the test ends, however it ends.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `capwire demo serve` on a free TCP port; returns it and its address.
fn demo_server() -> (Server, String) {
    demo_server_on("tcp://127.0.0.1:0")
}

/// Starts `capwire demo serve --listen LISTEN`; returns it and its address.
fn demo_server_on(listen: &str) -> (Server, String) {
    demo_server_with(&["--listen", listen])
}

/// Starts `capwire demo serve ARGS…`; returns it and its address.
fn demo_server_with(args: &[&str]) -> (Server, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(["demo", "serve"]).args(args);
    serving(cmd)
}

/// Spawns a server that prints its address as the last word of its first
/// line (`capwire demo serve`, the interop servers); returns it and the
/// address.
fn serving(mut cmd: Command) -> (Server, String) {
    use std::io::BufRead;
    let mut child = cmd.stdout(Stdio::piped()).spawn().expect("spawn server");
    let stdout = child.stdout.take().expect("stdout");
    let server = Server(child);
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .expect("banner");
    let addr = line.trim().rsplit(' ').next().expect("address").to_owned();
    assert!(addr.contains("127.0.0.1:"), "{line}");
    (server, addr)
}

/// Starts an interop script that serves (`node SCRIPT`, in `dir`).
fn node_server(dir: &std::path::Path, script: &str) -> (Server, String) {
    let mut cmd = Command::new("node");
    cmd.arg(dir.join(script)).current_dir(dir);
    serving(cmd)
}

#[test]
fn call_reaches_a_served_method_and_reports_errors() {
    let (_server, addr) = demo_server();

    let out = run(&["call", &addr, "demo", "square", "[12]"], b"");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "144");

    let out = run(
        &["call", &addr, "demo", "getName", "[7]", "--version", "1.0"],
        b"",
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "\"user7\"");

    let out = run(&["call", &addr, "demo", "nope"], b"");
    assert_eq!(out.status.code(), Some(4), "a remote status exits 4");
    assert!(
        stderr(&out).contains("unimplemented: Demo has no method `nope`"),
        "{}",
        stderr(&out)
    );

    let out = run(&["call", &addr, "nobody", "square", "[1]"], b"");
    assert!(
        stderr(&out).contains("not_found: `nobody` is not served"),
        "{}",
        stderr(&out)
    );

    let out = run(&["call", &addr, "demo", "square", "[\"x\"]"], b"");
    assert!(
        stderr(&out).contains("invalid_argument"),
        "{}",
        stderr(&out)
    );

    let out = run(
        &[
            "call",
            &addr,
            "demo",
            "sleep",
            "[5000]",
            "--timeout-ms",
            "50",
        ],
        b"",
    );
    assert!(
        stderr(&out).contains("deadline_exceeded"),
        "{}",
        stderr(&out)
    );

    let out = run(&["call", &addr, "demo", "square", "not json"], b"");
    assert_eq!(out.status.code(), Some(2), "a usage error exits 2");
    assert!(
        stderr(&out).contains("arguments are not JSON"),
        "{}",
        stderr(&out)
    );

    let out = run(&["call", "tcp://127.0.0.1:1", "demo", "square", "[1]"], b"");
    assert!(
        stderr(&out).contains("cannot connect to tcp://127.0.0.1:1"),
        "{}",
        stderr(&out)
    );
}

/// Pipelining, a stream and a sink with the demo server as a child process
/// speaking over its stdin/stdout (`exec:` here, `stdio:` there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelining_streams_and_sinks_over_a_child_process() {
    use capwire::transport::{self, Address, TransportConfig};
    use capwire::{sink, Registry, Session, SessionConfig, Value};
    use futures_util::StreamExt;

    let addr = Address::Exec {
        program: BIN.into(),
        args: vec![
            "demo".into(),
            "serve".into(),
            "--listen".into(),
            "stdio:".into(),
        ],
    };
    let t = transport::connect(&addr, &TransportConfig::default())
        .await
        .expect("spawn the server");
    let session = Session::new(t, Registry::new(), SessionConfig::default());
    let demo = session
        .bootstrap("demo", Some("1.0"))
        .await
        .expect("bootstrap");

    let n: i64 = demo
        .call("makeCounter", Value::new(&(41,)).unwrap())
        .call("increment", Value::new(&(1,)).unwrap())
        .await
        .expect("pipelined")
        .decode()
        .unwrap();
    assert_eq!(n, 42);

    let items: Vec<u64> = demo
        .call_stream("makeStream", Value::new(&(500,)).unwrap())
        .map(|i| i.unwrap().decode::<u64>().unwrap())
        .collect()
        .await;
    assert_eq!(items, (0..500).collect::<Vec<_>>());

    let (out, received) = sink(32);
    let done: String = demo
        .call(
            "writeTo",
            Value::with_caps(&[serde_json::json!({"$cap": 0})], vec![out]).unwrap(),
        )
        .await
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(done, "done");
    let written: Vec<String> = received
        .map(|i| i.unwrap().decode().unwrap())
        .collect()
        .await;
    assert_eq!(written, ["a", "b", "c"]);
    session.close().await;
}

/// `capwire schema` prints what the demo serves, as JSON Schema and as
/// TypeScript.
#[test]
fn schema_prints_the_served_interfaces() {
    let (_server, addr) = demo_server();
    let out = run(&["schema", &addr], b"");
    assert!(out.status.success(), "{}", stderr(&out));
    let schemas: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let demo = &schemas[0];
    assert_eq!(demo["name"], "demo");
    assert_eq!(demo["version"], "1.0");
    let methods = &demo["schema"]["methods"];
    assert_eq!(methods["square"]["params"][0]["name"], "n");
    assert_eq!(methods["makeStream"]["kind"], "stream");
    assert_eq!(
        demo["schema"]["$defs"]["Counter"]["x-capwire-interface"],
        "Counter"
    );

    let out = run(&["schema", "--ts", &addr], b"");
    assert!(out.status.success(), "{}", stderr(&out));
    let ts = String::from_utf8_lossy(&out.stdout);
    for line in [
        "export interface Demo {",
        "  square(n: number): Promise<number>;",
        "  makeCounter(start: number): Promise<Counter>;",
        "  callMeBack(f: Callback): Promise<string>;",
        "  makeStream(n: number): Promise<ReadableStream<number>>;",
        "  writeTo(writable: WritableStream<string>): Promise<string>;",
        "export interface Counter {",
    ] {
        assert!(ts.contains(line), "missing `{line}` in:\n{ts}");
    }

    let out = run(&["schema", "tcp://127.0.0.1:1"], b"");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("cannot connect"), "{}", stderr(&out));
}

/// The interop scripts' folder, with its npm packages installed (by the
/// README's test command). Missing, the test fails, unless
/// `CAPWIRE_SKIP_NODE=1` says to skip Node tools.
fn interop() -> Option<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../interop");
    if dir.join("node_modules/capnweb").exists() {
        return Some(dir);
    }
    if std::env::var_os("CAPWIRE_SKIP_NODE").is_some() {
        eprintln!("skipping: CAPWIRE_SKIP_NODE is set");
        return None;
    }
    panic!("the interop packages are not installed: run `npm ci --prefix interop`");
}

/// Runs an interop script with one argument; it must exit 0 with no failed
/// check. Returns what it printed.
fn run_script(dir: &std::path::Path, script: &str, arg: &str) -> String {
    let out = Command::new("node")
        .arg(dir.join(script))
        .arg(arg)
        .current_dir(dir)
        .output()
        .expect("run node");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} failed:\n{text}\n{}",
        stderr(&out)
    );
    assert!(!text.contains("FAIL"), "{text}");
    text
}

/// The official capnweb client drives the demo over WebSocket: calls,
/// pipelining, promises as arguments, callbacks, data, errors, disposal.
#[test]
fn capnweb_client_against_the_demo() {
    let Some(dir) = interop() else { return };
    let (_server, addr) = demo_server_on("ws://127.0.0.1:0/");
    let text = run_script(&dir, "capnweb/client.mjs", &addr);
    assert!(!text.contains("FAIL"), "{text}");
    assert!(text.contains("ok   callMeBack(fn)"), "{text}");
}

/// The other direction: a capwire client (the capnweb dialect) drives the
/// official capnweb server: calls, returned capabilities passed back,
/// callbacks, data, errors; and after the handles are dropped, the JS
/// session's own stats show nothing leaked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_against_a_capnweb_server() {
    use capwire::dialect::capnweb::CapnwebSession;
    use capwire::transport::{self, TransportConfig};
    use capwire::{Capability, Code, Methods, Status, Value};
    use futures_util::StreamExt;

    let Some(dir) = interop() else { return };
    let (_server, addr) = node_server(&dir, "capnweb/server.mjs");
    assert!(addr.starts_with("ws://127.0.0.1:"), "{addr}");

    let t = transport::connect(&addr.parse().unwrap(), &TransportConfig::default())
        .await
        .expect("connect");
    let no_main = Capability::error(Status::new(Code::NotFound, "this client serves nothing"));
    let session = CapnwebSession::new(t, no_main);
    let api = session.peer_main();
    let v = |j: serde_json::Value| Value::new(&j).unwrap();
    // A result that decodes as `T`.
    async fn got<T: serde::de::DeserializeOwned>(promise: capwire::Promise) -> T {
        promise.await.unwrap().decode().unwrap()
    }
    // A call whose result decodes as `T`.
    async fn ask<T: serde::de::DeserializeOwned>(
        api: &Capability,
        method: &str,
        args: serde_json::Value,
    ) -> T {
        let value = api.call(method, Value::new(&args).unwrap()).await;
        value
            .unwrap_or_else(|e| panic!("{method}: {e}"))
            .decode()
            .unwrap()
    }

    let n: i64 = ask(&api, "square", serde_json::json!([7])).await;
    assert_eq!(n, 49);

    let counter = api
        .call("makeCounter", v(serde_json::json!([5])))
        .await
        .unwrap()
        .cap(0)
        .expect("a Counter stub");
    let n: i64 = counter
        .call("increment", v(serde_json::json!([1])))
        .await
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(n, 6);
    // The JS server's own object, passed back to it.
    let args =
        Value::with_caps(&serde_json::json!([{"$cap": 0}, 10]), vec![counter.clone()]).unwrap();
    let n: i64 = got(api.call("incrementCounter", args)).await;
    assert_eq!(n, 16);

    // A callback: our function, called by the JS server.
    let f = Capability::local(Methods::new("PlusOne").method(
        "call",
        |args: Value, _ctx| async move {
            let (n,): (i64,) = args.decode()?;
            Value::new(&(n + 1))
        },
    ));
    let args = Value::with_caps(&serde_json::json!([{"$cap": 0}]), vec![f]).unwrap();
    let r: String = got(api.call("callMeBack", args)).await;
    assert_eq!(r, "callback returned 11");

    let ids: Vec<i64> = ask(&api, "listIds", serde_json::json!([])).await;
    assert_eq!(ids, [1, 2, 3]);
    let nested = serde_json::json!([{"a": [1, [2]], "b": null, "c": {"$cap": "not one"}}]);
    let back: serde_json::Value = api
        .call("echo", v(nested.clone()))
        .await
        .unwrap()
        .decode()
        .unwrap();
    // A JS map that reads as a placeholder arrives escaped (protocol.md §4.3).
    let escaped = serde_json::json!({"a": [1, [2]], "b": null, "c": {"$esc": {"$cap": "not one"}}});
    assert_eq!(back, escaped);

    // Pipelining: a call on a result before it arrives, and a promise as an
    // argument; the JS server received them as pipeline references.
    let made = api.call("makeCounter", v(serde_json::json!([100])));
    let n: i64 = got(made.cap().call("increment", v(serde_json::json!([1])))).await;
    assert_eq!(n, 101);
    let args = Value::with_caps(&serde_json::json!([{"$cap": 0}, 10]), vec![made.cap()]).unwrap();
    let n: i64 = got(api.call("incrementCounter", args)).await;
    assert_eq!(n, 111);
    let chain: i64 = got(api
        .call("makeCounter", v(serde_json::json!([7])))
        .cap()
        .call("increment", v(serde_json::json!([3]))))
    .await;
    assert_eq!(chain, 10);
    drop(made);
    let frames: Vec<String> = ask(&api, "frames", serde_json::json!([])).await;
    let pushes: Vec<&String> = frames
        .iter()
        .filter(|f| f.starts_with("[\"push\""))
        .collect();
    let made_id = 1 + pushes
        .iter()
        .position(|f| f.contains("[\"makeCounter\"],[100]"))
        .expect("the makeCounter push");
    assert!(
        frames.contains(&format!(
            "[\"push\",[\"pipeline\",{made_id},[\"increment\"],[1]]]"
        )),
        "increment went on the promise: {pushes:?}"
    );
    assert!(
        frames.contains(&format!(
            "[\"push\",[\"pipeline\",0,[\"incrementCounter\"],[[\"pipeline\",{made_id},[]],10]]]"
        )),
        "the promise went as an argument: {pushes:?}"
    );
    assert!(
        !frames.contains(&format!("[\"pull\",{made_id}]")),
        "nobody awaited makeCounter itself: {frames:?}"
    );

    // Streams both ways: a ReadableStream from JS, one to JS, and a
    // WritableStream JS writes into.
    let readable = api
        .call("makeStream", v(serde_json::json!([5])))
        .await
        .unwrap()
        .cap(0)
        .expect("a ReadableStream");
    let items: Vec<i64> = readable
        .call_stream("read", Value::null())
        .map(|i| i.and_then(|v| v.decode::<i64>()))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(items, [0, 1, 2, 3, 4]);
    let source = capwire::source(
        futures_util::stream::iter((0..300).map(|i| Value::new(&serde_json::json!({ "i": i }))))
            .boxed(),
    );
    let args = Value::with_caps(&serde_json::json!([{"$cap": 0}]), vec![source]).unwrap();
    let collected: Vec<serde_json::Value> = got(api.call("collect", args)).await;
    assert_eq!(collected.len(), 300);
    assert_eq!(collected[299], serde_json::json!({"i": 299}));
    let (sink, mut written) = capwire::sink(8);
    let args = Value::with_caps(&serde_json::json!([{"$cap": 0}]), vec![sink]).unwrap();
    let done: String = got(api.call("writeTo", args)).await;
    assert_eq!(done, "done");
    let mut chunks = Vec::new();
    while let Some(item) = written.next().await {
        chunks.push(item.unwrap().decode::<String>().unwrap());
    }
    assert_eq!(chunks, ["a", "b", "c"]);

    let err = api
        .call("fail", v(serde_json::json!([])))
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::InvalidArgument, "{err}");
    assert_eq!(err.message, "bad thing");
    assert_eq!(
        err.details_json(),
        Some(serde_json::json!({"name": "RangeError", "code": "E_BAD"}))
    );

    // Nothing leaks: with the counter dropped, the JS session is back to its
    // main export and our main import (capnweb's own baseline, 1 and 1).
    drop((counter, readable));
    let mut stats = serde_json::Value::Null;
    for _ in 0..50 {
        stats = ask(&api, "stats", serde_json::json!([])).await;
        if stats == serde_json::json!({"imports": 1, "exports": 1}) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        stats,
        serde_json::json!({"imports": 1, "exports": 1}),
        "the JS session's tables"
    );
    assert_eq!(session.stats().imports, 0, "our side holds no stub either");
    session.close().await;
}

/// capnweb's HTTP batch client on the demo's WebSocket port: one POST for
/// several pipelined calls, errors in the batch, and `405` for a `GET`.
#[test]
fn capnweb_http_batch_against_the_demo() {
    let Some(dir) = interop() else { return };
    let (_server, addr) = demo_server_on("ws://127.0.0.1:0/");
    let http = addr.replacen("ws://", "http://", 1);
    let text = run_script(&dir, "capnweb/batch.mjs", &http);
    assert!(
        text.contains("ok   one batch: [36,5,9,\"user9\"]"),
        "{text}"
    );
}

/// SIGINT (and SIGTERM) shut `demo serve` down gracefully: a call in flight
/// finishes with its value, the client hears `goaway`, the process exits 0.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serve_drains_calls_on_sigint_and_sigterm() {
    use capwire::transport::{self, TransportConfig};
    use capwire::{Code, Registry, Session, SessionConfig, Value};
    for signal in ["-INT", "-TERM"] {
        let (mut server, addr) = demo_server();
        let t = transport::connect(&addr.parse().unwrap(), &TransportConfig::default())
            .await
            .unwrap();
        let client = Session::new(t, Registry::new(), SessionConfig::default());
        let demo = client.bootstrap("demo", None).await.unwrap();
        let slow = tokio::spawn({
            let demo = demo.clone();
            async move { demo.call("sleep", Value::new(&(300u64,)).unwrap()).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let pid = server.0.id().to_string();
        let kill = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(kill.success());
        let answer = slow.await.unwrap();
        let answer = answer.expect("the call in flight finished");
        assert!(answer.decode::<String>().is_ok(), "{signal}");
        let closed = tokio::time::timeout(std::time::Duration::from_secs(10), client.closed())
            .await
            .expect("the session ends");
        assert_eq!(closed.code, Code::Unavailable, "{closed}");
        assert!(closed.message.contains("closing"), "{signal}: {closed}");
        let status = server.0.wait().expect("the server exits");
        assert!(status.success(), "{signal}: {status}");
    }
}

/// A peer that accepts and never answers: `call` and `schema` give up
/// within their timeout and say which phase was under way.
#[test]
fn call_and_schema_give_up_on_a_silent_peer() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("tcp://{}", silent.local_addr().unwrap());
    let started = std::time::Instant::now();
    let out = run(
        &[
            "call",
            &addr,
            "demo",
            "square",
            "[2]",
            "--timeout-ms",
            "300",
        ],
        b"",
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("timed out after 300 ms while bootstrapping at"),
        "{err}"
    );
    let out = run(&["schema", &addr, "--timeout-ms", "300"], b"");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("timed out after 300 ms while asking for the schemas at"),
        "{err}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "both gave up promptly"
    );
    drop(silent);
}

/// `capwire demo | head -3`: the reader goes away after three lines; the
/// tool stops quietly (no panic, no error) instead of writing on.
#[test]
fn a_closed_stdout_stops_the_tool_quietly() {
    use std::io::BufRead;
    let mut child = Command::new(BIN)
        .arg("demo")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = std::io::BufReader::new(stdout).lines();
    for _ in 0..3 {
        lines.next().expect("a line").expect("readable");
    }
    drop(lines);
    let out = child.wait_with_output().expect("exits");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(out.status.success(), "{:?}: {err}", out.status);
}

/// An OS error is said once: `cannot connect to ADDR: <why>`, not the
/// address and the reason twice over.
#[test]
fn a_refused_connection_is_reported_once() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("tcp://127.0.0.1:{port}");
    for args in [
        vec!["call", addr.as_str(), "demo", "square", "[2]"],
        vec!["schema", addr.as_str()],
    ] {
        let out = run(&args, b"");
        assert_eq!(out.status.code(), Some(3), "an unreachable peer exits 3");
        let err = stderr(&out);
        assert_eq!(err.matches("os error").count(), 1, "{err}");
        assert_eq!(err.matches("cannot connect to").count(), 1, "{err}");
    }
}

/// Newline-delimited JSON fed to `frames decode` (length-prefixed by
/// default) is recognised, and the right flag suggested.
#[test]
fn ndjson_input_without_the_flag_suggests_it() {
    let out = run(&["frames", "decode"], b"{\"hello\":{\"v\":1}}\n");
    let err = stderr(&out);
    assert!(err.contains("--framing ndjson"), "{err}");
    assert!(!err.contains("exceeds the limit"), "{err}");
}

/// A raw capwire/1 client (tcp://) on a WebSocket port is told, in its own
/// protocol, to use the ws:// address — not left with "peer closed".
#[test]
fn a_tcp_client_on_a_websocket_port_is_told_where_to_go() {
    let (_server, addr) = demo_server_on("ws://127.0.0.1:0/");
    let authority = addr
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .expect("host:port")
        .to_owned();
    let tcp = format!("tcp://{authority}");
    let out = run(
        &[
            "call",
            &tcp,
            "demo",
            "square",
            "[2]",
            "--timeout-ms",
            "5000",
        ],
        b"",
    );
    let err = stderr(&out);
    assert!(err.contains("this port speaks WebSocket"), "{err}");
    assert_eq!(out.status.code(), Some(3), "{err}");
}

/// `capwire call ADDR NAME` lists the methods with their signatures;
/// arguments go by parameter name too; a typo gets "did you mean".
#[test]
fn call_lists_methods_takes_named_arguments_and_suggests() {
    let (_server, addr) = demo_server();
    let out = run(&["call", &addr, "demo"], b"");
    assert!(out.status.success(), "{}", stderr(&out));
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("square(n: integer) -> integer"),
        "{listing}"
    );
    assert!(
        listing.contains("makeStream(n: integer) -> stream of integer"),
        "{listing}"
    );

    let out = run(&["call", &addr, "demo", "square", r#"{"n": 7}"#], b"");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "49");

    let out = run(&["call", &addr, "demo", "sqare", "[3]"], b"");
    assert_eq!(out.status.code(), Some(4));
    assert!(
        stderr(&out).contains("did you mean `square`?"),
        "{}",
        stderr(&out)
    );

    let out = run(
        &["call", &addr, "demo", "incrementCounter", r#"{"by": 1}"#],
        b"",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("missing argument `counter`"),
        "{}",
        stderr(&out)
    );
}

/// A stream method from the command line: one JSON line per item, with or
/// without `--stream` (without, the plain call is retried as a stream).
#[test]
fn call_prints_a_stream_item_by_item() {
    let (_server, addr) = demo_server();
    for extra in [None, Some("--stream")] {
        let mut args = vec!["call", addr.as_str(), "demo", "makeStream", "[40]"];
        args.extend(extra);
        let out = run(&args, b"");
        assert!(out.status.success(), "{}", stderr(&out));
        let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        let want: Vec<String> = (0..40).map(|i| i.to_string()).collect();
        assert_eq!(lines, want, "{extra:?}");
    }
}

/// The npm `json-rpc-2.0` package drives the demo's JSON-RPC face over
/// WebSocket (the server calling the client back, notifications both
/// ways, batches, bad input) and over HTTP POST on the same port.
#[test]
fn json_rpc_2_0_client_against_the_demo() {
    let Some(dir) = interop() else { return };
    let (_server, addr) = demo_server_on("ws://127.0.0.1:0/");
    let text = run_script(&dir, "jsonrpc/client.mjs", &addr);
    assert!(text.contains("ok   callMeBack"), "{text}");
    assert!(text.contains("ok   http: batch"), "{text}");
}

/// Python clients no one here wrote: the standard library over HTTP POST,
/// PyPI `websockets` over WebSocket (installed from
/// `interop/python/requirements.txt` by the README's test command; without
/// it the test fails unless `CAPWIRE_SKIP_PYTHON=1`).
#[test]
fn python_clients_against_the_demo() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../interop/python");
    let probe = Command::new("python3")
        .args(["-c", "import websockets"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        if std::env::var_os("CAPWIRE_SKIP_PYTHON").is_some() {
            eprintln!("skipping: CAPWIRE_SKIP_PYTHON is set");
            return;
        }
        panic!("python3 with `websockets` is needed: python3 -m pip install -r interop/python/requirements.txt");
    }
    let (_server, addr) = demo_server_on("ws://127.0.0.1:0/");
    let out = Command::new("python3")
        .arg(dir.join("client.py"))
        .arg(&addr)
        .output()
        .expect("run python3");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(!text.contains("FAIL"), "{text}");
    assert!(text.contains("ok   ws: callMeBack"), "{text}");
}

/// capwire's JSON-RPC client against a server written with the npm
/// `json-rpc-2.0` package: typed calls (params by name), its custom error
/// code read back as a registered error class, notifications both ways in
/// order, and the JS server calling the Rust client back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_against_a_json_rpc_2_0_server() {
    use capwire::dialect::jsonrpc::{ErrorClass, ErrorClasses, JsonRpcConfig, JsonRpcSession};
    use capwire::transport::{self, TransportConfig};
    use capwire::{Registry, Status};
    use std::sync::{Arc, Mutex};

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct OutOfStock {
        sku: String,
    }
    impl ErrorClass for OutOfStock {
        const CODE: i64 = 1001;
        const NAME: &'static str = "OutOfStock";
        fn message(&self) -> String {
            format!("{} is out of stock", self.sku)
        }
    }

    // Served by the JS server; here only its client is used.
    #[capwire::interface(name = "shop", version = "1.0")]
    #[allow(dead_code)]
    trait Shop {
        async fn price(&self, sku: String, qty: i64) -> Result<i64, Status>;
        async fn buy(&self, sku: String) -> Result<(), Status>;
        #[capwire(notification)]
        async fn note(&self, tag: String) -> Result<(), Status>;
        async fn notes(&self) -> Result<Vec<String>, Status>;
        async fn ask_back(&self, x: i64) -> Result<i64, Status>;
    }

    #[capwire::interface(name = "client", version = "1.0")]
    trait Client {
        async fn double(&self, x: i64) -> Result<i64, Status>;
        #[capwire(notification)]
        async fn progress(&self, pct: u64) -> Result<(), Status>;
    }

    struct Me(Arc<Mutex<Vec<u64>>>);
    impl Client for Me {
        async fn double(&self, x: i64) -> Result<i64, Status> {
            Ok(2 * x)
        }
        async fn progress(&self, pct: u64) -> Result<(), Status> {
            self.0.lock().unwrap().push(pct);
            Ok(())
        }
    }

    let Some(dir) = interop() else { return };
    let (_server, addr) = node_server(&dir, "jsonrpc/server.mjs");

    let progress = Arc::new(Mutex::new(Vec::new()));
    let registry = Registry::new();
    registry
        .serve_interface(ClientServer::new(Me(progress.clone())))
        .unwrap()
        .forget();
    let t = transport::connect(&addr.parse().unwrap(), &TransportConfig::default())
        .await
        .expect("connect");
    let config = JsonRpcConfig::new().errors(ErrorClasses::new().register::<OutOfStock>());
    let session = JsonRpcSession::connect(t, registry, config);
    let shop: ShopClient = session.peer().client("shop");
    assert_eq!(shop.price("A1".into(), 3).await.unwrap(), 750);
    let err = shop.buy("B2".into()).await.unwrap_err();
    assert_eq!(
        OutOfStock::from_status(&err),
        Some(OutOfStock { sku: "B2".into() }),
        "{err}"
    );
    for tag in ["a", "b", "c"] {
        shop.note(tag.into()).unwrap();
    }
    assert_eq!(shop.notes().await.unwrap(), vec!["a", "b", "c"]);
    assert_eq!(shop.ask_back(20).await.unwrap(), 41);
    assert_eq!(*progress.lock().unwrap(), vec![50]);
    // An unknown method comes back as `unimplemented` (-32601).
    let err = session
        .peer()
        .request("shop/nosuch", None, None)
        .await
        .unwrap_err();
    assert_eq!(err.code, capwire::Code::Unimplemented, "{err}");
    session.close().await;

    // The same server over HTTP POST: an `http://` transport.
    let http = addr.replacen("ws://", "http://", 1);
    let t = transport::connect(&http.parse().unwrap(), &TransportConfig::default())
        .await
        .expect("http transport");
    let config = JsonRpcConfig::new().errors(ErrorClasses::new().register::<OutOfStock>());
    let session = JsonRpcSession::connect(t, Registry::new(), config);
    let shop: ShopClient = session.peer().client("shop");
    let prices = futures_util::future::join_all((1..=8).map(|q| shop.price("A1".into(), q))).await;
    let prices: Vec<i64> = prices.into_iter().map(Result::unwrap).collect();
    assert_eq!(prices, (1..=8).map(|q| 250 * q).collect::<Vec<_>>());
    let err = shop.buy("C3".into()).await.unwrap_err();
    assert_eq!(
        OutOfStock::from_status(&err),
        Some(OutOfStock { sku: "C3".into() })
    );
    shop.note("ignored over HTTP".into()).unwrap();
    session.close().await;
}

/// jsonrpsee's own clients (WebSocket and HTTP) against the demo's
/// JSON-RPC face: params by position and by name, its error objects,
/// batches, notifications both ways (`demo/tick` through jsonrpsee's
/// method subscription), and the connection staying usable after errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonrpsee_clients_against_the_demo() {
    use jsonrpsee::core::client::{ClientT, Error, SubscriptionClientT};
    use jsonrpsee::core::params::{ArrayParams, BatchRequestBuilder, ObjectParams};
    use jsonrpsee::rpc_params;

    let (_server, addr) = demo_server_on("ws://127.0.0.1:0/");
    let ws = jsonrpsee::ws_client::WsClientBuilder::default()
        .build(&addr)
        .await
        .expect("jsonrpsee connects");
    let sq: i64 = ws.request("demo/square", rpc_params![7]).await.unwrap();
    assert_eq!(sq, 49);
    let mut named = ObjectParams::new();
    named.insert("a", 2).unwrap();
    named.insert("b", 40).unwrap();
    let sum: i64 = ws.request("demo/add", named).await.unwrap();
    assert_eq!(sum, 42);
    let mut wrong = ObjectParams::new();
    wrong.insert("a", 2).unwrap();
    wrong.insert("b", "x").unwrap();
    match ws.request::<i64, _>("demo/add", wrong).await {
        Err(Error::Call(e)) => {
            assert_eq!(e.code(), -32602);
            assert!(e.message().contains("`b`"), "{}", e.message());
        }
        other => panic!("{other:?}"),
    }
    match ws.request::<(), _>("demo/fail", ArrayParams::new()).await {
        Err(Error::Call(e)) => {
            assert!((-32099..=-32000).contains(&e.code()), "{}", e.code());
            assert_eq!(e.message(), "bad thing");
            let data: serde_json::Value = serde_json::from_str(e.data().unwrap().get()).unwrap();
            assert_eq!(data["code"], "E_BAD");
        }
        other => panic!("{other:?}"),
    }
    match ws.request::<(), _>("demo/nosuch", ArrayParams::new()).await {
        Err(Error::Call(e)) => assert_eq!(e.code(), -32601),
        other => panic!("{other:?}"),
    }
    // Items of a stream, through jsonrpsee's subscription to a method.
    let mut ticks = ws
        .subscribe_to_method::<serde_json::Value>("demo/tick")
        .await
        .unwrap();
    let n: u64 = ws.request("demo/ticks", rpc_params![3]).await.unwrap();
    assert_eq!(n, 3);
    for i in 0..3 {
        let tick = futures_util::StreamExt::next(&mut ticks)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(tick["seq"], i);
    }
    ws.notification("demo/notify", rpc_params!["x"])
        .await
        .unwrap();
    ws.notification("demo/notify", rpc_params!["y"])
        .await
        .unwrap();
    let tags: Vec<String> = ws.request("demo/notified", rpc_params![]).await.unwrap();
    assert_eq!(tags, vec!["x", "y"]);
    let mut batch = BatchRequestBuilder::new();
    batch.insert("demo/square", rpc_params![3]).unwrap();
    batch.insert("demo/nosuch", rpc_params![]).unwrap();
    batch.insert("demo/add", rpc_params![1, 2]).unwrap();
    let responses = ws.batch_request::<i64>(batch).await.unwrap();
    let got: Vec<Result<i64, i32>> = responses
        .into_iter()
        .map(|r| r.map_err(|e| e.code()))
        .collect();
    assert_eq!(got, vec![Ok(9), Err(-32601), Ok(3)]);

    let http_addr = addr.replacen("ws://", "http://", 1);
    let http = jsonrpsee::http_client::HttpClientBuilder::default()
        .build(&http_addr)
        .unwrap();
    let sum: i64 = http.request("demo/add", rpc_params![20, 22]).await.unwrap();
    assert_eq!(sum, 42);
    let mut batch = BatchRequestBuilder::new();
    batch.insert("demo/square", rpc_params![5]).unwrap();
    batch.insert("demo/square", rpc_params![6]).unwrap();
    let squares: Vec<i64> = http
        .batch_request::<i64>(batch)
        .await
        .unwrap()
        .into_ok()
        .unwrap()
        .collect();
    assert_eq!(squares, vec![25, 36]);
    http.notification("demo/notify", rpc_params!["h"])
        .await
        .unwrap();
}

/// JSON-RPC over a child process's stdio, both framings: capwire's client
/// spawns `capwire demo serve --listen stdio:` and calls it, and the child
/// calls the client back over the same pipes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonrpc_over_a_child_process_stdio() {
    use capwire::dialect::jsonrpc::{JsonRpcConfig, JsonRpcSession};
    use capwire::proto::Framing;
    use capwire::transport::{self, TransportConfig};
    use capwire::{Methods, Registry, Value};
    use serde_json::json;

    for (framing, flag) in [
        (Framing::Ndjson, "ndjson"),
        (Framing::ContentLength, "content-length"),
    ] {
        let config = TransportConfig::default().framing(framing);
        let t = transport::spawn_child(
            BIN,
            &[
                "demo".into(),
                "serve".into(),
                "--listen".into(),
                "stdio:".into(),
                "--framing".into(),
                flag.into(),
            ],
            &config,
        )
        .expect("spawn");
        let registry = Registry::new();
        registry
            .serve(
                "client",
                "1.0",
                // No schema: params by name arrive as one object.
                Methods::new("client").method("double", |args: Value, _| async move {
                    let (p,): (serde_json::Value,) = args.decode()?;
                    Value::new(&(2 * p["x"].as_i64().unwrap_or_default()))
                }),
            )
            .unwrap()
            .forget();
        let session = JsonRpcSession::connect(t, registry, JsonRpcConfig::new());
        let peer = session.peer();
        let sum = peer
            .request("demo/add", Some(json!({"a": 2, "b": 3})), None)
            .await
            .unwrap();
        assert_eq!(sum, 5, "{flag}");
        let r = peer
            .request("demo/callMeBack", Some(json!({"x": 20})), None)
            .await
            .unwrap();
        assert_eq!(r, 41, "{flag}");
        let err = peer
            .request("demo/add", Some(json!({"a": 2})), None)
            .await
            .unwrap_err();
        assert_eq!(err.code, capwire::Code::InvalidArgument, "{flag}: {err}");
        session.close().await;
    }
}

/// `capwire call --dialect jsonrpc` sends `NAME/METHOD` and prints the
/// result; an error object exits 4 with its message.
#[test]
fn call_speaks_jsonrpc_when_asked() {
    let (_server, addr) = demo_server_on("ws://127.0.0.1:0/");
    let out = run(
        &[
            "call",
            "--dialect",
            "jsonrpc",
            &addr,
            "demo",
            "add",
            r#"{"a":2,"b":3}"#,
        ],
        b"",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "5");
    let out = run(
        &[
            "call",
            "--dialect",
            "jsonrpc",
            &addr,
            "demo",
            "add",
            r#"{"a":2}"#,
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("missing field `b`"),
        "{}",
        stderr(&out)
    );
    let out = run(
        &["call", "--dialect", "jsonrpc", &addr, "demo", "add", "{"],
        b"",
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

/// `demo serve --token` admits only clients that present it
/// (`CAPWIRE_TOKEN`), natively over TCP and as JSON-RPC over WebSocket; the
/// others are told `unauthenticated` and exit 4.
#[test]
fn a_server_token_is_required_and_presented() {
    for (listen, dialect) in [
        ("tcp://127.0.0.1:0", "native"),
        ("ws://127.0.0.1:0/", "jsonrpc"),
    ] {
        let (_server, addr) = demo_server_with(&["--listen", listen, "--token", "s3cret"]);
        let call = |token: Option<&str>| {
            let mut cmd = Command::new(BIN);
            cmd.args(["call", "--dialect", dialect, &addr, "demo", "square", "[6]"]);
            match token {
                Some(t) => cmd.env("CAPWIRE_TOKEN", t),
                None => cmd.env_remove("CAPWIRE_TOKEN"),
            };
            cmd.output().expect("run call")
        };
        let out = call(Some("s3cret"));
        assert!(out.status.success(), "{dialect}: {}", stderr(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "36");
        for token in [None, Some("wrong")] {
            let out = call(token);
            assert_eq!(
                out.status.code(),
                Some(4),
                "{dialect} {token:?}: {}",
                stderr(&out)
            );
            assert!(
                stderr(&out).contains("unauthenticated"),
                "{dialect} {token:?}: {}",
                stderr(&out)
            );
        }
    }
}

/// A foreign WebSocket client (Node's `ws`) presents the demo server's
/// token in a header or the query, and is refused without it.
#[test]
fn node_ws_client_presents_a_token() {
    let Some(dir) = interop() else { return };
    let (_server, addr) =
        demo_server_with(&["--listen", "ws://127.0.0.1:0/", "--token", "s3 cret"]);
    let out = Command::new("node")
        .arg(dir.join("jsonrpc/token.mjs"))
        .args([&addr, "s3 cret"])
        .current_dir(&dir)
        .output()
        .expect("run node");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(!text.contains("FAIL"), "{text}");
}

/// `capwire certs` writes a CA, a server certificate and client ones; the
/// private keys are readable by their owner only.
fn certs(dir: &std::path::Path) {
    let out = run(
        &[
            "certs",
            dir.to_str().expect("utf-8 path"),
            "--client",
            "alice",
        ],
        b"",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    for file in [
        "ca.pem",
        "server.pem",
        "server.key",
        "alice.pem",
        "alice.key",
    ] {
        assert!(dir.join(file).exists(), "{file}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("alice.key"))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

fn tls_server(certs: &std::path::Path, listen: &str, mutual: bool) -> (Server, String) {
    let file = |name: &str| certs.join(name).to_str().expect("utf-8").to_owned();
    let mut args = vec![
        "--listen".to_owned(),
        listen.to_owned(),
        "--tls-cert".to_owned(),
        file("server.pem"),
        "--tls-key".to_owned(),
        file("server.key"),
    ];
    if mutual {
        args.extend(["--tls-client-ca".to_owned(), file("ca.pem")]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    demo_server_with(&args)
}

/// Two processes over TLS with the files `capwire certs` wrote: `call`
/// over tls:// and wss:// trusting the CA, mutual TLS with a client
/// certificate, and the refusals without them.
#[test]
fn call_over_tls_with_generated_certificates() {
    let dir = tempfile::tempdir().expect("tempdir");
    certs(dir.path());
    let file = |name: &str| dir.path().join(name).to_str().expect("utf-8").to_owned();
    let ca = file("ca.pem");
    for listen in ["tls://127.0.0.1:0", "wss://127.0.0.1:0/"] {
        let (_server, addr) = tls_server(dir.path(), listen, false);
        let out = run(
            &["call", &addr, "demo", "square", "[12]", "--tls-ca", &ca],
            b"",
        );
        assert!(out.status.success(), "{addr}: {}", stderr(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "144");
        // Without the CA the system roots do not know it.
        let out = run(&["call", &addr, "demo", "square", "[12]"], b"");
        assert_eq!(out.status.code(), Some(3), "{addr}: {}", stderr(&out));
        // (or, on a machine without a CA bundle, there are no system roots)
        let text = stderr(&out);
        assert!(
            text.contains("UnknownIssuer") || text.contains("no system root"),
            "{text}"
        );
    }
    let (_server, addr) = tls_server(dir.path(), "wss://127.0.0.1:0/", true);
    let (cert, key) = (file("alice.pem"), file("alice.key"));
    let args = ["--tls-ca", &ca, "--tls-cert", &cert, "--tls-key", &key];
    let mut whoami = vec!["call", "--dialect", "jsonrpc", &addr, "demo", "whoami"];
    whoami.extend(args);
    let out = run(&whoami, b"");
    assert!(out.status.success(), "{}", stderr(&out));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(got, serde_json::json!({"identity": "alice", "tls": true}));
    let out = run(
        &["call", &addr, "demo", "square", "[3]", "--tls-ca", &ca],
        b"",
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("CertificateRequired"),
        "{}",
        stderr(&out)
    );
}

/// A foreign client (Node's `ws`) over wss://, trusting the generated CA;
/// with mutual TLS it presents a client certificate whose name the server
/// sees as the caller's identity.
#[test]
fn node_ws_client_over_wss() {
    let Some(interop) = interop() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    certs(dir.path());
    for (mode, mutual) in [("tls", false), ("mtls", true)] {
        let (_server, addr) = tls_server(dir.path(), "wss://127.0.0.1:0/", mutual);
        let url = addr.replace("127.0.0.1", "localhost");
        let out = Command::new("node")
            .arg(interop.join("jsonrpc/tls.mjs"))
            .args([&url, dir.path().to_str().expect("utf-8"), mode])
            .current_dir(&interop)
            .output()
            .expect("run node");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{mode}: {text}\n{}", stderr(&out));
        assert!(!text.contains("FAIL"), "{text}");
    }
}

/// The headline features from the command line: a pipelined path on a
/// returned capability, a callback, a sink and a source, each printed as
/// JSON lines; mistakes in a path are usage errors.
#[test]
fn call_pipelines_and_passes_callbacks_sinks_and_sources() {
    let (_server, addr) = demo_server();
    let stdout = |o: &Output| String::from_utf8_lossy(&o.stdout).trim().to_owned();

    let out = run(
        &[
            "call",
            &addr,
            "demo",
            "makeCounter",
            "[5]",
            ".increment",
            "[1]",
        ],
        b"",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "6");

    // A capability returned inside a value, pipelined on by its path.
    let out = run(&["call", &addr, "demo", "square", "[3]", ".increment"], b"");
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not a capability"),
        "{}",
        stderr(&out)
    );

    let out = run(&["call", &addr, "demo", "makeCounter", "[5]", ".nope"], b"");
    assert_eq!(out.status.code(), Some(4));
    assert!(
        stderr(&out).contains("Counter has no method `nope`"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("did you mean"), "{}", stderr(&out));

    let out = run(
        &["call", &addr, "demo", "makeCounter", "[5]", "increment"],
        b"",
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "a path step without a dot is a usage error"
    );

    let out = run(
        &[
            "call",
            &addr,
            "demo",
            "callMeBack",
            r#"[{"$callback": "pong"}]"#,
        ],
        b"",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "{\"callback\":\"call\",\"args\":[10]}\n\"callback returned \\\"pong\\\"\""
    );

    let out = run(
        &["call", &addr, "demo", "writeTo", r#"[{"$sink": 2}]"#],
        b"",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    assert_eq!(
        lines,
        [
            r#"{"sink":0,"item":"a"}"#,
            r#"{"sink":0,"item":"b"}"#,
            r#"{"sink":0,"item":"c"}"#,
            r#""done""#
        ]
    );

    let out = run(
        &[
            "call",
            &addr,
            "demo",
            "collect",
            r#"[{"$source": [1, "two"]}]"#,
        ],
        b"",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(got, serde_json::json!([1, "two"]));

    let out = run(
        &["call", &addr, "demo", "writeTo", r#"[{"$sink": 0}]"#],
        b"",
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("window"), "{}", stderr(&out));
}

/// `demo serve --metrics` answers Prometheus' scrape on its HTTP port with
/// the calls made; on a port without HTTP the flag is a usage error.
#[test]
fn demo_serve_exports_metrics_for_prometheus() {
    use std::io::{Read, Write};
    let (_server, addr) = demo_server_with(&["--listen", "ws://127.0.0.1:0/", "--metrics"]);
    let out = run(&["call", &addr, "demo", "square", "[4]"], b"");
    assert!(out.status.success(), "{}", stderr(&out));
    let authority = addr
        .trim_start_matches("ws://")
        .trim_end_matches('/')
        .to_owned();
    let mut tcp = std::net::TcpStream::connect(&authority).expect("connect");
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .expect("request");
    let mut text = String::new();
    tcp.read_to_string(&mut text).expect("response");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains(r#"capwire_calls_total{dialect="capwire",direction="incoming",code="ok"}"#),
        "{text}"
    );
    assert!(
        text.contains("capwire_call_duration_seconds_bucket"),
        "{text}"
    );

    let out = run(
        &[
            "demo",
            "serve",
            "--listen",
            "tcp://127.0.0.1:0",
            "--metrics",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("ws:// or http://"),
        "{}",
        stderr(&out)
    );
}
