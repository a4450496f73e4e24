// asyncmachine aRPC client for browsers: a mirror of a remote state machine over WebSocket.
// Dependency-free ES module. PROTOCOL.md (repository root) is the specification; this file
// implements the parts a mirror needs: frames, the bincode subset of its messages, handshake,
// snapshots, diffs with checksum and resync, mutations with arguments, keepalive, reconnect.
//
// Compression: the client asks for zstd only when it can decode it; this build has no zstd
// decoder, so it never asks, and a compressed frame is a protocol error.

export const PROTOCOL_VERSION = 2;

/**
 * How deep lists and maps may nest, both ways: PROTOCOL.md's limit, counted as the Rust decoder
 * counts it (a scalar is depth 0, `[1]` is 1, `[[1]]` is 2).
 */
export const DEPTH_LIMIT = 32;
/** At most this many named arguments in one mutation, each name at most MAX_KEY_LEN UTF-8 bytes (PROTOCOL.md, "Limits"). */
export const MAX_ARGS = 256;
export const MAX_KEY_LEN = 1024;
/**
 * What a welcome may say of its source (PROTOCOL.md, "Limits"): at most MAX_TAGS tags, at most
 * MAX_GROUPS groups in its schema each listing at most MAX_STATES states, and every tag, group
 * name and the parent id at most MAX_NAME_LEN UTF-8 bytes.
 */
export const MAX_NAME_LEN = 1024;
export const MAX_TAGS = 256;
export const MAX_GROUPS = 1024;
export const MAX_STATES = 4096;

/** How often a ready mirror pings, unless told otherwise: well under a relay's idle timeout. */
export const DEFAULT_KEEPALIVE_MS = 10000;

/**
 * Relay close codes (PROTOCOL.md, "Relay close codes") after which the same connection can
 * never succeed: a bad or missing token, an origin or target the relay refuses.
 */
export const PERMANENT_CLOSE_CODES = new Set([4401, 4403, 4404]);

/** Protocol refusals (a server's Refused message) that no retry can change. */
export const PERMANENT_REFUSALS = new Set(["Version", "UnknownSource", "Auth", "Acl", "BadHello"]);

const I64_MIN = -(2n ** 63n);
const I64_MAX = 2n ** 63n - 1n;

const MESSAGE = {
  Hello: 0, Welcome: 1, Refused: 2, Diff: 3, Mutate: 4, MutateReply: 5, Sync: 6, Snapshot: 7,
  Payload: 8, SchemaChanged: 9, Ping: 10, Pong: 11, Bye: 12, Error: 13, Ancestry: 16,
};
const KINDS = { add: 0, remove: 1, set: 2 };
const RESULTS = ["Executed", "Canceled", "Queued"]; // 3: Refused + reason
const REFUSALS = ["Version", "UnknownSource", "Auth", "Acl", "Loop", "Full", "BadHello", "Timeout"];

// ----- bytes out -----

