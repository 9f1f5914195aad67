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

let failed = false;
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

  // Disposal: the stubs go back; nothing leaks on the server (checked there).
  counter[Symbol.dispose]();
  held[Symbol.dispose]();
} catch (e) {
  console.log(`FAIL unexpected: ${e?.stack ?? e}`);
  failed = true;
}
api[Symbol.dispose]();
process.exit(failed ? 1 : 0);
