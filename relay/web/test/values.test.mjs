// am.js's values: what the protocol carries (PROTOCOL.md, Value: Null, Bool, Int (i64),
// Float (f64), Str, Bytes, List, Map with string keys) goes exactly; anything else is a
// TypeError naming it, never a silent 0 or {}. Nesting is bounded both ways by DEPTH_LIMIT.
import { test } from "node:test";
import assert from "node:assert/strict";
import { DEPTH_LIMIT, ProtocolError, Reader, Writer, encode } from "../am.js";

const roundTrip = (v) => {
  const r = new Reader(new Writer().value(v).done());
  const out = r.value();
  r.end();
  return out;
};
const tag = (v) => new Writer().value(v).done()[0];
// `depth` lists around a scalar: depth 32 is the deepest either side accepts (as in Rust).
const nested = (depth) => { let v = 0; for (let i = 0; i < depth; i++) v = [v]; return v; };

test("integers beyond 2^53 and i64's ends arrive exactly", () => {
  for (const v of [2n ** 63n - 1n, -(2n ** 63n), 2n ** 53n + 1n, -(2n ** 60n)]) {
    assert.equal(tag(v), 2, `${v} is an Int`);
    assert.equal(roundTrip(v), v);
  }
  assert.equal(roundTrip(2n ** 53n - 1n), Number.MAX_SAFE_INTEGER, "safe ones come back as numbers");
  assert.equal(roundTrip(-5n), -5);
});

test("numbers that are not exact as an Int go as a Float", () => {
  for (const v of [1e300, -1e300, 2 ** 63, 2 ** 64, 1.5, Number.MAX_VALUE, Infinity, -Infinity]) {
    assert.equal(tag(v), 3, `${v} is a Float`);
    assert.equal(roundTrip(v), v);
  }
  assert.ok(Number.isNaN(roundTrip(NaN)));
  assert.ok(Object.is(roundTrip(-0), -0), "-0 keeps its sign");
  assert.equal(tag(42), 2);
});

test("bigints outside i64 are refused, naming the value", () => {
  assert.throws(() => new Writer().value(2n ** 64n), (e) => e instanceof TypeError && /18446744073709551616n/.test(e.message) && /range/.test(e.message));
  assert.throws(() => new Writer().value(2n ** 63n), (e) => e instanceof TypeError && /9223372036854775808n/.test(e.message));
  assert.throws(() => new Writer().value(-(2n ** 63n) - 1n), TypeError);
  assert.throws(() => encode.mutate(1, "add", [0], { big: 2n ** 64n }), (e) => e instanceof TypeError && /args\.big/.test(e.message));
});

test("bytes, maps with string keys and plain objects go exactly", () => {
  assert.deepEqual(roundTrip(new Uint8Array([1, 2, 255]).buffer), Uint8Array.of(1, 2, 255));
  assert.deepEqual(roundTrip(Uint8Array.of(7)), Uint8Array.of(7));
  assert.deepEqual(roundTrip(new Map([["b", 1], ["a", [true, null]]])), { a: [true, null], b: 1 });
  assert.deepEqual(roundTrip(Object.assign(Object.create(null), { x: "y" })), { x: "y" });
  const withProto = roundTrip({ ["__proto__"]: 1, a: 2 });
  assert.equal(Object.getPrototypeOf(withProto), Object.prototype, "a __proto__ key is data, not a prototype");
  assert.equal(Object.getOwnPropertyDescriptor(withProto, "__proto__")?.value, 1);
});

test("what the protocol cannot carry is a TypeError naming it", () => {
  const cases = [
    [new Date(0), /Date/],
    [new Map([[1, "a"]]), /number key/],
    [new Set([1]), /Set/],
    [new Int16Array(2), /Int16Array.*Uint8Array/],
    [new Float64Array(1), /Float64Array/],
    [new DataView(new ArrayBuffer(1)), /DataView/],
    [() => 1, /function/],
    [Symbol("s"), /symbol/],
    [/re/, /RegExp/],
    [new (class Point {})(), /Point/],
  ];
  for (const [value, message] of cases) {
    assert.throws(() => new Writer().value({ arg: [value] }), (e) => e instanceof TypeError && message.test(e.message) && /value\.arg\[0\]/.test(e.message), String(value?.constructor?.name ?? typeof value));
  }
  const cycle = { a: [] };
  cycle.a.push(cycle);
  assert.throws(() => new Writer().value(cycle), (e) => e instanceof TypeError && /cycle/.test(e.message) && /value\.a\[0\]/.test(e.message));
  const shared = [1];
  assert.deepEqual(roundTrip([shared, shared]), [[1], [1]], "a value twice is not a cycle");
  assert.throws(() => encode.mutate(1, "add", [0], [1]), /plain object or a Map/);
  assert.throws(() => encode.mutate(1, "add", [0], new Map([[Symbol(), 1]])), /symbol name/);
});