export class Writer {
  constructor() { this.bytes = []; }
  u8(v) { this.bytes.push(v & 0xff); return this; }
  raw(arr) { for (const b of arr) this.bytes.push(b); return this; }
  // bincode's varint: < 251 in one byte, else a marker and 2, 4 or 8 little-endian bytes.
  uint(v) {
    const n = BigInt(v);
    if (n < 251n) return this.u8(Number(n));
    const [marker, size] = n < 0x10000n ? [251, 2] : n < 0x100000000n ? [252, 4] : [253, 8];
    this.u8(marker);
    for (let i = 0n; i < BigInt(size); i++) this.u8(Number((n >> (8n * i)) & 0xffn));
    return this;
  }
  int(v) { // i64, zigzag
    const n = BigInt.asIntN(64, BigInt(v));
    return this.uint(BigInt.asUintN(64, (n << 1n) ^ (n >> 63n)));
  }
  bool(v) { return this.u8(v ? 1 : 0); }
  f64(v) { const b = new DataView(new ArrayBuffer(8)); b.setFloat64(0, v, true); return this.raw(new Uint8Array(b.buffer)); }
  str(s) {
    // TextEncoder would turn a lone surrogate into U+FFFD: a different string on the other side.
    if (!s.isWellFormed()) throw new TypeError(`${JSON.stringify(s.slice(0, 40))} has a lone surrogate, which UTF-8 cannot carry`);
    const b = new TextEncoder().encode(s);
    this.uint(b.length);
    return this.raw(b);
  }
  bytesField(b) { this.uint(b.length); return this.raw(b); }
  option(v, write) { if (v === null || v === undefined) return this.u8(0); this.u8(1); write(v); return this; }
  vec(items, write) { this.uint(items.length); for (const it of items) write(it); return this; }
  /**
   * A Value (PROTOCOL.md: Null, Bool, Int (i64), Float (f64), Str, Bytes, List, Map with string
   * keys), exactly or not at all: what the protocol cannot carry as it is throws a TypeError
   * naming it, never arrives as something else.
   */
  value(v, depth = 0, path = "value", parents = []) {
    if (v === null) return this.uint(0);
    switch (typeof v) {
      // `undefined` (and an array's holes) would arrive as Null: say null if that is meant.
      case "undefined": throw new TypeError(`${path} is undefined; send null for no value`);
      case "boolean": return this.uint(1).bool(v);
      case "bigint":
        if (v < I64_MIN || v > I64_MAX) throw new TypeError(`${path} = ${v}n is outside Int's range (a signed 64-bit integer)`);
        return this.uint(2).int(v);
      case "number":
        // Integers beyond 2^53 (1e300 among them) and -0 are exact only as a Float.
        if (Number.isSafeInteger(v) && !Object.is(v, -0)) return this.uint(2).int(v);
        return this.uint(3).f64(v);
      case "string": return this.uint(4).str(v);
      case "object": break;
      default: throw new TypeError(`${path} is a ${typeof v}, which the protocol cannot carry`);
    }
    if (parents.includes(v)) throw new TypeError(`${path} refers to itself (a cycle); the protocol carries trees`);
    const inside = [...parents, v];
    if (v instanceof Uint8Array) return this.uint(5).bytesField(v);
    if (v instanceof ArrayBuffer) return this.uint(5).bytesField(new Uint8Array(v));
    // A list or map is one level deeper than where it sits; past the limit the whole value is
    // refused before anything is sent.
    const inner = depth + 1;
    const container = Array.isArray(v) || v instanceof Map || [Object.prototype, null].includes(Object.getPrototypeOf(v));
    if (container && inner > DEPTH_LIMIT) throw new TypeError(`${path} nests deeper than ${DEPTH_LIMIT} levels, the protocol's limit`);
    if (Array.isArray(v)) {
      this.uint(6).uint(v.length);
      for (let i = 0; i < v.length; i++) this.value(v[i], inner, `${path}[${i}]`, inside);
      return this;
    }
    if (v instanceof Map) {
      for (const k of v.keys()) {
        if (typeof k !== "string") throw new TypeError(`${path} has a ${typeof k} key (${String(k)}); Map keys must be strings`);
      }
      return this.uint(7).entries([...v.entries()], inner, path, inside);
    }
    const proto = Object.getPrototypeOf(v);
    if (proto !== Object.prototype && proto !== null) {
      const kind = ArrayBuffer.isView(v) ? `${v.constructor.name} (send a Uint8Array of its bytes)` : (v.constructor?.name ?? "object");
      throw new TypeError(`${path} is a ${kind}, which the protocol cannot carry`);
    }
    if (Object.getOwnPropertySymbols(v).length > 0) throw new TypeError(`${path} has symbol keys, which the protocol cannot carry`);
    return this.uint(7).entries(Object.entries(v), inner, path, inside);
  }
  /** Map entries, keys in order (a BTreeMap on the other side); their values sit at `depth`. */
  entries(pairs, depth, path, parents) {
    pairs.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    this.uint(pairs.length);
    for (const [k, v] of pairs) { this.str(k); this.value(v, depth, `${path}.${k}`, parents); }
    return this;
  }
  /** Mutation arguments: names to values (each a top-level value: depth 0). */
  map(args) {
    const plain = args !== null && typeof args === "object" && [Object.prototype, null].includes(Object.getPrototypeOf(args));
    if (!(args instanceof Map) && !plain) throw new TypeError("arguments must be a plain object or a Map of names to values");
    const pairs = args instanceof Map ? [...args.entries()] : Object.entries(args);
    if (pairs.length > MAX_ARGS) throw new TypeError(`${pairs.length} arguments; a mutation carries at most ${MAX_ARGS}`);
    for (const [k] of pairs) {
      if (typeof k !== "string") throw new TypeError(`an argument has a ${typeof k} name (${String(k)}); names must be strings`);
      if (new TextEncoder().encode(k).length > MAX_KEY_LEN) throw new TypeError(`argument name ${JSON.stringify(k.slice(0, 40))}… is over ${MAX_KEY_LEN} bytes`);
    }
    return this.entries(pairs, 0, "args", [args]);
  }
  done() { return new Uint8Array(this.bytes); }
}

