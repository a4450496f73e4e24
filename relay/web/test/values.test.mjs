// Arguments: what the protocol carries (PROTOCOL.md, Value: Null, Bool, Int (i64), Float (f64),
// Str, Bytes, List, Map with string keys) reaches a handler in the module and comes back
// exactly; anything else is a TypeError naming it, never a silent 0 or {}. Nesting is bounded
// by DEPTH_LIMIT, as on the wire.
import { test, before } from "node:test";
import assert from "node:assert/strict";
import { Machine, DEPTH_LIMIT, toWire } from "../am.js";
import { loaded } from "./wasm.mjs";

before(loaded);

/** The arguments as a handler in the page gets them, after a trip through the module. */
async function roundTrip(args) {
  const m = new Machine({ states: [{ name: "A", multi: true }] });
  let seen;
  m.on("state", "A", (e) => { seen = e.args; });
  await m.add("A", args);
  return seen;
}
const nested = (depth) => { let v = 0; for (let i = 0; i < depth; i++) v = [v]; return v; };

test("every kind arrives exactly, integers past 2^53 as bigints", async () => {
  const args = {
    nothing: null, yes: true, int: -7, big: 2n ** 63n - 1n, small: -(2n ** 63n), float: 1.5, huge: 1e300,
    inf: -Infinity, text: "żółć", bytes: Uint8Array.of(1, 2, 255), list: [1, "a", [true]],
    map: new Map([["b", 1], ["a", [null]]]), plain: { x: { y: "z" } },
  };
  const got = await roundTrip(args);
  assert.equal(got.big, 2n ** 63n - 1n);
  assert.equal(got.small, -(2n ** 63n));
  assert.equal(got.int, -7);
  assert.equal(got.huge, 1e300);
  assert.equal(got.inf, -Infinity);
  assert.deepEqual(got.bytes, Uint8Array.of(1, 2, 255));
  assert.deepEqual(got.map, { a: [null], b: 1 });
  assert.deepEqual(got.plain, { x: { y: "z" } });
  assert.deepEqual(got.list, [1, "a", [true]]);
  const special = await roundTrip({ nan: NaN, negZero: -0, safe: 2n ** 53n - 1n });
  assert.ok(Number.isNaN(special.nan));
  assert.ok(Object.is(special.negZero, -0), "-0 keeps its sign");
  assert.equal(special.safe, Number.MAX_SAFE_INTEGER, "safe integers come back as numbers");
  const proto = await roundTrip({ ["__proto__"]: 1 });
  assert.equal(Object.getPrototypeOf(proto), Object.prototype, "a __proto__ key is data");
});

test("nesting is bounded at DEPTH_LIMIT, as in Rust", async () => {
  await roundTrip({ deep: nested(DEPTH_LIMIT) });
  assert.throws(() => toWire(nested(DEPTH_LIMIT + 1)), (e) => e instanceof TypeError && /deeper than 32/.test(e.message));
});

test("what the protocol cannot carry is a TypeError naming it", async () => {
  const cases = [
    [new Date(0), /Date/], [new Map([[1, "a"]]), /number key/], [new Set([1]), /Set/],
    [new Int16Array(2), /Int16Array.*Uint8Array/], [() => 1, /function/], [Symbol("s"), /symbol/],
    [undefined, /undefined; send null/], [2n ** 64n, /18446744073709551616n.*range/],
  ];
  const m = new Machine({ states: [{ name: "A" }] });
  for (const [value, message] of cases) {
    await assert.rejects(m.add("A", { arg: [value] }), (e) => e instanceof TypeError && message.test(e.message) && /args\.arg\[0\]/.test(e.message), String(value));
  }
  const cycle = { a: [] };
  cycle.a.push(cycle);
  await assert.rejects(m.add("A", { cycle }), /cycle/);
  await assert.rejects(m.add("A", [1]), /plain object or a Map/);
  assert.ok(m.not("A"), "nothing was sent");
});
