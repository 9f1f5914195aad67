// capnweb's HTTP batch client against a capwire server's WebSocket port.
// Usage: node batch.mjs http://127.0.0.1:PORT/
import { newHttpBatchRpcSession } from "capnweb";

const url = process.argv[2];
let failed = false;
function check(name, got, want) {
  const ok = JSON.stringify(got) === JSON.stringify(want);
  console.log(`${ok ? "ok  " : "FAIL"} ${name}: ${JSON.stringify(got)}${ok ? "" : ` (want ${JSON.stringify(want)})`}`);
  if (!ok) failed = true;
}

try {
  // One batch: every call made before the flush travels in one POST.
  const api = newHttpBatchRpcSession(url);
  const square = api.square(6);
  const counter = api.makeCounter(2);
  const incremented = counter.increment(3);
  const passed = api.incrementCounter(counter, 4);
  const name = api.getName(9);
  check("one batch", await Promise.all([square, incremented, passed, name]), [36, 5, 9, "user9"]);

  // Errors travel in the batch too.
  const api2 = newHttpBatchRpcSession(url);
  try {
    await api2.fail();
    check("fail() rejects", "resolved", "rejected");
  } catch (e) {
    check("fail() in a batch", [e.name, e.message, e.code], ["RangeError", "bad thing", "E_BAD"]);
  }

  // Batches are POSTs.
  const get = await fetch(url);
  check("GET", get.status, 405);
} catch (e) {
  console.log(`FAIL unexpected: ${e?.stack ?? e}`);
  failed = true;
}
process.exit(failed ? 1 : 0);
