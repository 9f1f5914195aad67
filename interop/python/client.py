"""Python clients of `capwire demo serve`'s JSON-RPC face: the standard
library over HTTP POST, and PyPI `websockets` over WebSocket (including the
server calling the client back).

Usage: python3 client.py ws://127.0.0.1:PORT/
Prints one line per check ("ok   ..." / "FAIL ...") and exits non-zero on failure.
"""

import asyncio
import json
import sys
import urllib.request

import websockets

failed = 0


def check(name, cond, detail=None):
    global failed
    if cond:
        print(f"ok   {name}")
    else:
        failed += 1
        print(f"FAIL {name}" + ("" if detail is None else f": {detail!r}"))


def post(url, body, content_type="application/json"):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": content_type})
    with urllib.request.urlopen(req, timeout=10) as resp:
        raw = resp.read()
        return resp.status, (json.loads(raw) if raw else None)


def over_http(url):
    status, r = post(url, {"jsonrpc": "2.0", "id": 1, "method": "demo/add", "params": {"a": 2, "b": 3}})
    check("http: add", status == 200 and r == {"jsonrpc": "2.0", "result": 5, "id": 1}, r)
    _, r = post(url, {"jsonrpc": "2.0", "id": 2, "method": "demo/echo", "params": {"value": [2**64 - 1, -(2**63)]}})
    check("http: 64-bit integers stay exact", r.get("result") == [2**64 - 1, -(2**63)], r)
    _, r = post(url, {"jsonrpc": "2.0", "id": 3, "method": "demo/echo", "params": {"value": [0.1, 1.0, 2**62, -0.0, "é"]}})
    got = r["result"]
    check("http: numbers keep kind and value", got[0] == 0.1 and isinstance(got[1], float) and got[2] == 2**62 and isinstance(got[2], int) and got[4] == "é", got)
    _, r = post(url, {"jsonrpc": "2.0", "id": 4, "method": "demo/fail"})
    e = r.get("error", {})
    check("http: fail", e.get("message") == "bad thing" and e.get("data", {}).get("code") == "E_BAD" and -32099 <= e.get("code", 0) <= -32000, r)
    _, r = post(url, {"jsonrpc": "2.0", "id": 5, "method": "demo/add", "params": {"a": 1, "b": "x"}})
    check("http: wrong type -> -32602 naming b", r["error"]["code"] == -32602 and "`b`" in r["error"]["message"], r)
    _, r = post(url, [
        {"jsonrpc": "2.0", "id": 1, "method": "demo/square", "params": [3]},
        {"jsonrpc": "2.0", "method": "demo/notify", "params": {"tag": "t"}},
        {"jsonrpc": "2.0", "id": 2, "method": "nope/nope"},
        {"foo": "bar"},
    ])
    check("http: mixed batch", isinstance(r, list) and len(r) == 3 and {x["id"] for x in r if x["id"] is not None} == {1, 2}, r)
    status, r = post(url, [{"jsonrpc": "2.0", "method": "demo/notify", "params": {"tag": "t"}}])
    check("http: notification-only batch -> 204", status == 204 and r is None, (status, r))
    _, r = post(url, b"[]")
    check("http: empty batch -> -32600", r["error"]["code"] == -32600 and r["id"] is None, r)
    _, r = post(url, b"{not json")
    check("http: parse error -> -32700", r["error"]["code"] == -32700 and r["id"] is None, r)


async def over_websocket(url):
    async with websockets.connect(url) as ws:
        async def call(msg):
            await ws.send(json.dumps(msg))
            while True:
                m = json.loads(await ws.recv())
                if m.get("method") == "client/double":
                    await ws.send(json.dumps({"jsonrpc": "2.0", "id": m["id"], "result": m["params"]["x"] * 2}))
                    continue
                if "method" in m:
                    notes.append(m)
                    continue
                return m

        notes = []
        r = await call({"jsonrpc": "2.0", "id": 1, "method": "demo/square", "params": {"n": 12}})
        check("ws: square", r["result"] == 144, r)
        r = await call({"jsonrpc": "2.0", "id": 2, "method": "demo/callMeBack", "params": {"x": 4}})
        check("ws: callMeBack via client/double", r["result"] == 9, r)
        r = await call({"jsonrpc": "2.0", "id": 3, "method": "demo/ticks", "params": {"n": 4}})
        check("ws: ticks", r["result"] == 4 and [n["params"]["seq"] for n in notes] == [0, 1, 2, 3] and all(n["method"] == "demo/tick" for n in notes), (r, notes))
        await ws.send(json.dumps({"jsonrpc": "2.0", "method": "demo/notify", "params": {"tag": "x"}}))
        await ws.send(json.dumps({"jsonrpc": "2.0", "method": "demo/notify", "params": {"tag": "y"}}))
        r = await call({"jsonrpc": "2.0", "id": 4, "method": "demo/notified"})
        check("ws: notifications in order", r["result"] == ["x", "y"], r)
        await ws.send("garbage")
        r = json.loads(await ws.recv())
        check("ws: garbage -> -32700, still open", r["error"]["code"] == -32700, r)
        await ws.send(json.dumps({"jsonrpc": "2.0", "id": 5, "method": "demo/sleep", "params": {"ms": 60000}}))
        await ws.send(json.dumps({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": 5}}))
        r = json.loads(await ws.recv())
        check("ws: $/cancelRequest -> -32800", r["id"] == 5 and r["error"]["code"] == -32800, r)
        r = await call({"jsonrpc": "2.0", "id": 6, "method": "demo/add", "params": [1, 2]})
        check("ws: still usable", r["result"] == 3, r)


def main():
    url = sys.argv[1]
    over_http(url.replace("ws://", "http://", 1))
    asyncio.run(over_websocket(url))
    sys.exit(1 if failed else 0)


main()
