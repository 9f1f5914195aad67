// The official capnweb client (npm capnweb 0.12) against a capwire server.
// Usage: node client.mjs ws://127.0.0.1:PORT/
// Prints one line per check and exits non-zero on the first failure.
import { newWebSocketRpcSession } from "capnweb";
import { WebSocket } from "ws";

// Node 20 has no global WebSocket; capnweb needs one.
if (globalThis.WebSocket === undefined) globalThis.WebSocket = WebSocket;

const url = process.argv[2];
if (!url) {
  console.error("usage: node client.mjs ws://host:port/");
  process.exit(2);
}

// Deep equality that knows the values JSON.stringify loses.
function same(a, b) {
  if (typeof a !== typeof b) return false;
  if (typeof a === "number") return Object.is(a, b) || a === b;
  if (a === null || typeof a !== "object") return a === b;
  // Node receives a plain Uint8Array as a Buffer (a Uint8Array subclass).
  const bytes = a instanceof Uint8Array && b instanceof Uint8Array;
  if (a.constructor !== b.constructor && !bytes) return false;
  if (a instanceof Date) return Object.is(a.getTime(), b.getTime());
  if (a instanceof URL) return a.href === b.href;
  if (a instanceof Headers) return same([...a], [...b]);
  if (a instanceof Error) return a.name === b.name && a.message === b.message && same({ ...a }, { ...b });
  if (ArrayBuffer.isView(a) || a instanceof ArrayBuffer) {
    const raw = (v) => (ArrayBuffer.isView(v) ? new Uint8Array(v.buffer, v.byteOffset, v.byteLength) : new Uint8Array(v));
    const [x, y] = [raw(a), raw(b)];
    return x.length === y.length && x.every((v, i) => v === y[i]);
  }
  const [ka, kb] = [Object.keys(a), Object.keys(b)];
  return ka.length === kb.length && ka.every((k) => same(a[k], b[k]));
}

function show(v) {
  return JSON.stringify(v, (_, x) => (typeof x === "bigint" ? `${x}n` : x === undefined ? "undefined" : x));
}

let failed = false;
function checkSame(name, got, want) {
  const ok = same(got, want);
  console.log(`${ok ? "ok  " : "FAIL"} ${name}: ${show(got)}${ok ? "" : ` (want ${show(want)})`}`);
  if (!ok) failed = true;
}

function check(name, got, want) {
  const ok = JSON.stringify(got) === JSON.stringify(want);
  console.log(`${ok ? "ok  " : "FAIL"} ${name}: ${JSON.stringify(got)}${ok ? "" : ` (want ${JSON.stringify(want)})`}`);
  if (!ok) failed = true;
}

