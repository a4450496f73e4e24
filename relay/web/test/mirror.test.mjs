// am.js's Mirror against a scripted WebSocket: which closes it retries (with backoff) and
// which it takes as final (permanent relay close codes, permanent protocol refusals), the
// reason it shows, and the keepalive it sends on a live connection.
import { test, mock } from "node:test";
import assert from "node:assert/strict";
import { Mirror, PERMANENT_CLOSE_CODES, FrameReader, decodeMessage, frame, retryDelay } from "../am.js";

/** A WebSocket the test drives: it records what the mirror sends and opens on demand. */
class ScriptedSocket {
  static OPEN = 1;
  static made = [];
  constructor(url) {
    this.url = url;
    this.sent = [];
    this.readyState = 0;
    ScriptedSocket.made.push(this);
  }
  send(bytes) { this.sent.push(bytes); }
  close() { this.readyState = 3; }
  open() { this.readyState = 1; this.onopen?.(); }
  /** The relay closes with a code and reason (what a browser reports in onclose). */
  closeWith(code, reason) { this.readyState = 3; this.onclose?.({ code, reason }); }
  deliver(bytes) { this.onmessage?.({ data: bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) }); }
  /** The messages the mirror sent, decoded by type number. */
  sentTypes() { return this.sent.map((b) => { const r = new FrameReader(); r.push(b); return r.next()[0]; }); }
}

function withSockets(fn) {
  return async () => {
    ScriptedSocket.made = [];
    globalThis.WebSocket = ScriptedSocket;
    mock.timers.enable({ apis: ["setTimeout", "setInterval"] });
    try { await fn(); } finally { mock.timers.reset(); delete globalThis.WebSocket; }
  };
}

function statuses(mirror) {
  const seen = [];
  mirror.addEventListener("status", (e) => seen.push(e.detail));
  return seen;
}

// A welcome with schema [A] and clock [1] (PROTOCOL.md 6), then a Refused of a given kind.
// (no groups, no parent id, no tags).
const welcome = Uint8Array.from([0x01, 0x01, 0x01, 0x77, 0x01, 0x01, 0x01, 0x41, 0, 0, 0, 0, 0, 0, 0x00, 0x01, 0x01, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00]);
const refusedMessage = (kind) => Uint8Array.from([0x02, kind, 0x02, 0x6e, 0x6f]);

test("permanent relay close codes end the mirror with the reason, no retry", withSockets(async () => {
  for (const code of PERMANENT_CLOSE_CODES) {
    ScriptedSocket.made = [];
    const mirror = new Mirror("ws://relay/arpc/demo");
    const seen = statuses(mirror);
    mirror.start();
    ScriptedSocket.made[0].open();
    ScriptedSocket.made[0].closeWith(code, "this relay needs a token and none was given");
    mock.timers.tick(60_000);
    assert.equal(ScriptedSocket.made.length, 1, `${code}: no second connection`);
    assert.deepEqual(seen.at(-1), { state: "refused", reason: "this relay needs a token and none was given", code });
    assert.equal(mirror.state, "refused");
  }
}));

test("transient closes are retried with growing, jittered delays", withSockets(async () => {
  const mirror = new Mirror("ws://relay/arpc/demo");
  const seen = statuses(mirror);
  mirror.start();
  for (const [i, code] of [4502, 4503, 4504, 4408, 1006, 1001].entries()) {
    const socket = ScriptedSocket.made[i];
    socket.closeWith(code, code === 1006 ? "" : `reason ${code}`);
    assert.equal(seen.at(-1).state, "disconnected");
    assert.equal(seen.at(-1).code, code);
    assert.equal(seen.at(-1).reason, code === 1006 ? "closed (1006)" : `reason ${code}`);
    mock.timers.tick(retryDelay(i, () => 1));
    assert.equal(ScriptedSocket.made.length, i + 2, `${code} is retried`);
  }
  mirror.close();
}));

test("retry delays double up to 5 s, between half and all of the ceiling", () => {
  assert.equal(retryDelay(0, () => 0), 50);
  assert.equal(retryDelay(0, () => 1), 100);
  assert.equal(retryDelay(3, () => 0.5), 600);
  assert.equal(retryDelay(20, () => 1), 5000);
  assert.equal(retryDelay(20, () => 0), 2500);
});

test("a server's permanent refusal ends the mirror; a full server is retried", withSockets(async () => {
  const kinds = { Version: 0, UnknownSource: 1, Auth: 2, Acl: 3, Loop: 4, Full: 5, BadHello: 6, Timeout: 7 };
  for (const [kind, number] of Object.entries(kinds)) {
    ScriptedSocket.made = [];
    const mirror = new Mirror("ws://relay/arpc/demo");
    const seen = statuses(mirror);
    mirror.start();
    const socket = ScriptedSocket.made[0];
    socket.open();
    socket.deliver(frame(refusedMessage(number)));
    socket.closeWith(4000, "");
    const permanent = ["Version", "UnknownSource", "Auth", "Acl", "BadHello"].includes(kind);
    assert.equal(seen.at(-1).reason, `refused (${kind}): no`);
    assert.equal(seen.at(-1).state, permanent ? "refused" : "disconnected", kind);
    mock.timers.tick(60_000);
    assert.equal(ScriptedSocket.made.length > 1, !permanent, `${kind} retried: ${!permanent}`);
    mirror.close();
  }
}));

