// A JSON-RPC server written with the npm `json-rpc-2.0` package, for a
// capwire client to drive, over WebSocket (`ws`) and HTTP POST on one port:
// calls with params by name, errors with custom codes, notifications both
// ways, and (over WebSocket) calls from this server back to the client.
// Usage: node server.mjs   (prints "listening ws://127.0.0.1:PORT/")
import { createServer } from "node:http";
import { JSONRPCClient, JSONRPCErrorException, JSONRPCServer, JSONRPCServerAndClient } from "json-rpc-2.0";
import { WebSocketServer } from "ws";

// HTTP: one server for every request.
const overHttp = new JSONRPCServer();
overHttp.addMethod("shop/price", ({ sku, qty }) => (sku === "A1" ? 250 * qty : 100 * qty));
overHttp.addMethod("shop/buy", ({ sku }) => {
  throw new JSONRPCErrorException(`${sku} is out of stock`, 1001, { sku });
});
const http = createServer((req, res) => {
  let body = "";
  req.on("data", (chunk) => (body += chunk));
  req.on("end", async () => {
    const answer = await overHttp.receiveJSON(body);
    if (answer) {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify(answer));
    } else {
      res.writeHead(204);
      res.end();
    }
  });
});

const wss = new WebSocketServer({ server: http });
wss.on("connection", (socket) => {
  const rpc = new JSONRPCServerAndClient(
    new JSONRPCServer(),
    new JSONRPCClient((request) => {
      socket.send(JSON.stringify(request));
      return Promise.resolve();
    }),
  );
  const notes = [];
  socket.on("message", (data) => rpc.receiveAndSend(JSON.parse(data.toString())));
  socket.on("close", () => rpc.rejectAllPendingRequests("closed"));
  rpc.addMethod("shop/price", ({ sku, qty }) => (sku === "A1" ? 250 * qty : 100 * qty));
  rpc.addMethod("shop/buy", ({ sku }) => {
    throw new JSONRPCErrorException(`${sku} is out of stock`, 1001, { sku });
  });
  rpc.addMethod("shop/note", ({ tag }) => {
    notes.push(tag);
  });
  rpc.addMethod("shop/notes", () => notes);
  // Calls the client's `client/double`, and notifies its `client/progress`.
  rpc.addMethod("shop/askBack", async ({ x }) => {
    rpc.notify("client/progress", { pct: 50 });
    const doubled = await rpc.request("client/double", { x });
    return doubled + 1;
  });
});
http.listen(0, "127.0.0.1", () => {
  console.log(`listening ws://127.0.0.1:${http.address().port}/`);
});
