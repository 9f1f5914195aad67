// A capnweb 0.12 server (the official package) for the Rust client to drive.
// Prints `listening ws://127.0.0.1:PORT/` once it accepts connections.
// `stats()` reports the session's import/export counts, for leak checks.
import { RpcSession, RpcTarget, WebSocketTransport } from "capnweb";
import { WebSocket, WebSocketServer } from "ws";

if (globalThis.WebSocket === undefined) globalThis.WebSocket = WebSocket;

class Counter extends RpcTarget {
  #n;
  constructor(n) { super(); this.#n = n; }
  increment(by) { this.#n += by; return this.#n; }
  value() { return this.#n; }
}

class Api extends RpcTarget {
  #session = null;
  bind(session) { this.#session = session; }
  square(n) { return n * n; }
  makeCounter(start) { return new Counter(start); }
  incrementCounter(counter, by) { return counter.increment(by); }
  async callMeBack(fn) { return "callback returned " + (await fn(10)); }
  listIds() { return [1, 2, 3]; }
  getName(id) { return "user" + id; }
  fail() {
    const e = new RangeError("bad thing");
    e.code = "E_BAD";
    throw e;
  }
  echo(v) { return v; }
  makeStream(n) {
    let i = 0;
    return new ReadableStream({ pull(c) { if (i < n) c.enqueue(i++); else c.close(); } });
  }
  async writeTo(writable) {
    const w = writable.getWriter();
    for (const x of ["a", "b", "c"]) await w.write(x);
    await w.close();
    return "done";
  }
  async collect(readable) {
    const out = [];
    for await (const x of readable) out.push(x);
    return out;
  }
  stats() { return this.#session.getStats(); }
  // The messages this connection received so far, as text.
  frames() { return this.received; }
}

const wss = new WebSocketServer({ host: "127.0.0.1", port: 0 });
wss.on("connection", (ws) => {
  const api = new Api();
  api.received = [];
  ws.on("message", (data) => api.received.push(String(data)));
  const session = new RpcSession(new WebSocketTransport(ws), api);
  api.bind(session);
});
wss.on("listening", () => {
  console.log(`listening ws://127.0.0.1:${wss.address().port}/`);
});
