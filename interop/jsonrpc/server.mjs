// A JSON-RPC server written with the npm `json-rpc-2.0` package, over
// WebSocket (`ws`), for a capwire client to drive: calls with params by
// name, errors with custom codes, notifications both ways, and calls from
// this server back to the client.
// Usage: node server.mjs   (prints "listening ws://127.0.0.1:PORT/")
import { JSONRPCClient, JSONRPCErrorException, JSONRPCServer, JSONRPCServerAndClient } from "json-rpc-2.0";
import { WebSocketServer } from "ws";

const wss = new WebSocketServer({ host: "127.0.0.1", port: 0 });
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
wss.on("listening", () => {
  console.log(`listening ws://127.0.0.1:${wss.address().port}/`);
});
