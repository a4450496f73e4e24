// The browser client's codec against PROTOCOL.md's worked examples (the same bytes the Rust
// test documented_examples_are_what_the_encoder_writes pins), so both sides agree byte for byte.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Reader, Writer, FrameReader, MAX_NAME_LEN, MAX_TAGS, checksum, decodeMessage, encode, frame } from "../am.js";

const hex = (s) => Uint8Array.from(s.trim().split(/\s+/).map((b) => parseInt(b, 16)));
const toHex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join(" ");

test("hello and mutate encode as documented", () => {
  const hello = frame(encode.hello({ clientId: "leaf", source: "w" }));
  assert.equal(toHex(hello), "1a 00 02 04 6c 65 61 66 01 77 00 00 00 00");
  const mutate = frame(encode.mutate(1, "add", [1], { op: 2 }));
  assert.equal(toHex(mutate), "16 04 01 00 01 01 01 02 6f 70 02 04");
});

test("welcome, diff and reply decode as documented", () => {
  const frames = new FrameReader();
  frames.push(hex(`66 01 01 01 77 01 03 01 41 00 00 00 00 00 00 01 42 01 01 41 00 00 00 00 00
    09 45 78 63 65 70 74 69 6f 6e 00 00 00 00 00 01 00 03 01 00 00 01 00 00 00 00 00`));
  frames.push(hex("12 03 01 01 01 01 86 fc cf ff"));
  frames.push(hex("16 05 01 00 01 01 01 01 86 fc cf ff"));
  const welcome = decodeMessage(frames.next());
  assert.deepEqual(welcome.ancestry, ["w"]);
  assert.deepEqual(welcome.schema.states.map((s) => s.name), ["A", "B", "Exception"]);
  assert.deepEqual(welcome.schema.states[1].require, ["A"]);
  assert.equal(welcome.schema.states[2].multi, true);
  assert.deepEqual(welcome.schema.groups, []);
  assert.deepEqual(welcome.snapshot, { ticks: [1, 0, 0], queueTick: 1 });
  assert.equal(welcome.parentId, null);
  assert.deepEqual(welcome.tags, []);
  const diff = decodeMessage(frames.next());
  assert.deepEqual(diff.diff, { changes: [[1, 1]], queueDelta: 1, checksum: 0xffcffc86 });
  const reply = decodeMessage(frames.next());
  assert.equal(reply.id, 1);
  assert.deepEqual(reply.result, { outcome: "Executed" });
  assert.deepEqual(reply.diff, diff.diff);
  assert.equal(frames.next(), null, "nothing more buffered");
  assert.equal(checksum([1, 1, 0]), 0xffcffc86, "the checksum the Rust side computed");
  assert.equal(checksum([1, 2]), (0x77179803 ^ 0x63c8e066) >>> 0);
});

test("a welcome with groups, a parent id and tags decodes as documented", () => {
  const frames = new FrameReader();
  frames.push(hex(`7c 01 01 01 77 01 03 01 41 00 00 00 00 00 00 01 42 01 01 41 00 00 00 00 00
    09 45 78 63 65 70 74 69 6f 6e 00 00 00 00 00 01 01 01 47 02 01 42 01 41
    03 01 00 00 01 00 00 00 01 01 70 01 01 74`));
  const welcome = decodeMessage(frames.next());
  assert.deepEqual(welcome.schema.groups, [{ name: "G", states: ["B", "A"] }]);
  assert.equal(welcome.parentId, "p");
  assert.deepEqual(welcome.tags, ["t"]);
});

test("a welcome past the identity limits is refused, naming the limit", () => {
  // Welcome: ancestry [], no schema, snapshot [] 0, granted 00 00 00, then parent id / tags.
  const head = [0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00];
  const tag = [0x01, 0x74];
  const tags = (n) => [0xfb, n & 0xff, n >> 8, ...Array(n).fill(tag).flat()];
  assert.equal(decodeMessage(Uint8Array.from([...head, 0x00, ...tags(MAX_TAGS)])).tags.length, MAX_TAGS);
  assert.throws(() => decodeMessage(Uint8Array.from([...head, 0x00, ...tags(MAX_TAGS + 1)])), /a list of tags of 257 items is over the protocol's limit of 256/);
  const long = (n) => [0xfb, n & 0xff, n >> 8, ...Array(n).fill(0x70)];
  assert.equal(decodeMessage(Uint8Array.from([...head, 0x01, ...long(MAX_NAME_LEN), 0x00])).parentId.length, MAX_NAME_LEN);
  assert.throws(() => decodeMessage(Uint8Array.from([...head, 0x01, ...long(MAX_NAME_LEN + 1), 0x00])), /a parent id of 1025 bytes/);
  // SchemaChanged: no states, 1025 groups claimed.
  assert.throws(() => decodeMessage(Uint8Array.from([0x09, 0x00, 0xfb, 0x01, 0x04])), /a schema's groups of 1025 items/);
});

test("frames arrive in any chunking", () => {
  const bytes = frame(encode.ping(300));
  const frames = new FrameReader();
  for (const b of bytes) {
    assert.equal(frames.next(), null);
    frames.push(Uint8Array.of(b));
  }
  const ping = decodeMessage(frames.next());
  assert.equal(ping.type, "Ping");
  assert.equal(ping.nonce, 300n);
});

test("values and integers round-trip at every width", () => {
  const values = [null, true, false, 0, -1, 2, 250, 251, 65535, 65536, 2 ** 40, -(2 ** 40), 1.5, "héllo", Uint8Array.of(1, 2, 3), [1, "a", [null]], { b: 1, a: { c: false } }];
  for (const v of values) {
    const r = new Reader(new Writer().value(v).done());
    assert.deepEqual(r.value(), v);
    r.end();
  }
});

test("hostile input fails cleanly", () => {
  const frames = new FrameReader(64);
  frames.push(hex("fe ff ff ff 0f"));
  assert.throws(() => frames.next(), /over the limit/);
  const compressed = new FrameReader();
  compressed.push(hex("03"));
  assert.throws(() => compressed.next(), /compression was not asked for/);
  assert.throws(() => decodeMessage(hex("03 ff ff ff ff")), /sequence longer|unsupported|ends early/);
  assert.throws(() => decodeMessage(hex("00")), /unexpected message type 0/);
  assert.throws(() => decodeMessage(hex("0a 05 00")), /trailing bytes/);
  assert.throws(() => decodeMessage(hex("05 01 09")), /unknown mutation result 9/);
  assert.equal(decodeMessage(hex("05 01 03 02 6e 6f 00 00 00 00 00 00")).result.error, "no");
});
