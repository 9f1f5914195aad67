// The npm `json-rpc-2.0` package as a client of `capwire demo serve`, over
// WebSocket (both directions: the server calls the client back) and HTTP.
// Usage: node client.mjs ws://127.0.0.1:PORT/
// Prints one line per check ("ok   …" / "FAIL …") and exits non-zero on failure.
import { JSONRPCClient, JSONRPCServer, JSONRPCServerAndClient } from "json-rpc-2.0";
import { WebSocket } from "ws";

const url = process.argv[2];
if (!url) {
  console.error("usage: node client.mjs ws://host:port/");
  process.exit(2);
}
const httpUrl = url.replace(/^ws:/, "http:");

let failed = 0;
function check(name, cond, detail) {
  if (cond) console.log(`ok   ${name}`);
  else {
    failed++;
    console.log(`FAIL ${name}${detail === undefined ? "" : `: ${JSON.stringify(detail)}`}`);
  }
}
async function rejects(promise) {
  try {
    await promise;
    return null;
  } catch (e) {
    return e;
  }
}

// --- WebSocket, both directions -------------------------------------------
const ws = new WebSocket(url);
await new Promise((resolve, reject) => {
  ws.once("open", resolve);
  ws.once("error", reject);
});
const rpc = new JSONRPCServerAndClient(
  new JSONRPCServer(),
  new JSONRPCClient((request) => {
    ws.send(JSON.stringify(request));
    return Promise.resolve();
  }),
);
const ticks = [];
const raw = [];
ws.on("message", (data) => {
  const message = JSON.parse(data.toString());
  raw.push(message);
  rpc.receiveAndSend(message);
});
ws.on("close", () => rpc.rejectAllPendingRequests("connection closed"));
rpc.addMethod("client/double", ({ x }) => 2 * x);
rpc.addMethod("demo/tick", (params) => {
  ticks.push(params);
});

check("square [7]", (await rpc.request("demo/square", [7])) === 49);
check("square {n: 7}", (await rpc.request("demo/square", { n: 7 })) === 49);
check("square 1.5 (any number)", (await rpc.request("demo/square", [1.5])) === 2.25);
check("add {a, b}", (await rpc.request("demo/add", { a: 2, b: 40 })) === 42);
let e = await rejects(rpc.request("demo/add", { a: 1, b: "x" }));
check("add with a string b: -32602 naming b", e && e.code === -32602 && /`b`/.test(e.message), e && { code: e.code, message: e.message });
e = await rejects(rpc.request("demo/add", { a: 1 }));
check("add without b: -32602 naming b", e && e.code === -32602 && /`b`/.test(e.message), e && e.message);
const value = { s: "x", n: 1, f: 2.5, a: [1, null, true], o: { deep: [{}] } };
const echoed = await rpc.request("demo/echo", { value });
check("echo returns the value unchanged", JSON.stringify(echoed) === JSON.stringify(value), echoed);
e = await rejects(rpc.request("demo/fail", {}));
check(
  "fail: bad thing, data.code E_BAD, a server-error code",
  e && e.message === "bad thing" && e.data && e.data.code === "E_BAD" && e.code <= -32000 && e.code >= -32099,
  e && { code: e.code, message: e.message, data: e.data },
);
e = await rejects(rpc.request("demo/nosuch", {}));
check("unknown method: -32601", e && e.code === -32601, e && e.code);

const started = Date.now();
const slept = await Promise.all([1, 2, 3, 4, 5].map(() => rpc.request("demo/sleep", { ms: 200 })));
const took = Date.now() - started;
check("sleeps run concurrently", slept.every((s) => s === "slept") && took < 900, { took });

const n = await rpc.request("demo/ticks", { n: 5 });
check("ticks: the response is n", n === 5, n);
check(
  "ticks: n demo/tick notifications, in order, before the response",
  ticks.length === 5 && ticks.every((t, i) => t.seq === i),
  ticks,
);

check("callMeBack: the server calls client/double", (await rpc.request("demo/callMeBack", { x: 20 })) === 41);

rpc.notify("demo/notify", { tag: "first" });
rpc.notify("demo/notify", { tag: "second" });
const tags = await rpc.request("demo/notified", {});
check("notifications arrive in order", JSON.stringify(tags) === '["first","second"]', tags);

// A batch: two requests and a notification; only the requests answer.
const batch = await rpc.client.requestAdvanced([
  { jsonrpc: "2.0", id: 1001, method: "demo/add", params: { a: 1, b: 2 } },
  { jsonrpc: "2.0", method: "demo/notify", params: { tag: "third" } },
  { jsonrpc: "2.0", id: 1002, method: "demo/square", params: [3] },
]);
check(
  "batch: responses for the requests only",
  Array.isArray(batch) && batch.length === 2 && batch.find((r) => r.id === 1001).result === 3 && batch.find((r) => r.id === 1002).result === 9,
  batch,
);

// Bad input on the same socket: the right error, and the socket still works.
const before = raw.length;
ws.send("this is not json");
ws.send("[]");
ws.send(JSON.stringify({ jsonrpc: "2.0", id: 77, method: 5 }));
await new Promise((r) => setTimeout(r, 300));
const errors = raw.slice(before).map((m) => m.error && m.error.code);
check("bad input: -32700, -32600, -32600", JSON.stringify(errors) === "[-32700,-32600,-32600]", raw.slice(before));
check("still usable after bad input", (await rpc.request("demo/add", { a: 5, b: 5 })) === 10);
ws.close();

// --- HTTP POST --------------------------------------------------------------
const http = new JSONRPCClient(async (request) => {
  const response = await fetch(httpUrl, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(request),
  });
  if (response.status === 200) http.receive(await response.json());
  else if (request.id !== undefined) throw new Error(response.statusText);
});
check("http: add", (await http.request("demo/add", { a: 20, b: 22 })) === 42);
e = await rejects(http.request("demo/fail", {}));
check("http: fail carries E_BAD", e && e.data && e.data.code === "E_BAD", e && e.data);
const hb = await http.requestAdvanced([
  { jsonrpc: "2.0", id: 1, method: "demo/square", params: [4] },
  { jsonrpc: "2.0", id: 2, method: "demo/echo", params: { value: "v" } },
]);
check("http: batch", Array.isArray(hb) && hb.length === 2 && hb.find((r) => r.id === 1).result === 16, hb);
const note = await fetch(httpUrl, {
  method: "POST",
  headers: { "content-type": "application/json" },
  body: JSON.stringify({ jsonrpc: "2.0", method: "demo/notify", params: { tag: "h" } }),
});
check("http: a notification gets 204", note.status === 204, note.status);
const garbage = await fetch(httpUrl, { method: "POST", headers: { "content-type": "application/json" }, body: "{" });
const gj = await garbage.json();
check("http: unparsable body gets -32700 with id null", gj.error && gj.error.code === -32700 && gj.id === null, gj);

process.exit(failed ? 1 : 0);
