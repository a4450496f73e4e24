// am.js's Offer and Debugger against a scripted WebSocket, the module behind them. The relay
// accepts every upgrade and refuses after it (a close with a code), so an open socket is not
// yet an offer or a telemetry link: what counts as established, when the backoff starts over,
// and which events a socket that is no longer the current one may still cause.
import { test, mock, before } from "node:test";
import assert from "node:assert/strict";
import { Machine, Mirror, Offer, Debugger, AmError, offer as offerOnce, retryDelay } from "../am.js";
import { loaded } from "./wasm.mjs";
import { ScriptedSocket } from "./scripted.mjs";

before(loaded);

const SCHEMA = { states: [{ name: "Msg", multi: true }] };

function statuses(target) {
  const seen = [];
  target.addEventListener("status", (e) => seen.push(e.detail));
  return seen;
}

/** A started offer of a fresh machine over scripted sockets. */
function started(options = {}) {
  ScriptedSocket.made = [];
  const offer = new Offer(new Machine(SCHEMA, { id: "bar" }), "ws://relay/offer/bar", { WebSocket: ScriptedSocket, ...options });
  const seen = statuses(offer);
  offer.start();
  return { offer, seen };
}

/**
 * The next socket is not made before the shortest delay of backoff attempt `attempt` and is
 * made by its longest (the delays are jittered between the two).
 */
function assertRetryAfter(attempt) {
  const before = ScriptedSocket.made.length;
  mock.timers.tick(retryDelay(attempt, () => 0) - 1);
  assert.equal(ScriptedSocket.made.length, before, `the retry waits for attempt ${attempt}'s backoff`);
  mock.timers.tick(retryDelay(attempt, () => 1) - retryDelay(attempt, () => 0) + 1);
  assert.equal(ScriptedSocket.made.length, before + 1, `the retry came after attempt ${attempt}'s backoff`);
}

test("an offer the relay refuses after the upgrade never reports offering, and backs off more each time", () => {
  mock.timers.enable({ apis: ["setTimeout", "setInterval"] });
  try {
    const { offer, seen } = started();
    let settled = "pending";
    offer.ready().then(() => { settled = "resolved"; }, () => { settled = "rejected"; });
    for (let i = 0; i < 5; i++) {
      const socket = ScriptedSocket.made[i];
      socket.open();
      socket.closeWith(4502, "the relay cannot take it now");
      assert.equal(seen.at(-1).state, "disconnected");
      assertRetryAfter(i);
    }
    assert.equal(settled, "pending", "ready() neither resolved nor gave up");
    assert.ok(!seen.some((s) => s.state === "offering"), JSON.stringify(seen));
    assert.notEqual(offer.state, "offering");
    offer.close();
  } finally {
    mock.timers.reset();
  }
});

test("the relay's note makes the offer stand: offering, ready, and the backoff starts over", async () => {
  mock.timers.enable({ apis: ["setTimeout", "setInterval"] });
  try {
    const { offer, seen } = started();
    for (let i = 0; i < 3; i++) {
      ScriptedSocket.made[i].open();
      ScriptedSocket.made[i].closeWith(1006, "");
      assertRetryAfter(i);
    }
    const socket = ScriptedSocket.made[3];
    socket.open();
    assert.equal(offer.state, "connecting", "open is not offering");
    const ready = offer.ready();
    socket.text({ offered: "bar" });
    assert.equal(offer.state, "offering");
    assert.equal(await ready, offer);
    // Established: the next failure waits only attempt 0's backoff.
    socket.closeWith(1001, "relay shutting down");
    assert.equal(seen.at(-1).state, "disconnected");
    assertRetryAfter(0);
    offer.close();
  } finally {
    mock.timers.reset();
  }
});

/** A started debugger over scripted sockets. */
function debuggerOver(options = {}) {
  ScriptedSocket.made = [];
  const debugging = new Debugger("ws://relay/arpc/dbg", { WebSocket: ScriptedSocket, establishedMs: 500, ...options });
  return { debugging, seen: statuses(debugging) };
}