// ----- bytes in -----

export class ProtocolError extends Error {}

export class Reader {
  constructor(bytes) { this.b = bytes; this.at = 0; }
  need(n) { if (this.at + n > this.b.length) throw new ProtocolError("message ends early"); }
  u8() { this.need(1); return this.b[this.at++]; }
  uintBig() {
    const first = this.u8();
    if (first < 251) return BigInt(first);
    const size = { 251: 2, 252: 4, 253: 8 }[first];
    if (!size) throw new ProtocolError(`unsupported integer marker ${first}`);
    this.need(size);
    let n = 0n;
    for (let i = 0; i < size; i++) n |= BigInt(this.b[this.at++]) << BigInt(8 * i);
    return n;
  }
  uint() {
    const n = this.uintBig();
    if (n > BigInt(Number.MAX_SAFE_INTEGER)) throw new ProtocolError("integer too large for this client");
    return Number(n);
  }
  /** An i64: a number when it is exact as one, a bigint when it is not. */
  int() {
    const z = this.uintBig();
    const v = BigInt.asIntN(64, (z >> 1n) ^ -(z & 1n));
    return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
  }
  bool() { const v = this.u8(); if (v > 1) throw new ProtocolError("bad bool"); return v === 1; }
  f64() { this.need(8); const v = new DataView(this.b.buffer, this.b.byteOffset + this.at, 8).getFloat64(0, true); this.at += 8; return v; }
  str() { const n = this.uint(); this.need(n); const s = new TextDecoder("utf-8", { fatal: true }).decode(this.b.subarray(this.at, this.at + n)); this.at += n; return s; }
  /** A string of at most `max` UTF-8 bytes, refused by its length before it is read. */
  name(what, max = MAX_NAME_LEN) {
    const n = this.uint();
    if (n > max) throw new ProtocolError(`${what} of ${n} bytes is over the protocol's limit of ${max}`);
    this.need(n);
    const s = new TextDecoder("utf-8", { fatal: true }).decode(this.b.subarray(this.at, this.at + n));
    this.at += n;
    return s;
  }
  bytes() { const n = this.uint(); this.need(n); const b = this.b.slice(this.at, this.at + n); this.at += n; return b; }
  option(read) { const tag = this.u8(); if (tag === 0) return null; if (tag === 1) return read(); throw new ProtocolError("bad option"); }
  vec(read) { const n = this.uint(); if (n > this.b.length - this.at) throw new ProtocolError("sequence longer than its message"); const out = []; for (let i = 0; i < n; i++) out.push(read()); return out; }
  /** A sequence of at most `max` items, refused by its count before any is read. */
  bounded(what, max, read) {
    const n = this.uint();
    if (n > max) throw new ProtocolError(`${what} of ${n} items is over the protocol's limit of ${max}`);
    if (n > this.b.length - this.at) throw new ProtocolError("sequence longer than its message");
    const out = [];
    for (let i = 0; i < n; i++) out.push(read());
    return out;
  }
  value(depth = 0) {
    const tag = this.uint();
    // Lists and maps count, scalars do not: the Rust decoder's rule.
    if ((tag === 6 || tag === 7) && depth + 1 > DEPTH_LIMIT) throw new ProtocolError(`a value nests deeper than ${DEPTH_LIMIT} levels`);
    switch (tag) {
      case 0: return null;
      case 1: return this.bool();
      case 2: return this.int();
      case 3: return this.f64();
      case 4: return this.str();
      case 5: return this.bytes();
      case 6: return this.vec(() => this.value(depth + 1));
      case 7: {
        const n = this.uint();
        if (n > this.b.length - this.at) throw new ProtocolError("map longer than its message");
        const m = {};
        for (let i = 0; i < n; i++) {
          const k = this.str();
          // defineProperty: a key named __proto__ is data, not the object's prototype.
          Object.defineProperty(m, k, { value: this.value(depth + 1), enumerable: true, writable: true, configurable: true });
        }
        return m;
      }
      default: throw new ProtocolError("unknown value type");
    }
  }
  end() { if (this.at !== this.b.length) throw new ProtocolError(`${this.b.length - this.at} trailing bytes`); }
}