test("nesting is bounded by DEPTH_LIMIT both ways", () => {
  assert.equal(DEPTH_LIMIT, 32);
  assert.deepEqual(roundTrip(nested(DEPTH_LIMIT)), nested(DEPTH_LIMIT));
  assert.throws(() => new Writer().value(nested(DEPTH_LIMIT + 1)), (e) => e instanceof TypeError && /deeper than 32/.test(e.message));
  // Arguments are not a Value: their values are top-level values.
  encode.mutate(1, "add", [0], { deep: nested(DEPTH_LIMIT) });
  assert.throws(() => encode.mutate(1, "add", [0], { deep: nested(DEPTH_LIMIT + 1) }), TypeError);
  // A peer's value nested past the limit: lists (06 01 ...) 40 deep around a Null.
  const hostile = Uint8Array.from([...Array(40).fill([6, 1]).flat(), 0]);
  assert.throws(() => new Reader(hostile).value(), (e) => e instanceof ProtocolError && /deeper than 32/.test(e.message));
  // Exactly at the limit, as the Rust decoder counts: 32 lists around a Null read, 33 do not.
  const chain = (n) => Uint8Array.from([...Array(n).fill([6, 1]).flat(), 0]);
  let deepest = null;
  for (let i = 0; i < DEPTH_LIMIT; i++) deepest = [deepest];
  assert.deepEqual(new Reader(chain(DEPTH_LIMIT)).value(), deepest);
  assert.throws(() => new Reader(chain(DEPTH_LIMIT + 1)).value(), ProtocolError);
  // Maps too: 07 01 01 6b (one entry, key "k") 40 deep.
  const maps = Uint8Array.from([...Array(40).fill([7, 1, 1, 0x6b]).flat(), 0]);
  assert.throws(() => new Reader(maps).value(), ProtocolError);
  // A map claiming more entries than its message has bytes fails before building anything.
  assert.throws(() => new Reader(Uint8Array.from([7, 0xfc, 0xff, 0xff, 0xff, 0x7f])).value(), /map longer than its message/);
});

test("what would arrive changed is refused: lone surrogates, undefined, holes, symbol keys", () => {
  assert.throws(() => new Writer().value("a\uD800b"), (e) => e instanceof TypeError && /lone surrogate/.test(e.message));
  assert.throws(() => new Writer().value({ ["k\uDC00"]: 1 }), TypeError);
  assert.throws(() => new Writer().value(undefined), (e) => e instanceof TypeError && /undefined/.test(e.message));
  // eslint-disable-next-line no-sparse-arrays
  assert.throws(() => new Writer().value([1, , 3]), (e) => e instanceof TypeError && /value\[1\] is undefined/.test(e.message));
  assert.throws(() => new Writer().value({ a: 1, [Symbol("s")]: 2 }), (e) => e instanceof TypeError && /symbol keys/.test(e.message));
  // A well-formed astral character is fine.
  assert.deepEqual(roundTrip("😀"), "😀");
});

test("argument count and name length follow the protocol's limits", async () => {
  const { MAX_ARGS, MAX_KEY_LEN } = await import("../am.js");
  const many = Object.fromEntries(Array.from({ length: MAX_ARGS + 1 }, (_, i) => [`a${i}`, i]));
  assert.throws(() => encode.mutate(1, "add", [0], many), (e) => e instanceof TypeError && /at most 256/.test(e.message));
  delete many[`a${MAX_ARGS}`];
  encode.mutate(1, "add", [0], many);
  assert.throws(() => encode.mutate(1, "add", [0], { ["ż".repeat(MAX_KEY_LEN / 2 + 1)]: 1 }), TypeError);
  encode.mutate(1, "add", [0], { ["ż".repeat(MAX_KEY_LEN / 2)]: 1 });
});
