// A foreign WebSocket client (`ws`) against `capwire demo serve --token`:
// with the bearer token (header, then query parameter) it is served; without
// it, it reads one -32000 error and the connection closes.
// Usage: node token.mjs ws://127.0.0.1:PORT/ TOKEN
import { WebSocket } from "ws";

const [url, token] = process.argv.slice(2);
let failed = 0;
function check(name, cond, detail) {
  console.log(cond ? `ok   ${name}` : `FAIL ${name}: ${JSON.stringify(detail)}`);
  if (!cond) failed++;
}

// Sends one request; resolves with the first message and how the socket closed.
function once(target, options, request) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(target, options);
    let first;
    ws.on("open", () => ws.send(JSON.stringify(request)));
    ws.on("message", (d) => {
      if (first === undefined) first = JSON.parse(d.toString());
      if (first.result !== undefined) ws.close();
    });
    ws.on("close", (code) => resolve({ first, code }));
    ws.on("error", reject);
  });
}

const square = { jsonrpc: "2.0", id: 1, method: "demo/square", params: [9] };
let r = await once(url, { headers: { Authorization: `Bearer ${token}` } }, square);
check("with the Authorization header", r.first && r.first.result === 81, r);
r = await once(`${url}?token=${encodeURIComponent(token)}`, {}, square);
check("with the token query parameter", r.first && r.first.result === 81, r);
r = await once(url, {}, square);
check(
  "without a token: -32000, then closed (1008)",
  r.first && r.first.error && r.first.error.code === -32000 && r.first.id === null && r.code === 1008,
  r,
);
r = await once(url, { headers: { Authorization: "Bearer wrong" } }, square);
check("a wrong token: -32000", r.first && r.first.error && r.first.error.code === -32000, r);
process.exit(failed ? 1 : 0);