test("a debugger the relay refuses after the upgrade never reports sending, and backs off more each time", () => {
  mock.timers.enable({ apis: ["setTimeout", "setInterval"] });
  try {
    const { debugging, seen } = debuggerOver();
    for (let i = 0; i < 5; i++) {
      const socket = ScriptedSocket.made[i];
      socket.open();
      mock.timers.tick(10);
      socket.closeWith(4502, "target dbg is unreachable");
      assert.equal(seen.at(-1).state, "disconnected");
      assert.deepEqual(socket.sent, [], "nothing is sent on a socket not yet established");
      assertRetryAfter(i);
    }
    assert.ok(!seen.some((s) => s.state === "sending"), JSON.stringify(seen));
    debugging.close();
  } finally {
    mock.timers.reset();
  }
});

test("a debugger socket that stays open is sending, and the backoff starts over", () => {
  mock.timers.enable({ apis: ["setTimeout", "setInterval"] });
  try {
    const { debugging, seen } = debuggerOver();
    for (let i = 0; i < 3; i++) {
      ScriptedSocket.made[i].open();
      ScriptedSocket.made[i].closeWith(4502, "target dbg is unreachable");
      assertRetryAfter(i);
    }
    const socket = ScriptedSocket.made[3];
    socket.open();
    mock.timers.tick(499);
    assert.equal(debugging.state, "connecting");
    mock.timers.tick(1);
    assert.equal(debugging.state, "sending");
    socket.closeWith(1001, "the target closed the connection");
    assert.equal(seen.at(-1).state, "disconnected");
    assertRetryAfter(0);
    debugging.close();
  } finally {
    mock.timers.reset();
  }
});

test("an offer closed and started again ignores its old socket's late close", () => {
  mock.timers.enable({ apis: ["setTimeout", "setInterval"] });
  try {
    const { offer, seen } = started({ keepaliveMs: 1000 });
    const first = ScriptedSocket.made[0];
    first.open();
    first.text({ offered: "bar" });
    offer.close();
    offer.start();
    const second = ScriptedSocket.made[1];
    second.open();
    second.text({ offered: "bar" });
    assert.equal(offer.state, "offering");
    // The first socket's close arrives only now, as a browser's does.
    first.closeWith(1000, "offer closed");
    first.text({ open: "0".repeat(32) });
    assert.equal(offer.state, "offering", JSON.stringify(seen.at(-1)));
    mock.timers.tick(60_000);
    assert.equal(ScriptedSocket.made.length, 2, "no third socket (the relay would refuse it: 4409)");
    assert.ok(second.sent.includes("ping"), "the second socket's keepalive runs");
    offer.close();
  } finally {
    mock.timers.reset();
  }
});

test("a name offered already (4409) is shown refused, then retried with backoff until the relay takes it", async () => {
  mock.timers.enable({ apis: ["setTimeout", "setInterval"] });
  try {
    // A tab reloaded after its offer socket died silently: the relay holds the old offer
    // until its idle timeout.
    const { offer, seen } = started();
    const refusals = offer.ready();
    for (let i = 0; i < 3; i++) {
      ScriptedSocket.made[i].open();
      ScriptedSocket.made[i].closeWith(4409, '"bar" is offered by another page already; close it there first');
      assert.deepEqual(seen.at(-1), { state: "refused", reason: '"bar" is offered by another page already; close it there first', code: 4409 });
      assertRetryAfter(i);
    }
    await assert.rejects(refusals, (e) => e.code === "refused" && e.message.includes("offered by another page"));
    const socket = ScriptedSocket.made[3];
    socket.open();
    socket.text({ offered: "bar" });
    assert.equal(offer.state, "offering");
    offer.close();
  } finally {
    mock.timers.reset();
  }
});

