// am.js's Mirror against a scripted WebSocket, the module behind it: which closes it retries
// (with backoff) and which it takes as final (permanent relay close codes, permanent refusals
// by the source), the reason it shows, the hello it sends and the keepalive of a live one.
// The server's bytes are fixtures written out by hand (PROTOCOL.md).
import { test, mock, before } from "node:test";
import assert from "node:assert/strict";
import { Mirror, PERMANENT_CLOSE_CODES, retryDelay, closeReason, NotConnectedError } from "../am.js";
import { loaded } from "./wasm.mjs";
import { ScriptedSocket } from "./scripted.mjs";

before(loaded);

/** A frame around a message body (PROTOCOL.md 3: the head is the length times two). */
const frame = (body) => Uint8Array.from([body.length * 2, ...body]);
// A welcome (type 1): ancestry ["w"], schema [A] (Exception added by the mirror) without
// groups, clock [1, 0], queue tick 1, nothing granted beyond the defaults, no parent id, no
// tags.
const welcome = frame([0x01, 0x01, 0x01, 0x77, 0x01, 0x01, 0x01, 0x41, 0, 0, 0, 0, 0, 0, 0x00, 0x02, 0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00]);
const refused = (kind, reason = "no") => frame([0x02, kind, reason.length, ...new TextEncoder().encode(reason)]);

function statuses(mirror) {
  const seen = [];
  mirror.addEventListener("status", (e) => seen.push(e.detail));
  return seen;
}

/** A started mirror over a scripted socket, once its socket exists. */
async function started(options = {}) {
  ScriptedSocket.made = [];
  const mirror = new Mirror("ws://relay/arpc/demo", { WebSocket: ScriptedSocket, ...options });
  const seen = statuses(mirror);
  mirror.start();
  while (ScriptedSocket.made.length === 0) await new Promise((r) => setImmediate(r));
  return { mirror, seen, socket: ScriptedSocket.made[0] };
}

test("the hello goes out on open and a welcome makes the mirror ready", async () => {
  const { mirror, socket } = await started();
  socket.open();
  assert.deepEqual(socket.sentTypes(), [0], "the hello (type 0)");
  const ready = mirror.ready();
  socket.deliver(welcome);
  await ready;
  assert.equal(mirror.state, "ready");
  assert.deepEqual(mirror.states, ["A", "Exception"]);
  assert.ok(mirror.is("A"));
  const sent = mirror.add("A");
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(socket.sentTypes(), [0, 4], "the mutation (type 4)");
  socket.closeWith(1006, "");
  await assert.rejects(sent, (e) => e instanceof NotConnectedError && e.code === "not_connected");
  assert.ok(mirror.is("A"), "the last clock known stays");
  mirror.close();
});

test("permanent relay close codes end the mirror with the reason, no retry", async () => {
  mock.timers.enable({ apis: ["setTimeout"] });
  try {
    for (const code of PERMANENT_CLOSE_CODES) {
      const { mirror, seen, socket } = await started();
      socket.open();
      socket.closeWith(code, "this relay needs a token and none was given");
      mock.timers.tick(60_000);
      assert.equal(ScriptedSocket.made.length, 1, `${code}: no second connection`);
      assert.deepEqual(seen.at(-1), { state: "refused", reason: "this relay needs a token and none was given", code });
      await assert.rejects(mirror.ready(), (e) => e.code === "refused");
    }
  } finally {
    mock.timers.reset();
  }
});

test("transient closes are retried with growing, jittered delays", async () => {
  mock.timers.enable({ apis: ["setTimeout"] });
  try {
    const { mirror, seen } = await started();
    for (const [i, code] of [4502, 4503, 4504, 4408, 1006, 1001].entries()) {
      ScriptedSocket.made[i].closeWith(code, code === 1006 ? "" : `reason ${code}`);
      assert.equal(seen.at(-1).state, "disconnected");
      assert.equal(seen.at(-1).code, code);
      assert.equal(seen.at(-1).reason, code === 1006 ? "closed (1006)" : `reason ${code}`);
      mock.timers.tick(retryDelay(i, () => 1));
      assert.equal(ScriptedSocket.made.length, i + 2, `${code} is retried`);
    }
    mirror.close();
  } finally {
    mock.timers.reset();
  }
});

test("a source's permanent refusal ends the mirror; a full server is retried", async () => {
  mock.timers.enable({ apis: ["setTimeout"] });
  try {
    const kinds = { Version: 0, UnknownSource: 1, Auth: 2, Acl: 3, Loop: 4, Full: 5, BadHello: 6, Timeout: 7 };
    for (const [kind, number] of Object.entries(kinds)) {
      const { mirror, seen, socket } = await started();
      socket.open();
      socket.deliver(refused(number));
      socket.closeWith(4000, "");
      const permanent = ["Version", "UnknownSource", "Auth", "Acl", "BadHello"].includes(kind);
      assert.equal(seen.at(-1).reason, `refused (${kind}): no`);
      assert.equal(seen.at(-1).state, permanent ? "refused" : "disconnected", kind);
      mock.timers.tick(60_000);
      assert.equal(ScriptedSocket.made.length > 1, !permanent, `${kind} retried: ${!permanent}`);
      mirror.close();
    }
  } finally {
    mock.timers.reset();
  }
});

test("a ready mirror pings at its keepalive interval", async () => {
  const { mirror, socket } = await started({ keepaliveMs: 50 });
  socket.open();
  socket.deliver(welcome);
  const deadline = Date.now() + 5000;
  while (socket.sentTypes().filter((t) => t === 10).length < 2 && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 10));
  }
  assert.ok(socket.sentTypes().filter((t) => t === 10).length >= 2, `pings (type 10): ${socket.sentTypes()}`);
  mirror.close();
});

test("retry delays double up to 5 s, between half and all of the ceiling", () => {
  assert.equal(retryDelay(0, () => 0), 50);
  assert.equal(retryDelay(0, () => 1), 100);
  assert.equal(retryDelay(3, () => 0.5), 600);
  assert.equal(retryDelay(20, () => 1), 5000);
});

test("close reasons are cut to 123 UTF-8 bytes on a character boundary", () => {
  assert.equal(closeReason("short"), "short");
  const cut = closeReason("ż".repeat(100));
  assert.equal(new TextEncoder().encode(cut).length, 122);
  assert.equal(closeReason("x".repeat(1 << 20)).length, 123);
});

test("close() says goodbye, and start() after it connects a new mirror that the old socket cannot disturb", async () => {
  const { mirror, seen, socket } = await started();
  socket.open();
  socket.deliver(welcome);
  await mirror.ready();
  mirror.close();
  assert.equal(socket.sentTypes().at(-1), 12, "the bye (type 12) went out before the close");
  mirror.start();
  while (ScriptedSocket.made.length < 2) await new Promise((r) => setImmediate(r));
  const second = ScriptedSocket.made[1];
  // The first socket's close event arrives late: it is not this mirror's any more.
  socket.closeWith(1000, "closed by the page");
  second.open();
  assert.deepEqual(second.sentTypes(), [0], "a hello on the new socket");
  second.deliver(welcome);
  await mirror.ready();
  assert.equal(mirror.state, "ready");
  assert.ok(!seen.some((s) => s.state === "refused"), JSON.stringify(seen));
  mirror.close();
});