test("a ready mirror pings at its keepalive interval", withSockets(async () => {
  const mirror = new Mirror("ws://relay/arpc/demo", { keepaliveMs: 300 });
  mirror.start();
  const socket = ScriptedSocket.made[0];
  socket.open();
  assert.deepEqual(socket.sentTypes(), [0], "the hello");
  socket.deliver(frame(welcome));
  assert.equal(mirror.state, "ready");
  assert.ok(mirror.is("A"));
  mock.timers.tick(299);
  assert.deepEqual(socket.sentTypes(), [0]);
  mock.timers.tick(1);
  mock.timers.tick(300);
  assert.deepEqual(socket.sentTypes(), [0, 10, 10], "two pings in 600 ms");
  assert.equal(decodeMessage(Uint8Array.from([0x0b, 0x05])).type, "Pong");
  socket.closeWith(4408, "nothing from the browser");
  const before = socket.sent.length;
  mock.timers.tick(1000);
  assert.equal(socket.sent.length, before, "no pings after the close");
  mirror.close();
}));

test("a long non-ASCII refusal stays permanent and keeps its reason", withSockets(async () => {
  // Browsers throw from close() on a reason over 123 UTF-8 bytes.
  const close = ScriptedSocket.prototype.close;
  ScriptedSocket.prototype.close = function (code, reason = "") {
    if (new TextEncoder().encode(reason).length > 123) throw new SyntaxError("close reason too long");
    close.call(this);
  };
  try {
    const text = "żółć".repeat(30);
    const utf8 = new TextEncoder().encode(text);
    // Over the 123 bytes a close reason may hold; under 251, so its length is one byte.
    assert.ok(utf8.length > 123 && utf8.length < 251, `${utf8.length}`);
    const varint = [utf8.length];
    const mirror = new Mirror("ws://relay/arpc/demo");
    const seen = statuses(mirror);
    mirror.start();
    const socket = ScriptedSocket.made[0];
    socket.open();
    socket.deliver(frame(Uint8Array.from([0x02, 1, ...varint, ...utf8])));
    socket.closeWith(4000, "");
    assert.equal(seen.at(-1).state, "refused", JSON.stringify(seen));
    assert.equal(seen.at(-1).reason, `refused (UnknownSource): ${text}`);
    mock.timers.tick(60_000);
    assert.equal(ScriptedSocket.made.length, 1, "not retried");
    mirror.close();
  } finally {
    ScriptedSocket.prototype.close = close;
  }
}));

test("close reasons are cut to 123 UTF-8 bytes on a character boundary", async () => {
  const { closeReason } = await import("../am.js");
  assert.equal(closeReason("short"), "short");
  const cut = closeReason("ż".repeat(100));
  assert.equal(new TextEncoder().encode(cut).length, 122);
  assert.equal(cut, "ż".repeat(61));
  assert.equal(closeReason("x".repeat(1 << 20)).length, 123);
});

test("a mirror answers its source's groups, parent id and tags", withSockets(async () => {
  const mirror = new Mirror("ws://relay/arpc/demo");
  mirror.start();
  const socket = ScriptedSocket.made[0];
  socket.open();
  // PROTOCOL.md's second welcome: A, B, Exception; group G = [B, A]; A active; parent "p",
  // tag "t".
  socket.deliver(frame(Uint8Array.from([
    0x01, 0x01, 0x01, 0x77, 0x01, 0x03,
    0x01, 0x41, 0, 0, 0, 0, 0, 0,
    0x01, 0x42, 0x01, 0x01, 0x41, 0, 0, 0, 0, 0,
    0x09, 0x45, 0x78, 0x63, 0x65, 0x70, 0x74, 0x69, 0x6f, 0x6e, 0, 0, 0, 0, 0, 0x01,
    0x01, 0x01, 0x47, 0x02, 0x01, 0x42, 0x01, 0x41,
    0x03, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x01, 0x70, 0x01, 0x01, 0x74,
  ])));
  assert.equal(mirror.state, "ready");
  assert.deepEqual(mirror.groups, [{ name: "G", states: ["B", "A"] }]);
  assert.equal(mirror.parentId, "p");
  assert.deepEqual(mirror.tags, ["t"]);
  assert.equal(mirror.switchGroup("G"), "A");
  assert.equal(mirror.switchGroup("Nope"), null);
  // A diff activates B (checksum of [1, 1, 0]): the group's first active state is B now.
  socket.deliver(frame(Uint8Array.from([0x03, 0x01, 0x01, 0x01, 0x01, 0x86, 0xfc, 0xcf, 0xff])));
  assert.equal(mirror.switchGroup("G"), "B");
  // A schema change without groups takes them away.
  socket.deliver(frame(Uint8Array.from([0x09, 0x01, 0x01, 0x41, 0, 0, 0, 0, 0, 0, 0x00, 0x01, 0x01, 0x02])));
  assert.deepEqual(mirror.groups, []);
  assert.equal(mirror.switchGroup("G"), null);
  assert.ok(mirror.is("A"));
  mirror.close();
}));