const api = newWebSocketRpcSession(url);
try {
  // Calls, and several at once.
  check("square(7)", await api.square(7), 49);
  check("concurrent", await Promise.all([1, 2, 3, 4].map((n) => api.square(n))), [1, 4, 9, 16]);

  // Pipelining: a call on a promise, and the promise as an argument.
  const counter = api.makeCounter(10);
  check("makeCounter(10).increment(5)", await counter.increment(5), 15);
  check("incrementCounter(promise, 100)", await api.incrementCounter(counter, 100), 115);
  check("counter.value()", await counter.value(), 115);

  // A returned capability held and used later.
  const held = await api.makeCounter(1);
  check("held.increment(1)", await held.increment(1), 2);
  check("incrementCounter(held, 2)", await api.incrementCounter(held, 2), 4);

  // Callbacks: a function the server calls (a capwire method named `call`
  // invokes a capnweb stub as a function).
  check("callMeBack(fn)", await api.callMeBack((n) => n * 3), "callback returned 30");
  check("callMeBack(async fn)", await api.callMeBack(async (n) => n + 1), "callback returned 11");

  // Arrays and plain data.
  check("listIds()", await api.listIds(), [1, 2, 3]);
  check("getName(7)", await api.getName(7), "user7");
  const value = { a: [1, [2, [3]]], b: "x", c: null, d: true, e: { "$cap": "not a capability" }, f: [] };
  check("echo(nested)", await api.echo(value), value);
  check("echo(2^60) is the same bigint", (await api.echo(2n ** 60n)) === 2n ** 60n, true);

  // Every value type comes back as it went.
  const err = new RangeError("bad");
  err.code = "E_X";
  const values = {
    undefined: undefined,
    inf: Infinity,
    negInf: -Infinity,
    nan: NaN,
    smallBigint: 5n,
    hugeBigint: -(10n ** 40n),
    date: new Date(1700000000000),
    invalidDate: new Date(NaN),
    bytes: new Uint8Array([1, 2, 3]),
    u16: new Uint16Array([1, 258]),
    f64: new Float64Array([1.5, -2]),
    url: new URL("https://x.test/p?q=1"),
    headers: new Headers([["a", "1"], ["b", "2"]]),
    error: err,
    lookalike: { $ext: ["date", 1] },
    inObject: { u: undefined, d: new Date(0), list: [NaN, 1n] },
  };
  for (const [name, v] of Object.entries(values)) checkSame(`echo(${name})`, await api.echo(v), v);
  checkSame("echo(all at once)", await api.echo(values), values);

  // Nesting: capwire values nest up to 128 levels (capnweb's own limit is
  // 256); a deeper one fails its call with a clear error and nothing else.
  const nest = (n) => {
    let v = 1;
    for (let i = 0; i < n; i++) v = i % 2 ? { d: v } : [v];
    return v;
  };
  checkSame("echo(120 levels)", await api.echo(nest(120)), nest(120));
  try {
    await api.echo(nest(200));
    check("echo(200 levels) rejects", "resolved", "rejected");
  } catch (e) {
    check("echo(200 levels) error", [e.capwireCode, e.message], ["resource_exhausted", "limit max_value_depth (128) exceeded"]);
  }

  // map(): over an array, to objects, with pipelining inside, nested, over null.
  check("listIds().map(getName)", await api.listIds().map((id) => api.getName(id)), ["user1", "user2", "user3"]);
  check(
    "map to objects",
    await api.listIds().map((id) => ({ id, name: api.getName(id) })),
    [{ id: 1, name: "user1" }, { id: 2, name: "user2" }, { id: 3, name: "user3" }],
  );
  check("map with pipelining", await api.listIds().map((i) => api.makeCounter(i).increment(1)), [2, 3, 4]);
  check(
    "nested map",
    await api.listIds().map((i) => api.listIds().map((j) => api.square(j))),
    [[1, 4, 9], [1, 4, 9], [1, 4, 9]],
  );
  check("map over null", await api.echo(null).map((x) => api.getName(x)), null);

  // A ReadableStream returned by the server (a capwire stream method).
  const readable = await api.makeStream(5);
  const items = [];
  for await (const item of readable) items.push(item);
  check("makeStream(5)", items, [0, 1, 2, 3, 4]);

  // A WritableStream passed to the server, which writes into it.
  const chunks = [];
  const writable = new WritableStream({ write(chunk) { chunks.push(chunk); } });
  check("writeTo(writable)", await api.writeTo(writable), "done");
  check("what was written", chunks, ["a", "b", "c"]);

  // A ReadableStream passed to the server, which reads it to its end.
  const source = new ReadableStream({
    start(c) { for (const x of ["x", { n: 2 }, [3], 4n]) c.enqueue(x); c.close(); },
  });
  checkSame("collect(readable)", await api.collect(source), ["x", { n: 2 }, [3], 4n]);
  let pulled = 0;
  const big = new ReadableStream({
    pull(c) { if (pulled < 1000) c.enqueue(pulled++); else c.close(); },
  });
  const all = await api.collect(big);
  check("collect(1000 items)", [all.length, all[0], all[999]], [1000, 0, 999]);
  const failing = new ReadableStream({ start(c) { c.enqueue(1); c.error(new TypeError("broken")); } });
  try {
    await api.collect(failing);
    check("collect(failing) rejects", "resolved", "rejected");
  } catch (e) {
    check("collect(failing) error", e.message.includes("broken"), true);
  }

  // Errors: name, message and extra properties.
  try {
    await api.fail();
    check("fail() rejects", "resolved", "rejected");
  } catch (e) {
    check("fail() error", [e.name, e.message, e.code], ["RangeError", "bad thing", "E_BAD"]);
  }
  try {
    await api.noSuchMethod(1);
    check("noSuchMethod rejects", "resolved", "rejected");
  } catch (e) {
    check("noSuchMethod error", e.name, "TypeError");
  }

  // Protocol violations on another connection: abort, close 3000, and this
  // session (and the server) go on.
  const violations = {
    "unknown message": '["bogus",1]',
    "pull of a bad id": '["pull",99]',
    "not JSON": "{nope",
    "too deep": '["push",["pipeline",0,["echo"],[' + "[[".repeat(300) + "1" + "]]".repeat(300) + "]]]",
    "unknown special value": '["push",["pipeline",0,["echo"],[["regexp","a","g"]]]]',
  };
  for (const [name, frame] of Object.entries(violations)) {
    const outcome = await new Promise((resolve) => {
      const ws = new WebSocket(url);
      const got = [];
      // A capnweb first message, so that the port serves capnweb.
      ws.on("open", () => {
        ws.send('["push",["pipeline",0,["square"],[2]]]');
        ws.send(frame);
      });
      ws.on("message", (m) => got.push(JSON.parse(String(m))[0]));
      ws.on("close", (code) => resolve([got, code]));
      ws.on("error", () => {});
    });
    check(`violation: ${name}`, outcome, [["abort"], 3000]);
  }
  check("still serving after violations", await api.square(12), 144);

  // Disposal: the stubs go back; nothing leaks on the server (checked there).
  counter[Symbol.dispose]();
  held[Symbol.dispose]();
} catch (e) {
  console.log(`FAIL unexpected: ${e?.stack ?? e}`);
  failed = true;
}
api[Symbol.dispose]();
process.exit(failed ? 1 : 0);
