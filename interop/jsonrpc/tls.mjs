// A foreign WebSocket client (`ws`) over wss:// against
// `capwire demo serve --tls-cert … [--tls-client-ca …]`, with the
// certificates `capwire certs DIR --client alice` wrote.
// Usage: node tls.mjs wss://localhost:PORT/ CERT_DIR tls|mtls
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { WebSocket } from "ws";

const [url, dir, mode] = process.argv.slice(2);
const pem = (name) => readFileSync(join(dir, name));
let failed = 0;
function check(name, cond, detail) {
  console.log(cond ? `ok   ${name}` : `FAIL ${name}: ${JSON.stringify(detail)}`);
  if (!cond) failed++;
}

// Sends one request; resolves with its response, or with the error that
// ended the connection first.
function request(options, method, params) {
  return new Promise((resolve) => {
    const ws = new WebSocket(url, options);
    ws.on("open", () => ws.send(JSON.stringify({ jsonrpc: "2.0", id: 1, method, params })));
    ws.on("message", (d) => {
      resolve({ response: JSON.parse(d.toString()) });
      ws.close();
    });
    ws.on("error", (e) => resolve({ error: e.code || e.message }));
    ws.on("close", () => resolve({ error: "closed" }));
  });
}

const trusted = { ca: pem("ca.pem") };
if (mode === "tls") {
  let r = await request(trusted, "demo/square", [9]);
  check("wss:// with the CA", r.response && r.response.result === 81, r);
  r = await request(trusted, "demo/whoami", []);
  check("the server sees TLS", r.response && r.response.result.tls === true, r);
  r = await request({}, "demo/square", [9]);
  check("without the CA: the certificate is not trusted", r.error && !r.response, r);
} else {
  const alice = { ...trusted, cert: pem("alice.pem"), key: pem("alice.key") };
  let r = await request(alice, "demo/whoami", []);
  check(
    "mutual TLS: the client certificate's name is the identity",
    r.response && r.response.result.identity === "alice" && r.response.result.tls === true,
    r,
  );
  r = await request(trusted, "demo/square", [9]);
  check("no client certificate: refused", r.error && !r.response, r);
}
process.exit(failed ? 1 : 0);
