"""A capwire broker plugin in Python (stdlib + websockets), over JSON-RPC.

Follows docs/broker.md: reads the discovery file, connects to the broker's
WebSocket with the bearer token, registers two endpoints, sends, receives
on the `receive` stream (notifications `capwire.broker/message`), acks,
replies by correlation id, and checks the errors of bad input.

    python3 broker_plugin.py DATA_DIR/broker.json

Exits 0 when every check passed; prints "N passed, M failed".
"""

import asyncio
import itertools
import json
import os
import sys

import websockets

checks = {"passed": 0, "failed": 0}


def check(what, ok, detail=""):
    if ok:
        checks["passed"] += 1
    else:
        checks["failed"] += 1
        print(f"FAILED: {what} {detail}", file=sys.stderr)


class Plugin:
    """One JSON-RPC connection: requests by id, stream items to a queue."""

    def __init__(self, ws):
        self.ws = ws
        self.ids = itertools.count(1)
        self.pending = {}
        self.messages = asyncio.Queue()
        self.reader = asyncio.create_task(self.read())

    @classmethod
    async def connect(cls, url, token):
        ws = await websockets.connect(
            url, additional_headers={"Authorization": f"Bearer {token}"}
        )
        return cls(ws)

    async def read(self):
        async for text in self.ws:
            msg = json.loads(text)
            if "id" in msg and msg["id"] in self.pending:
                self.pending.pop(msg["id"]).set_result(msg)
            elif msg.get("method") == "capwire.broker/message":
                await self.messages.put(msg["params"])

    async def call(self, method, **params):
        """The response: {"result": ...} or {"error": ...}."""
        rid = next(self.ids)
        answer = asyncio.get_running_loop().create_future()
        self.pending[rid] = answer
        await self.ws.send(
            json.dumps(
                {"jsonrpc": "2.0", "id": rid, "method": f"capwire.broker/{method}",
                 "params": params}
            )
        )
        return await asyncio.wait_for(answer, 10)

    async def start_receiving(self, endpoint_id, window=16):
        """Opens the receive stream; its items arrive in self.messages."""
        rid = next(self.ids)
        self.pending[rid] = asyncio.get_running_loop().create_future()
        await self.ws.send(
            json.dumps(
                {"jsonrpc": "2.0", "id": rid, "method": "capwire.broker/receive",
                 "params": {"endpoint_id": endpoint_id, "window": window}}
            )
        )

    async def next_message(self):
        return await asyncio.wait_for(self.messages.get(), 10)


async def main(discovery_path):
    with open(discovery_path) as f:
        found = json.load(f)
    pid = os.getpid()

    alice = await Plugin.connect(found["ws"], found["token"])
    bob = await Plugin.connect(found["ws"], found["token"])

    r = await alice.call("register", kind="python", pid=pid, label="alice",
                         task_hint="x" * 1000)
    a = r["result"]["endpoint_id"]
    check("task hint truncation is reported", r["result"]["task_hint_truncated"] is True)
    r = await bob.call("register", kind="python", pid=pid, label="bob")
    b = r["result"]["endpoint_id"]

    sent = await alice.call("send", endpoint_id=a, to=b,
                            content={"hello": "from python"},
                            content_type="json", metadata={"trace": "t1"})
    check("send is acknowledged and routed", sent.get("result", {}).get("routed") == "endpoint",
          str(sent))
    correlation = sent["result"]["correlation_id"]

    await bob.start_receiving(b)
    m = await bob.next_message()
    check("the message arrives", m["content"] == {"hello": "from python"}, str(m))
    check("the broker issued its correlation id", m["correlation_id"] == correlation)
    check("metadata is kept and stamped",
          m["metadata"] == {"trace": "t1", "source_endpoint_id": a}, str(m["metadata"]))
    check("first delivery", m["redelivered"] is False and m["delivery_count"] == 1)
    acked = await bob.call("ack", endpoint_id=b, seqs=[m["seq"]])
    check("ack", acked.get("result", {}).get("acked") == 1, str(acked))

    # A reply by correlation id goes back to alice.
    reply = await bob.call("send", endpoint_id=b, in_reply_to=correlation, content="thanks")
    check("reply routed", reply.get("result", {}).get("routed") == "endpoint", str(reply))
    await alice.start_receiving(a)
    m = await alice.next_message()
    check("the reply arrives", m["content"] == "thanks" and m["in_reply_to"] == correlation,
          str(m))
    await alice.call("ack", endpoint_id=a, seqs=[m["seq"]])

    # Bad input gets errors with a machine-readable reason.
    def reason(resp):
        return resp.get("error", {}).get("data", {}).get("reason")

    bad = await alice.call("send", endpoint_id=a, to=b, content=1,
                           metadata={"correlation_id": "mine"})
    check("correlation_id is the broker's", reason(bad) == "correlation_id_forbidden", str(bad))
    bad = await alice.call("send", endpoint_id=a, to=b, content=1,
                           metadata={"source_endpoint_id": b})
    check("source_endpoint_id must be the sender's",
          reason(bad) == "source_endpoint_id_mismatch", str(bad))
    bad = await alice.call("heartbeat", endpoint_id=987654)
    check("unknown endpoint", bad.get("error", {}).get("code") == -32002, str(bad))
    bad = await alice.call("reattach", endpoint_id=b, pid=pid + 1)
    check("reattach needs the pid", reason(bad) == "reattach_pid_mismatch", str(bad))
    bad = await alice.call("send", endpoint_id="a", to=b, content=1)
    check("params are validated", bad.get("error", {}).get("code") == -32602, str(bad))

    hb = await bob.call("heartbeat", endpoint_id=b)
    check("heartbeat", hb.get("result") == "active", str(hb))
    un = await bob.call("unregister", endpoint_id=b)
    check("unregister", "result" in un, str(un))

    # A wrong token is refused and nothing else is said.
    stranger = await websockets.connect(
        found["ws"], additional_headers={"Authorization": "Bearer wrong"}
    )
    await stranger.send(json.dumps({"jsonrpc": "2.0", "id": 1,
                                    "method": "capwire.broker/heartbeat",
                                    "params": {"endpoint_id": a}}))
    refusal = json.loads(await asyncio.wait_for(stranger.recv(), 10))
    check("a wrong token gets unauthenticated",
          refusal.get("error", {}).get("code") == -32000, str(refusal))

    for p in (alice, bob):
        await p.ws.close()
    print(f"{checks['passed']} passed, {checks['failed']} failed")
    return 1 if checks["failed"] else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1])))
