// Two clients on the official SDK's client side attach to one agent through
// the relay; one drops in the middle of a streamed turn and resumes with its
// last sequence number: it must end with every frame exactly once.
// Usage: node sdk_resume.mjs WS_URL TOKEN
import * as acp from "@agentclientprotocol/sdk";
import { RelayLink, check } from "./bridge.mjs";

const [url, token] = process.argv.slice(2);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function until(cond, what, ms = 15000) {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) check(false, `timed out: ${what}`);
    await sleep(5);
  }
}

// The laptop drives.
const linkA = new RelayLink(url, token, { clientId: "laptop" });
await linkA.open();
const connA = acp.client({ name: "laptop" }).connect(linkA.stream());
const init = await connA.agent.request("initialize", {
  protocolVersion: acp.PROTOCOL_VERSION,
  clientCapabilities: {},
});
check(init.agentCapabilities?.loadSession === true, "initialize through the relay");
const session = await connA.agent.buildSession(process.cwd()).start();

// The phone watches the same session.
const seen = []; // agent text chunks, in arrival order
const typed = []; // user_message_chunk texts
function phone(link) {
  return acp
    .client({ name: "phone" })
    .onNotification("session/update", (ctx) => {
      const u = ctx.params.update;
      check(ctx.params.sessionId === session.sessionId, "only its session's updates");
      if (u.sessionUpdate === "agent_message_chunk") seen.push(u.content.text);
      if (u.sessionUpdate === "user_message_chunk") typed.push(u.content.text);
    })
    .connect(link.stream());
}
const linkB = new RelayLink(url, token, { clientId: "phone", sessionId: session.sessionId });
const w1 = await linkB.open();
check(w1.sessionId === session.sessionId && !w1.reset, "first welcome");
phone(linkB);

const N = 40;
const turn = session.prompt(`slow ${N} 15`);
await until(() => seen.length >= 10, "the phone sees the stream");
const { lastSeq, epoch } = linkB;
await linkB.drop(); // vanishes mid-turn
const missedFrom = seen.length;
await sleep(200); // the turn goes on without it
const linkB2 = new RelayLink(url, token, { clientId: "phone", sessionId: session.sessionId, lastSeq, epoch });
const w2 = await linkB2.open();
check(!w2.reset, "resume within the ring is not a reset");
check(w2.headSeq > lastSeq, "frames were missed while away");
phone(linkB2);

const resp = await turn;
check(resp.stopReason === "end_turn", "the laptop's turn ends");
await until(() => seen.length >= N, `the phone sees all ${N} chunks (has ${seen.length})`);
await sleep(100);
const want = Array.from({ length: N }, (_, i) => `slow ${i}`);
check(JSON.stringify(seen) === JSON.stringify(want), `exactly once, in order: ${JSON.stringify(seen)}`);
check(typed.length === 1 && typed[0] === `slow ${N} 15`, `the prompt is shown on the phone: ${JSON.stringify(typed)}`);
const seqs = [...linkB.seqs, ...linkB2.seqs];
for (let i = 1; i < seqs.length; i++) check(seqs[i] === seqs[i - 1] + 1, `no hole, no duplicate at ${i}: ${seqs[i - 1]} then ${seqs[i]}`);
check(linkB2.seqs[0] === lastSeq + 1, "the gap starts right after lastSeq");
const turnEnd = linkB2.relayNotes.find((m) => m.method === "_relay/turn" && m.params.busy === false);
check(turnEnd?.params.stopReason === "end_turn", "the phone learns the turn ended");
console.log(JSON.stringify({ ok: true, missedFrom, resumedAt: lastSeq, replayed: linkB2.seqs.length }));
await linkA.close();
await linkB2.close();
process.exit(0);