test("a refusal that cannot change (4401, 4403, 4404) ends the offer, no retry", () => {
  mock.timers.enable({ apis: ["setTimeout", "setInterval"] });
  try {
    for (const code of [4401, 4403, 4404]) {
      const { offer, seen } = started();
      ScriptedSocket.made[0].open();
      ScriptedSocket.made[0].closeWith(code, "no");
      assert.deepEqual(seen.at(-1), { state: "refused", reason: "no", code });
      mock.timers.tick(60_000);
      assert.equal(ScriptedSocket.made.length, 1, `${code} is not retried`);
      offer.close();
    }
  } finally {
    mock.timers.reset();
  }
});

test("offer() gives up at the first refusal and leaves nothing retrying", async () => {
  mock.timers.enable({ apis: ["setTimeout", "setInterval"] });
  try {
    ScriptedSocket.made = [];
    const offering = offerOnce(new Machine(SCHEMA, { id: "bar" }), "ws://relay/offer/bar", { WebSocket: ScriptedSocket });
    while (ScriptedSocket.made.length === 0) await new Promise((r) => setImmediate(r));
    ScriptedSocket.made[0].open();
    ScriptedSocket.made[0].closeWith(4409, "offered already");
    await assert.rejects(offering, (e) => e.code === "refused");
    mock.timers.tick(60_000);
    assert.equal(ScriptedSocket.made.length, 1, "no retry after offer() gave up");
  } finally {
    mock.timers.reset();
  }
});

test("an offer takes at most maxConnections node connections at once", () => {
  mock.timers.enable({ apis: ["setTimeout", "setInterval"] });
  try {
    const { offer } = started({ maxConnections: 2 });
    const socket = ScriptedSocket.made[0];
    socket.open();
    socket.text({ offered: "bar" });
    for (let n = 0; n < 4; n++) socket.text({ open: n.toString(16).padStart(32, "0") });
    assert.equal(ScriptedSocket.made.length, 3, "the offer's socket and two node connections");
    assert.equal(offer.conns.size, 2);
    offer.close();
  } finally {
    mock.timers.reset();
  }
});

test("a node connection with over maxBuffered bytes waiting in its socket is dropped, one under it stays", async () => {
  // A node's hello, as a browser mirror writes it.
  ScriptedSocket.made = [];
  const mirror = new Mirror("ws://relay/arpc/bar", { WebSocket: ScriptedSocket });
  mirror.start();
  while (ScriptedSocket.made.length === 0) await new Promise((r) => setImmediate(r));
  ScriptedSocket.made[0].open();
  const hello = ScriptedSocket.made[0].sent[0].slice();
  mirror.close();

  for (const [waiting, dropped] of [[1024, false], [1025, true]]) {
    const { offer } = started({ maxBuffered: 1024 });
    try {
      const closed = [];
      offer.addEventListener("connection", (e) => e.detail.state === "closed" && closed.push(e.detail.reason));
      const socket = ScriptedSocket.made[0];
      socket.open();
      socket.text({ offered: "bar" });
      socket.text({ open: "0".repeat(32) });
      const node = ScriptedSocket.made[1];
      node.open();
      // What the tab has not yet written to the relay when the welcome goes out.
      node.bufferedAmount = waiting;
      node.deliver(hello);
      assert.ok(node.sent.length > 0, "the welcome was sent");
      if (dropped) {
        assert.equal(offer.conns.size, 0, "the connection is dropped");
        assert.match(closed[0], /reads too slowly: over 1024 bytes/);
        assert.equal(node.readyState, 2, "its socket is closed");
      } else {
        assert.equal(offer.conns.size, 1, "the connection stays");
        assert.deepEqual(closed, []);
      }
    } finally {
      offer.close();
    }
  }
});

test("a page has one Debugger at a time: a second is refused while the first is open", () => {
  mock.timers.enable({ apis: ["setTimeout", "setInterval"] });
  try {
    const { debugging } = debuggerOver();
    assert.throws(
      () => debuggerOver(),
      (e) => e instanceof AmError && e.code === "debugger_open" && /close\(\) it/.test(e.message),
    );
    debugging.close();
    const { debugging: again } = debuggerOver();
    assert.equal(again.state, "connecting", "once the first is closed, another can start");
    again.close();
  } finally {
    mock.timers.reset();
  }
});
