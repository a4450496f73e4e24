// Machines in the page: the Rust core through am.js. Schemas as objects or TOML, handlers as
// JS functions (cancel, fail, mutate from inside), waits and mutations as promises with
// AbortSignal and timeouts, errors by class and code, changes as events and an async iterator.
import { test, before } from "node:test";
import assert from "node:assert/strict";
import { Machine, AmError, TimeoutError } from "../am.js";
import { loaded } from "./wasm.mjs";

before(loaded);

const TOML = `
[[states]]
name = "Start"

[[states]]
name = "Ready"
require = ["Start"]
auto = true

[[states]]
name = "Flag"
require = ["Ready"]
`;

test("a machine from TOML runs its relations: auto states, require", async () => {
  const m = new Machine(TOML, { id: "bar" });
  assert.equal(m.id, "bar");
  assert.deepEqual(m.states, ["Start", "Ready", "Flag", "Exception"]);
  assert.equal(await m.add("Flag"), "Canceled", "Flag requires Ready");
  assert.equal(await m.add("Start"), "Executed");
  assert.deepEqual(m.active(), ["Start", "Ready"], "Ready is auto");
  assert.equal(await m.add("Flag"), "Executed");
  assert.ok(m.is(["Ready", "Flag"]));
  assert.equal(await m.remove("Start"), "Executed");
  assert.ok(m.not(["Start", "Ready", "Flag"]), "what required Start went with it");
  assert.equal(m.tick("Start"), 2);
});

test("a schema object is the topology files' format; a bad one says what is wrong", () => {
  const m = new Machine({ states: [{ name: "A" }, { name: "B", remove: ["A"] }] });
  assert.deepEqual(m.states, ["A", "B", "Exception"]);
  assert.throws(() => new Machine({ states: [{ name: "A", require: ["Nope"] }] }), (e) => e instanceof AmError && e.code === "schema" && /Nope/.test(e.message));
  assert.throws(() => new Machine("[[states]]\nnam = 1"), (e) => e.code === "schema");
});

test("handlers: enter cancels, state mutates from inside, a throw activates Exception", async () => {
  const m = new Machine({ states: [{ name: "A" }, { name: "B" }, { name: "C" }] });
  const seen = [];
  m.on("enter", "C", (e) => { seen.push(e.handler); return e.args.allow === true; });
  assert.equal(await m.add("C", { allow: false }), "Canceled");
  assert.equal(await m.add("C", { allow: true }), "Executed");
  let fromHandler;
  m.on("state", "A", (e) => { fromHandler = m.add("B", { from: e.machine }); });
  await m.add("A");
  assert.equal(await fromHandler, "Executed", "queued, then run");
  assert.ok(m.is(["A", "B"]));
  m.on("end", "B", () => { throw new Error("boom"); });
  assert.equal(await m.err(), null);
  await m.remove("B");
  assert.ok(m.is("Exception"), "the failure activated Exception");
  assert.match(await m.err(), /boom/, "the last error");
  m.on("anyState", (e) => seen.push(`any:${e.called.join(",")}`));
  await m.add("C");
  assert.deepEqual(seen, ["CEnter", "CEnter", "any:C"]);
  assert.throws(() => m.on("enter", "Nope", () => true), (e) => e.code === "unknown_state");
});

test("waits resolve with the clock; unknown states and disposal reject with a code", async () => {
  const m = new Machine({ states: [{ name: "A" }, { name: "B", multi: true }] });
  const a = m.when("A");
  const gone = m.whenNot("A");
  // A multi state ticks twice when added again while active: 0 -> 1 -> 3.
  const ticks = m.whenTicks("B", 3);
  await m.add("A");
  await a;
  await m.remove("A");
  await gone;
  for (let i = 0; i < 2; i++) await m.add("B");
  await ticks;
  const picked = m.whenArgs("B", { id: 2 });
  await m.add("B", { id: 1 });
  await m.add("B", { id: 2 });
  await picked;
  await assert.rejects(m.when("Nope"), (e) => e.code === "unknown_state");
  const never = m.when("A");
  m.dispose();
  await assert.rejects(never, (e) => e instanceof AmError && e.code === "disposed");
});

test("a wait honours its AbortSignal and its timeout", async () => {
  const m = new Machine({ states: [{ name: "A" }] });
  const controller = new AbortController();
  const aborted = m.when("A", { signal: controller.signal });
  controller.abort(new Error("page left"));
  await assert.rejects(aborted, /page left/);
  await assert.rejects(m.when("A", { timeoutMs: 20 }), (e) => e instanceof TimeoutError && e.code === "timeout");
  await assert.rejects(m.when("A", { signal: AbortSignal.abort() }), (e) => e.name === "AbortError");
});

test("changes come as events and as an async iterator, by name", async () => {
  const m = new Machine({ states: [{ name: "A" }, { name: "B" }] });
  const events = [];
  m.addEventListener("change", (e) => events.push(e.detail.changed));
  const controller = new AbortController();
  const iterated = (async () => {
    const out = [];
    for await (const change of m.changes({ signal: controller.signal })) {
      out.push(change.active);
      if (out.length === 2) break;
    }
    return out;
  })();
  await m.add(["A", "B"]);
  await m.remove("A");
  assert.deepEqual(await iterated, [["A", "B"], ["B"]]);
  assert.deepEqual(events, [["A", "B"], ["A"]]);
});

test("a disposed machine lets its handlers go, and what they hold with them", async () => {
  const { setFlagsFromString } = await import("node:v8");
  const { runInNewContext } = await import("node:vm");
  setFlagsFromString("--expose-gc");
  const gc = runInNewContext("gc");
  const m = new Machine(TOML, { id: "held" });
  // Made in a scope of its own, so only the module's handler table holds the closure.
  const watched = (() => {
    const big = new Uint8Array(1 << 20);
    const handler = () => { big[0] += 1; };
    m.on("state", "Start", handler);
    return new WeakRef(handler);
  })();
  assert.equal(await m.add("Start"), "Executed");
  // A WeakRef keeps its target until the job that made it ends.
  await new Promise((r) => setImmediate(r));
  gc();
  assert.ok(watched.deref(), "a live machine keeps its handler");
  m.dispose();
  await new Promise((r) => setImmediate(r));
  gc();
  assert.equal(watched.deref(), undefined, "the disposed machine's handler was let go");
});
