// The lease and a permission hand-over, with clients on the official SDK's
// client side: the holder drops while the agent waits for a permission; the
// other device, refused before (`not_controller`), takes control, is asked
// the still-open request, and its answer reaches the agent.
// Usage: node sdk_permission.mjs WS_URL TOKEN   (the relay runs with the lease on)
import * as acp from "@agentclientprotocol/sdk";
import { RelayLink, check } from "./bridge.mjs";

const [url, token] = process.argv.slice(2);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let askedA = 0;
const linkA = new RelayLink(url, token, { clientId: "laptop" });
await linkA.open();
const connA = acp
  .client({ name: "laptop" })
  .onRequest("session/request_permission", () => {
    askedA++;
    return new Promise(() => {}); // never answers: the laptop is about to vanish
  })
  .connect(linkA.stream());
await connA.agent.request("initialize", { protocolVersion: acp.PROTOCOL_VERSION, clientCapabilities: {} });
const session = await connA.agent.buildSession(process.cwd()).start();

const texts = [];
let askedB = 0;
const linkB = new RelayLink(url, token, { clientId: "phone", sessionId: session.sessionId });
await linkB.open();
const connB = acp
  .client({ name: "phone" })
  .onNotification("session/update", (ctx) => {
    const u = ctx.params.update;
    if (u.sessionUpdate === "agent_message_chunk") texts.push(u.content.text);
  })
  .onRequest("session/request_permission", (ctx) => {
    askedB++;
    check(ctx.params.sessionId === session.sessionId, "the permission names the session");
    return { outcome: { outcome: "selected", optionId: "allow" } };
  })
  .connect(linkB.stream());

// The laptop prompts first and so holds the lease.
const turn = session.prompt("permission");
turn.catch(() => {});
await linkA.waitFor((m) => m.method === "session/request_permission");
check(askedA === 0 || askedA === 1, "the holder is asked");
check(askedB === 0, "a watcher is not asked");

// The phone may not drive while the laptop holds the lease.
let refused;
try {
  await connB.agent.request("session/prompt", { sessionId: session.sessionId, prompt: [{ type: "text", text: "hi" }] });
} catch (e) {
  refused = e;
}
check(refused?.code === -32001 && refused?.data?.reason === "not_controller", `not_controller: ${JSON.stringify(refused)}`);

// The laptop vanishes with the permission unanswered.
await linkA.drop();
await sleep(100);
const control = linkB.waitFor((m) => m.method === "_relay/control" && m.params.holder === "phone");
const took = await linkB.call("_relay/take_control", {});
check(took.holder === "phone" && took.epoch >= 2, `take_control: ${JSON.stringify(took)}`);
await control;
const end = Date.now() + 10000;
while (!texts.includes("permission: allow")) {
  check(Date.now() < end, `the agent got the phone's answer (texts ${JSON.stringify(texts)})`);
  await sleep(10);
}
check(askedB === 1, `the new holder is asked once (${askedB})`);
console.log(JSON.stringify({ ok: true, askedA, askedB }));
await linkB.close();
process.exit(0);
