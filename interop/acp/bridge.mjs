// A WebSocket bridge between the capwire relay and the official ACP SDK's
// client side. The relay speaks plain ACP plus a few `_relay/*` messages and
// a `_seq` stamp on ring frames; the bridge attaches (with the last sequence
// number it saw), keeps `_relay/*` traffic to itself, strips `_seq`, and hands
// the SDK a Stream of ordinary ACP messages.
import WebSocket from "ws";

export class RelayLink {
  constructor(url, token, opts = {}) {
    this.url = url;
    this.token = token;
    this.clientId = opts.clientId;
    this.lastSeq = opts.lastSeq ?? 0;
    this.epoch = opts.epoch;
    this.sessionId = opts.sessionId;
    this.welcomes = [];
    this.relayNotes = []; // _relay/* notifications, in order
    this.seqs = []; // every _seq received, in order
    this.frames = []; // every ring frame (parsed, _seq kept)
    this.listeners = [];
    this.pending = new Map();
    this.nextId = 0;
    this.closed = new Promise((r) => (this._closed = r));
  }

  /** Opens the socket and attaches; resolves with the welcome. */
  async open() {
    this.ws = new WebSocket(this.url, { headers: { Authorization: `Bearer ${this.token}` } });
    let push;
    this.readable = new ReadableStream({ start: (c) => (push = c) });
    this.writable = new WritableStream({
      write: (msg) => {
        if (this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(msg));
      },
    });
    this.ws.on("message", (data) => {
      const msg = JSON.parse(data.toString());
      if (typeof msg._seq === "number") {
        this.seqs.push(msg._seq);
        this.frames.push(msg);
        this.lastSeq = msg._seq;
        delete msg._seq;
      }
      if (typeof msg.id === "string" && msg.id.startsWith("_relay") && !msg.method) {
        const p = this.pending.get(msg.id);
        this.pending.delete(msg.id);
        if (p) (msg.error ? p.reject(Object.assign(new Error(msg.error.message), msg.error)) : p.resolve(msg.result));
        return;
      }
      if (typeof msg.method === "string" && msg.method.startsWith("_relay/")) {
        if (msg.method === "_relay/welcome") this.onWelcome(msg.params);
        this.relayNotes.push(msg);
        for (const l of this.listeners) l(msg);
        return;
      }
      for (const l of this.listeners) l(msg);
      try {
        push.enqueue(msg);
      } catch {}
    });
    this.ws.on("close", (code, reason) => {
      this.closeCode = code;
      this.closeReason = reason.toString();
      try {
        push.close();
      } catch {}
      this._closed();
    });
    await new Promise((resolve, reject) => {
      this.ws.once("open", resolve);
      this.ws.once("error", reject);
    });
    const welcome = await this.call("_relay/attach", {
      clientId: this.clientId,
      sessionId: this.sessionId,
      lastSeq: this.lastSeq,
      epoch: this.epoch,
    });
    this.onWelcome(welcome);
    return welcome;
  }

  onWelcome(w) {
    this.welcomes.push(w);
    if (w.sessionId !== this.sessionId || w.epoch !== this.epoch) this.lastSeq = 0;
    this.sessionId = w.sessionId;
    this.epoch = w.epoch;
    this.clientId = w.clientId;
    // The gap starts after the welcome: seq numbers from here on count.
    if (w.reset) this.lastSeq = Math.max(0, w.firstSeq - 1);
  }

  /** A `_relay/*` request. */
  call(method, params) {
    const id = `_relay-${++this.nextId}`;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.ws.send(JSON.stringify({ jsonrpc: "2.0", id, method, params }));
    });
  }

  /** The SDK's Stream over this link. */
  stream() {
    return { readable: this.readable, writable: this.writable };
  }

  /** Waits until `pred(msg)` holds for a message received from now on. */
  waitFor(pred, ms = 10000) {
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`timed out waiting (${ms} ms)`)), ms);
      const l = (m) => {
        if (pred(m)) {
          clearTimeout(t);
          this.listeners = this.listeners.filter((x) => x !== l);
          resolve(m);
        }
      };
      this.listeners.push(l);
    });
  }

  close() {
    this.ws.close();
    return this.closed;
  }

  /** Drops the TCP connection without a close handshake (a device vanishing). */
  drop() {
    this.ws.terminate();
    return this.closed;
  }
}

/** Text of an agent_message_chunk / user_message_chunk session/update. */
export function chunkText(msg, kind = "agent_message_chunk") {
  if (msg.method !== "session/update") return undefined;
  const u = msg.params?.update;
  if (u?.sessionUpdate !== kind) return undefined;
  return u.content?.text;
}

export function check(cond, what) {
  if (!cond) {
    console.error(`FAILED: ${what}`);
    process.exit(1);
  }
}