const strings = (r) => r.vec(() => r.str());
const snapshot = (r) => ({ ticks: r.vec(() => r.uint()), queueTick: r.uint() });
// A schema: its states, then its groups (name, and the names of its states).
const schemaDef = (r) => ({
  states: r.vec(() => ({
    name: r.str(), require: strings(r), add: strings(r), remove: strings(r), after: strings(r), auto: r.bool(), multi: r.bool(),
  })),
  groups: r.bounded("a schema's groups", MAX_GROUPS, () => ({
    name: r.name("a group's name"), states: r.bounded("a group's states", MAX_STATES, () => r.str()),
  })),
});
const u32le = (r) => { r.need(4); const b = r.b, i = r.at; r.at += 4; return (b[i] | (b[i + 1] << 8) | (b[i + 2] << 16) | (b[i + 3] << 24)) >>> 0; };
const clockDiff = (r) => ({ changes: r.vec(() => [r.uint(), r.uint()]), queueDelta: r.uint(), checksum: u32le(r) });

/** Decodes one message body. */
export function decodeMessage(body) {
  const r = new Reader(body);
  const type = r.uint();
  let m;
  switch (type) {
    case MESSAGE.Welcome:
      m = { type: "Welcome", ancestry: strings(r), schema: r.option(() => schemaDef(r)), snapshot: snapshot(r),
        granted: { compression: r.bool(), tracked: r.option(() => r.vec(() => r.uint())), mutable: r.option(() => r.vec(() => r.uint())) },
        parentId: r.option(() => r.name("a parent id")), tags: r.bounded("a list of tags", MAX_TAGS, () => r.name("a name")) };
      break;
    case MESSAGE.Refused: m = { type: "Refused", kind: REFUSALS[r.uint()] ?? "Unknown", reason: r.str() }; break;
    case MESSAGE.Diff: m = { type: "Diff", diff: clockDiff(r) }; break;
    case MESSAGE.MutateReply: {
      const id = r.uint();
      const tag = r.uint();
      if (tag > 3) throw new ProtocolError(`unknown mutation result ${tag}`);
      const result = tag === 3 ? { error: r.str() } : { outcome: RESULTS[tag] };
      m = { type: "MutateReply", id, result, diff: clockDiff(r) };
      break;
    }
    case MESSAGE.Snapshot: m = { type: "Snapshot", id: r.uint(), snapshot: snapshot(r) }; break;
    case MESSAGE.Payload: m = { type: "Payload", name: r.str(), data: r.bytes() }; break;
    case MESSAGE.SchemaChanged: m = { type: "SchemaChanged", schema: schemaDef(r), snapshot: snapshot(r) }; break;
    case MESSAGE.Ping: m = { type: "Ping", nonce: r.uintBig() }; break;
    case MESSAGE.Pong: m = { type: "Pong", nonce: r.uintBig() }; break;
    case MESSAGE.Bye: m = { type: "Bye", reason: r.str() }; break;
    case MESSAGE.Error: m = { type: "Error", message: r.str() }; break;
    case MESSAGE.Ancestry: m = { type: "Ancestry", ancestry: strings(r) }; break;
    default: throw new ProtocolError(`unexpected message type ${type} from a server`);
  }
  r.end();
  return m;
}

