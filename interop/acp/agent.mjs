// A test ACP agent built on the official SDK's agent side, spoken to over
// stdio (one JSON-RPC message per line). The relay tests spawn it.
//
// What a prompt's first text block says decides the turn:
//   "stream N [BYTES]" N agent_message_chunk updates ("chunk i", padded to BYTES)
//   "permission"       asks session/request_permission, then reports the outcome
//   "slow N MS"        N chunks, MS milliseconds apart (a long turn)
//   "crash"            exits with status 3 in the middle of the turn
//   anything else      echoes the text back as one chunk
import { Readable, Writable } from "node:stream";
import * as acp from "@agentclientprotocol/sdk";

const sessions = new Map(); // sessionId -> { history: [update], cancelled }
let made = 0;
const log = (...a) => process.stderr.write(`[agent ${process.pid}] ${a.join(" ")}\n`);

function record(sessionId, update) {
  sessions.get(sessionId)?.history.push(update);
}

async function send(ctx, sessionId, update) {
  record(sessionId, update);
  await ctx.client.notify("session/update", { sessionId, update });
}

const chunk = (text) => ({
  sessionUpdate: "agent_message_chunk",
  content: { type: "text", text },
});

const app = acp
  .agent({ name: "capwire-relay-test-agent" })
  .onRequest("initialize", () => ({
    protocolVersion: acp.PROTOCOL_VERSION,
    agentCapabilities: { loadSession: true },
    agentInfo: { name: "capwire-relay-test-agent", version: "1.0.0" },
  }))
  .onRequest("session/new", () => {
    const sessionId = `sess-${process.pid}-${++made}`;
    sessions.set(sessionId, { history: [], cancelled: false });
    log("new", sessionId);
    return { sessionId };
  })
  .onRequest("session/load", async (ctx) => {
    const s = sessions.get(ctx.params.sessionId);
    if (!s) throw acp.RequestError.resourceNotFound?.(ctx.params.sessionId) ?? new Error("unknown session");
    for (const update of s.history) {
      await ctx.client.notify("session/update", { sessionId: ctx.params.sessionId, update });
    }
    return {};
  })
  .onNotification("session/cancel", (ctx) => {
    const s = sessions.get(ctx.params.sessionId);
    if (s) s.cancelled = true;
  })
  .onRequest("session/prompt", async (ctx) => {
    const { sessionId, prompt } = ctx.params;
    const s = sessions.get(sessionId);
    if (!s) throw new Error(`unknown session ${sessionId}`);
    s.cancelled = false;
    const text = prompt.find((b) => b.type === "text")?.text ?? "";
    record(sessionId, { sessionUpdate: "user_message_chunk", content: { type: "text", text } });
    const words = text.trim().split(/\s+/);
    switch (words[0]) {
      case "stream": {
        const n = Number(words[1] ?? 10);
        const pad = Number(words[2] ?? 0);
        for (let i = 0; i < n; i++) {
          if (s.cancelled) return { stopReason: "cancelled" };
          const body = `chunk ${i}`;
          await send(ctx, sessionId, chunk(pad > body.length ? body.padEnd(pad, ".") : body));
        }
        return { stopReason: "end_turn" };
      }
      case "slow": {
        const n = Number(words[1] ?? 10);
        const ms = Number(words[2] ?? 50);
        for (let i = 0; i < n; i++) {
          if (s.cancelled) return { stopReason: "cancelled" };
          await send(ctx, sessionId, chunk(`slow ${i}`));
          await new Promise((r) => setTimeout(r, ms));
        }
        return { stopReason: "end_turn" };
      }
      case "permission": {
        const toolCallId = `tool-${Date.now()}`;
        await send(ctx, sessionId, {
          sessionUpdate: "tool_call",
          toolCallId,
          title: "write a file",
          kind: "edit",
          status: "pending",
        });
        const answer = await ctx.client.request("session/request_permission", {
          sessionId,
          toolCall: { toolCallId, title: "write a file", kind: "edit", status: "pending" },
          options: [
            { optionId: "allow", name: "Allow", kind: "allow_once" },
            { optionId: "reject", name: "Reject", kind: "reject_once" },
          ],
        });
        const outcome = answer.outcome.outcome === "selected" ? answer.outcome.optionId : "cancelled";
        await send(ctx, sessionId, chunk(`permission: ${outcome}`));
        return { stopReason: outcome === "cancelled" ? "cancelled" : "end_turn" };
      }
      case "crash": {
        await send(ctx, sessionId, chunk("about to crash"));
        log("crashing on purpose");
        setTimeout(() => process.exit(3), 20);
        return new Promise(() => {});
      }
      default:
        await send(ctx, sessionId, chunk(`echo: ${text}`));
        return { stopReason: "end_turn" };
    }
  });

const stream = acp.ndJsonStream(Writable.toWeb(process.stdout), Readable.toWeb(process.stdin));
const conn = app.connect(stream);
log("ready");
await conn.closed;
log("stdin closed; exiting");
process.exit(0);