export const encode = {
  // schema_hash 0: the browser has no schema, so the server sends it in the welcome.
  hello: ({ clientId, source = "", compression = false, track = null, token = null }) => {
    const w = new Writer().uint(MESSAGE.Hello).uint(PROTOCOL_VERSION).str(clientId).str(source).uint(0).bool(compression);
    w.option(track, (t) => w.vec(t, (s) => w.str(s)));
    w.option(token, (t) => w.str(t));
    return w.done();
  },
  // id 0 asks for no reply.
  mutate: (id, kind, states, args) => {
    const w = new Writer().uint(MESSAGE.Mutate).uint(id).uint(KINDS[kind]);
    w.vec(states, (s) => w.uint(s));
    return w.map(args ?? {}).done();
  },
  sync: (id) => new Writer().uint(MESSAGE.Sync).uint(id).done(),
  ping: (nonce) => new Writer().uint(MESSAGE.Ping).uint(nonce).done(),
  pong: (nonce) => new Writer().uint(MESSAGE.Pong).uint(nonce).done(),
  bye: (reason) => new Writer().uint(MESSAGE.Bye).str(reason).done(),
};

// ----- frames -----

/** One frame around a body: its head (LEB128 of length * 2, low bit 0: not compressed), the body. */
export function frame(body) {
  const out = [];
  let n = body.length * 2;
  while (n >= 0x80) { out.push((n & 0x7f) | 0x80); n = Math.floor(n / 128); }
  out.push(n);
  const bytes = new Uint8Array(out.length + body.length);
  bytes.set(out, 0);
  bytes.set(body, out.length);
  return bytes;
}

/** Accumulates stream bytes and yields frame bodies. */
export class FrameReader {
  constructor(maxFrame = 1 << 20) { this.buf = new Uint8Array(0); this.maxFrame = maxFrame; }
  push(chunk) {
    const next = new Uint8Array(this.buf.length + chunk.length);
    next.set(this.buf, 0);
    next.set(chunk, this.buf.length);
    this.buf = next;
  }
  /** The next body, or null when more bytes are needed. Throws on invalid input. */
  next() {
    let head = 0, shift = 1, i = 0;
    for (;; i++) {
      if (i >= this.buf.length) return null;
      if (i >= 10) throw new ProtocolError("malformed frame head");
      const b = this.buf[i];
      head += (b & 0x7f) * shift;
      shift *= 128;
      if ((b & 0x80) === 0) break;
    }
    if (head % 2 === 1) throw new ProtocolError("compressed frame, but compression was not asked for");
    const len = Math.floor(head / 2);
    if (len === 0) throw new ProtocolError("empty frame");
    if (len > this.maxFrame) throw new ProtocolError(`frame of ${len} bytes over the limit`);
    const start = i + 1;
    if (this.buf.length < start + len) return null;
    const body = this.buf.slice(start, start + len);
    this.buf = this.buf.slice(start + len);
    return body;
  }
}

// ----- clock checksum (FNV-1a 64, folded to 32 bits) -----

export function checksum(ticks, tracked) {
  const MASK = (1n << 64n) - 1n;
  let h = 0xcbf29ce484222325n;
  const positions = tracked ?? ticks.map((_, i) => i);
  for (const s of positions) {
    let t = BigInt(ticks[s] ?? 0);
    for (let i = 0; i < 8; i++) {
      h ^= t & 0xffn;
      h = (h * 0x100000001b3n) & MASK;
      t >>= 8n;
    }
  }
  return Number(((h >> 32n) ^ h) & 0xffffffffn);
}

// ----- the mirror -----

/** The wait before reconnect attempt `attempt` (0, 1, ...): doubling up to 5 s, equal jitter. */
export function retryDelay(attempt, random = Math.random) {
  const ceiling = Math.min(5000, 100 * 2 ** attempt);
  return ceiling / 2 + random() * ceiling / 2;
}

/**
 * A mirror of a remote machine: `schema` (its states), `groups`, `parentId` and `tags` are the
 * source's, as its welcome (and a schema change) carried them. Events: "change" ({clock,
 * changed}), "status" ({state, reason, code}), "payload" ({name, data}). States: "connecting", "ready", "disconnected" (it will
 * retry), "refused" (a permanent refusal: a relay close code in PERMANENT_CLOSE_CODES or a
 * server refusal in PERMANENT_REFUSALS; it does not retry, `reason` says why).
 * A ready mirror pings every `keepaliveMs`, so a relay's idle timeout never closes a live page.
 */
/** `text` cut to at most 123 UTF-8 bytes (a WebSocket close reason's limit), whole characters only. */
export function closeReason(text) {
  const encoder = new TextEncoder();
  let out = "";
  for (const ch of text) {
    // A UTF-16 unit is at least one UTF-8 byte: past 123 units nothing more can fit.
    if (out.length >= 123 || encoder.encode(out + ch).length > 123) break;
    out += ch;
  }
  return out;
}

export class Mirror extends EventTarget {
  constructor(url, { source = "", clientId = `browser-${Math.random().toString(36).slice(2, 10)}`, token = null, track = null, keepaliveMs = DEFAULT_KEEPALIVE_MS } = {}) {
    super();
    Object.assign(this, { url, source, clientId, token, track, keepaliveMs });
    this.schema = [];
    this.groups = [];
    this.parentId = null;
    this.tags = [];
    this.index = new Map();
    this.clock = [];
    this.queueTick = 0;
    this.tracked = null;
    this.state = "disconnected";
    this.pending = new Map();
    this.attempt = 0;
    this.closed = false;
  }

  /** Connects, and reconnects with backoff and jitter until close(). */
  start() { this.closed = false; this.#connect(); return this; }

  close() {
    this.closed = true;
    clearTimeout(this.retryTimer);
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(frame(encode.bye("browser closed")));
    this.ws?.close();
  }

  is(name) { const i = this.index.get(name); return i !== undefined && this.clock[i] % 2 === 1; }
  tick(name) { const i = this.index.get(name); return i === undefined ? 0 : this.clock[i]; }
  active() { return this.schema.filter((_, i) => this.clock[i] % 2 === 1).map((s) => s.name); }
  /** The first active state of the source's group `name` (its schema's), or null. */
  switchGroup(name) { return this.groups.find((g) => g.name === name)?.states.find((s) => this.is(s)) ?? null; }

  add(states, args) { return this.mutate("add", states, args); }
  remove(states, args) { return this.mutate("remove", states, args); }
  set(states, args) { return this.mutate("set", states, args); }

  /** Resolves with "Executed", "Canceled" or "Queued"; rejects when refused or disconnected. */
  mutate(kind, states, args = {}) {
    const list = Array.isArray(states) ? states : [states];
    const positions = list.map((s) => this.index.get(s));
    if (positions.some((p) => p === undefined)) return Promise.reject(new Error(`unknown state in ${list.join(", ")}`));
    if (this.state !== "ready") return Promise.reject(new Error("not connected"));
    // The smallest id not waiting for an answer: ids stay one byte on the wire (PROTOCOL.md 4).
    let id = 1;
    while (this.pending.has(id)) id++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.ws.send(frame(encode.mutate(id, kind, positions, args)));
    });
  }

  #status(state, reason = "", code = 0) {
    this.state = state;
    this.dispatchEvent(new CustomEvent("status", { detail: { state, reason, code } }));
  }

  #connect() {
    this.#status("connecting");
    const ws = new WebSocket(this.url);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    this.reader = new FrameReader();
    ws.onopen = () => ws.send(frame(encode.hello({ clientId: this.clientId, source: this.source, token: this.token, track: this.track })));
    ws.onmessage = (event) => {
      if (!(event.data instanceof ArrayBuffer)) return this.#fail("text message from the relay");
      try {
        this.reader.push(new Uint8Array(event.data));
        for (let body; (body = this.reader.next()) !== null;) this.#handle(decodeMessage(body));
      } catch (e) {
        this.#fail(e.message);
      }
    };
    ws.onclose = (event) => this.#lost(event.code, event.reason || `closed (${event.code})`);
    ws.onerror = () => {};
  }

  /**
   * Ends this connection for a reason of ours; `permanent`: no retry can help. The first reason
   * given for a connection is the one kept: a later failure (a message still being read) must
   * not turn a permanent refusal into one that is retried.
   */
  #fail(reason, permanent = false) {
    if (this.lastError) return;
    this.lastError = { reason, permanent };
    // close() throws on a reason over 123 UTF-8 bytes: cut on a character boundary.
    this.ws?.close(4000, closeReason(reason));
  }

  #lost(code, reason) {
    clearInterval(this.keepalive);
    const error = this.lastError;
    this.lastError = undefined;
    const why = error?.reason ?? reason;
    for (const { reject } of this.pending.values()) reject(new Error(`disconnected: ${why}`));
    this.pending.clear();
    if (PERMANENT_CLOSE_CODES.has(code) || error?.permanent) {
      this.closed = true;
      this.#status("refused", why, error ? 0 : code);
      return;
    }
    this.#status("disconnected", why, error ? 0 : code);
    if (this.closed) return;
    this.retryTimer = setTimeout(() => this.#connect(), retryDelay(this.attempt++));
  }

  #apply(ticks, changed) {
    this.dispatchEvent(new CustomEvent("change", { detail: { clock: ticks, changed } }));
  }

  /** A schema from the server: its states (by position), its groups, a clock to fill. */
  #adopt(def) {
    this.schema = def.states;
    this.groups = def.groups;
    this.index = new Map(def.states.map((s, i) => [s.name, i]));
    this.clock = def.states.map(() => 0);
  }

  #replace(snap) {
    const changed = [];
    this.schema.forEach((_, i) => { const t = snap.ticks[i] ?? 0; if (t !== this.clock[i]) changed.push(i); this.clock[i] = t; });
    this.queueTick = snap.queueTick;
    this.#apply(this.clock, changed);
  }

  #diff(d) {
    const changed = [];
    for (const [s, delta] of d.changes) {
      if (s >= this.clock.length) throw new ProtocolError(`diff names state ${s} of ${this.clock.length}`);
      this.clock[s] += delta;
      changed.push(s);
    }
    this.queueTick += d.queueDelta;
    if (checksum(this.clock, this.tracked) !== d.checksum) {
      this.ws.send(frame(encode.sync(0))); // id 0: the snapshot answers no request
    }
    if (changed.length) this.#apply(this.clock, changed);
  }

  #handle(m) {
    switch (m.type) {
      case "Welcome":
        if (m.schema) this.#adopt(m.schema);
        this.tracked = m.granted.tracked;
        this.ancestry = m.ancestry;
        this.parentId = m.parentId;
        this.tags = m.tags;
        this.attempt = 0;
        this.#replace(m.snapshot);
        this.#status("ready");
        clearInterval(this.keepalive);
        this.keepalive = setInterval(() => this.ws.send(frame(encode.ping(Date.now()))), this.keepaliveMs);
        break;
      case "Refused": this.#fail(`refused (${m.kind}): ${m.reason}`, PERMANENT_REFUSALS.has(m.kind)); break;
      case "Diff": this.#diff(m.diff); break;
      case "MutateReply": {
        this.#diff(m.diff);
        const waiter = this.pending.get(m.id);
        this.pending.delete(m.id);
        if (waiter) m.result.error === undefined ? waiter.resolve(m.result.outcome) : waiter.reject(new Error(m.result.error));
        break;
      }
      case "Snapshot": this.#replace(m.snapshot); break;
      case "SchemaChanged":
        this.#adopt(m.schema);
        this.#replace(m.snapshot);
        break;
      case "Payload": this.dispatchEvent(new CustomEvent("payload", { detail: { name: m.name, data: m.data } })); break;
      case "Ping": this.ws.send(frame(encode.pong(m.nonce))); break;
      case "Pong": break;
      case "Bye": this.#fail(`the server said bye: ${m.reason}`); break;
      case "Error": this.#fail(`the server reported: ${m.message}`); break;
      case "Ancestry": this.ancestry = m.ancestry; break;
    }
  }
}
