// asyncmachine for JavaScript: machines in the page and mirrors of remote machines, run by the
// same Rust core as the nodes (am.wasm, built from web/ by scripts/build-wasm.sh). This file is
// glue only: it owns the WebSocket, the timers and the promises, and hands bytes, time and
// commands to the module. The protocol, relations, handlers' order, the queue, waiters, diffs,
// checksums and zstd all run in the module. Dependency-free ES module; am.d.ts declares it.

/** How often a ready mirror pings, unless told otherwise: well under a relay's idle timeout. */
export const DEFAULT_KEEPALIVE_MS = 10000;

/**
 * How long a Debugger's socket must stay open before it counts as established (records sent,
 * backoff reset): a relay's refusal comes as a close right after the upgrade.
 */
export const DEFAULT_ESTABLISHED_MS = 1000;

/**
 * Relay close codes (PROTOCOL.md, "Relay close codes") after which the same connection can
 * never succeed: a bad or missing token, an origin or target the relay refuses.
 */
export const PERMANENT_CLOSE_CODES = new Set([4401, 4403, 4404]);

/** A node connection's ID as the relay announces it on an offer: 128 random bits in hex. */
const CONN_ID = /^[0-9a-f]{32}$/;

/** How deep lists and maps may nest in an argument (PROTOCOL.md's limit). */
export const DEPTH_LIMIT = 32;

// ----- errors -----

/** Any failure of this library; `code` says which kind (`refused`, `auth`, `not_connected`, ...). */
export class AmError extends Error {
  /** @param {string} code @param {string} message */
  constructor(code, message) {
    super(message);
    this.name = new.target.name;
    this.code = code;
  }
}
/** The source (or a node on the way) refused: relations, the ACL, a full queue. */
export class RefusedError extends AmError {}
/** The relay or the source does not let this page in (token, origin, ACL). */
export class AuthError extends AmError {}
/** The mirror is not connected to its source (yet, or any more). */
export class NotConnectedError extends AmError {}
/** A peer broke the protocol, or the source's schema is not the expected one. */
export class ProtocolError extends AmError {}
/** No answer in time; a mutation may or may not have run. */
export class TimeoutError extends AmError {}

const ERROR_CLASSES = { refused: RefusedError, queue_full: RefusedError, auth: AuthError, not_connected: NotConnectedError, protocol: ProtocolError, timeout: TimeoutError };

function errorFrom({ code, message }) {
  const Class = ERROR_CLASSES[code] ?? AmError;
  return new Class(code, message);
}

// ----- the module -----

let wasm = null;
let loading = null;
const encoder = new TextEncoder();
const decoder = new TextDecoder();
/** Handler functions by id, sources by handle, waiting promises by task id. */
const handlers = new Map();
const sources = new Map();
const tasks = new Map();
/** Offers by server handle, for the pump. */
const offers = new Map();
let nextHandler = 0;
let pumpQueued = false;

function outbox() {
  const { am_outbox, am_outbox_len, memory } = wasm.exports;
  return new Uint8Array(memory.buffer, am_outbox(), am_outbox_len());
}
const outboxText = () => decoder.decode(outbox());

function toInbox(bytes) {
  const ptr = wasm.exports.am_inbox(bytes.length);
  new Uint8Array(wasm.exports.memory.buffer, ptr, bytes.length).set(bytes);
}

/** Runs a command in the module; its answer, or the error it names thrown. */
function call(command) {
  if (!wasm) throw new AmError("not_loaded", "am.wasm is not loaded: await load() first");
  toInbox(encoder.encode(JSON.stringify(command)));
  const status = wasm.exports.am_call();
  const answer = JSON.parse(outboxText());
  if (status !== 0) throw errorFrom(answer);
  return answer;
}

/** What the module tells the page (module `am`, import `notify`). */
function notify(kind) {
  switch (kind) {
    case 1: { // a handler to run; 0 go on, 1 cancel, 2 failed (message in the inbox)
      const { fn, event } = JSON.parse(outboxText());
      try {
        event.args = fromWire(event.args);
        return handlers.get(fn)(event) === false ? 1 : 0;
      } catch (e) {
        toInbox(encoder.encode(String(e?.message ?? e)));
        return 2;
      }
    }
    case 2: { // a change of an observed machine
      const note = JSON.parse(outboxText());
      sources.get(note.h)?._changed(note);
      return 0;
    }
    case 3: schedulePump(); return 0;
    case 4: console.error(`am.wasm panicked: ${outboxText()}`); return 0;
    default: return 0;
  }
}

/** Wall time in microseconds since the Unix epoch (telemetry's stamps). */
function nowUs() {
  return Math.round((performance.timeOrigin + performance.now()) * 1000);
}

function schedulePump() {
  if (pumpQueued) return;
  pumpQueued = true;
  queueMicrotask(pump);
}

/** Settles the tasks the module finished and sends what mirrors queued. */
function pump() {
  pumpQueued = false;
  for (const done of call({ op: "poll" })) {
    const task = tasks.get(done.task);
    tasks.delete(done.task);
    if (!task) continue;
    if (done.error) task.reject(errorFrom(done.error));
    else task.resolve(done.ok);
  }
  for (const source of sources.values()) source._flush?.();
  for (const offer of offers.values()) offer._pump();
}

/**
 * Loads am.wasm once: from `source` (a URL, a Response, bytes or a compiled module), by default
 * `am.wasm` beside this file. Machines and mirrors wait for it themselves; call it to choose
 * where the module comes from (in Node, pass its bytes).
 * @param {string|URL|Response|BufferSource|WebAssembly.Module} [source]
 */
export function load(source = new URL("./am.wasm", import.meta.url)) {
  loading ??= (async () => {
    const imports = { am: { notify, now_us: nowUs } };
    let instance;
    if (source instanceof WebAssembly.Module) {
      instance = await WebAssembly.instantiate(source, imports);
    } else {
      let bytes = source;
      if (typeof source === "string" || source instanceof URL) bytes = await fetch(source);
      if (typeof Response !== "undefined" && bytes instanceof Response) {
        if (!bytes.ok) throw new AmError("not_loaded", `cannot load am.wasm: ${bytes.status} ${await bytes.text()}`);
        bytes = await bytes.arrayBuffer();
      }
      ({ instance } = await WebAssembly.instantiate(bytes, imports));
    }
    wasm = instance;
    wasm.exports.am_init();
  })();
  return loading;
}

// ----- values -----

/**
 * A JS value as the module's tagged JSON (web/src/values.rs has the table), exactly or not at
 * all: what the protocol cannot carry throws a TypeError naming it.
 */
export function toWire(v, depth = 0, path = "value", parents = []) {
  if (v === null) return null;
  switch (typeof v) {
    case "undefined": throw new TypeError(`${path} is undefined; send null for no value`);
    case "boolean": case "string": return v;
    case "bigint":
      if (v < -(2n ** 63n) || v >= 2n ** 63n) throw new TypeError(`${path} = ${v}n is outside Int's range (a signed 64-bit integer)`);
      return { $i: v.toString() };
    case "number":
      if (Number.isSafeInteger(v) && !Object.is(v, -0)) return v;
      if (Number.isFinite(v) && !Object.is(v, -0)) return { $f: v };
      return { $f: Object.is(v, -0) ? "-0" : String(v) };
    case "object": break;
    default: throw new TypeError(`${path} is a ${typeof v}, which the protocol cannot carry`);
  }
  if (parents.includes(v)) throw new TypeError(`${path} refers to itself (a cycle); the protocol carries trees`);
  const inside = [...parents, v];
  if (v instanceof Uint8Array) return { $b: [...v] };
  if (v instanceof ArrayBuffer) return { $b: [...new Uint8Array(v)] };
  const inner = depth + 1;
  const deep = () => { if (inner > DEPTH_LIMIT) throw new TypeError(`${path} nests deeper than ${DEPTH_LIMIT} levels, the protocol's limit`); };
  if (Array.isArray(v)) {
    deep();
    return Array.from(v, (item, i) => toWire(item, inner, `${path}[${i}]`, inside));
  }
  if (v instanceof Map) {
    deep();
    const out = {};
    for (const [k, item] of v) {
      if (typeof k !== "string") throw new TypeError(`${path} has a ${typeof k} key (${String(k)}); Map keys must be strings`);
      Object.defineProperty(out, k, { value: toWire(item, inner, `${path}.${k}`, inside), enumerable: true });
    }
    return { $m: out };
  }
  const proto = Object.getPrototypeOf(v);
  if (proto !== Object.prototype && proto !== null) {
    const kind = ArrayBuffer.isView(v) ? `${v.constructor.name} (send a Uint8Array of its bytes)` : (v.constructor?.name ?? "object");
    throw new TypeError(`${path} is a ${kind}, which the protocol cannot carry`);
  }
  if (Object.getOwnPropertySymbols(v).length > 0) throw new TypeError(`${path} has symbol keys, which the protocol cannot carry`);
  deep();
  const out = {};
  for (const [k, item] of Object.entries(v)) {
    Object.defineProperty(out, k, { value: toWire(item, inner, `${path}.${k}`, inside), enumerable: true });
  }
  return { $m: out };
}

/** The module's tagged JSON back as JS values (integers past 2^53 as bigints). */
export function fromWire(v) {
  if (v === null || typeof v !== "object") return v;
  if (Array.isArray(v)) return v.map(fromWire);
  if ("$i" in v) return BigInt(v.$i);
  if ("$f" in v) return Number(v.$f);
  if ("$b" in v) return Uint8Array.from(v.$b);
  const out = {};
  const entries = "$m" in v ? v.$m : v;
  for (const [k, item] of Object.entries(entries)) {
    // defineProperty: a key named __proto__ is data, not the object's prototype.
    Object.defineProperty(out, k, { value: fromWire(item), enumerable: true, writable: true, configurable: true });
  }
  return out;
}

function wireArgs(args) {
  if (args === undefined || args === null) return {};
  const plain = typeof args === "object" && [Object.prototype, null].includes(Object.getPrototypeOf(args));
  if (!(args instanceof Map) && !plain) throw new TypeError("arguments must be a plain object or a Map of names to values");
  // Names to values: each value sits at the top (depth 0).
  const pairs = args instanceof Map ? [...args] : Object.entries(args);
  const out = {};
  for (const [k, v] of pairs) {
    if (typeof k !== "string") throw new TypeError(`an argument has a ${typeof k} name (${String(k)}); names must be strings`);
    Object.defineProperty(out, k, { value: toWire(v, 0, `args.${k}`, [args]), enumerable: true });
  }
  return out;
}

// ----- machines -----

const list = (states) => (Array.isArray(states) ? states : [states]);

/**
 * What local machines and mirrors share: reads from the clock, waits and mutations as
 * promises, change events and an async iterator of changes. Not made directly.
 */
export class Source extends EventTarget {
  /** @internal */
  _attach(handle, id) {
    this.handle = handle;
    this.id = id;
    /** The schema's states ({name, require, add, remove, after, auto, multi}), in order. */
    this.schema = [];
    /** Ticks by position (odd: active). */
    this.clock = [];
    this.queueTick = 0;
    this.index = new Map();
    this.schemaHash = null;
    this._iterators = new Set();
    sources.set(handle, this);
    call({ op: "observe", h: handle });
    this._refresh();
  }

  /** @internal Reads the clock (and the schema when it changed) from the module. */
  _refresh() {
    const read = call({ op: "read", h: this.handle });
    if (read.schemaHash !== this.schemaHash) this._schema(read.schemaHash);
    this.clock = read.clock;
    this.queueTick = read.queueTick;
    /** States the source's ACL hides from this mirror (their ticks stay 0); none on a machine. */
    this.hidden = new Set(read.hidden ?? []);
    /** States this mirror may see but not mutate (the source refuses); none on a machine. */
    this.readOnly = new Set(read.readOnly ?? []);
    return read;
  }

  _schema(hash) {
    this.schemaHash = hash;
    this.schema = call({ op: "schema", h: this.handle }).states;
    this.index = new Map(this.schema.map((s, i) => [s.name, i]));
  }

  /** @internal A change the module observed. */
  _changed(note) {
    if (note.schemaHash !== this.schemaHash) this._schema(note.schemaHash);
    this.clock = note.clock;
    this.queueTick = note.queueTick;
    const detail = { changed: note.changed, clock: note.clock, active: this.active() };
    this.dispatchEvent(new CustomEvent("change", { detail }));
    for (const it of this._iterators) it.push(detail);
  }

  /** The state names, in schema order. */
  get states() { return this.schema.map((s) => s.name); }
  /** Whether every one of `states` is active. */
  is(states) { return list(states).every((name) => this.tick(name) % 2 === 1); }
  /** Whether none of `states` is active. */
  not(states) { return list(states).every((name) => this.tick(name) % 2 === 0); }
  /** A state's tick (0 for a name the schema lacks). */
  tick(name) { const i = this.index.get(name); return i === undefined ? 0 : (this.clock[i] ?? 0); }
  /** The active states' names. */
  active() { return this.schema.filter((_, i) => this.clock[i] % 2 === 1).map((s) => s.name); }

  /**
   * Runs a mutation; resolves with "Executed", "Canceled" or "Queued". Rejects with an
   * AmError (RefusedError, NotConnectedError, TimeoutError, ...) or the signal's reason.
   * @param {"add"|"remove"|"set"} kind
   */
  mutate(kind, states, args, options) {
    let wire;
    try {
      wire = wireArgs(args);
    } catch (e) {
      return Promise.reject(e);
    }
    return this._task({ op: "mutate", h: this.handle, kind, states: list(states), args: wire }, options);
  }
  add(states, args, options) { return this.mutate("add", states, args, options); }
  remove(states, args, options) { return this.mutate("remove", states, args, options); }
  set(states, args, options) { return this.mutate("set", states, args, options); }

  /** Resolves when all of `states` are active. */
  when(states, options) { return this._task({ op: "when", h: this.handle, kind: "active", states: list(states) }, options); }
  /** Resolves when none of `states` is active. */
  whenNot(states, options) { return this._task({ op: "when", h: this.handle, kind: "inactive", states: list(states) }, options); }
  /** Resolves when `state`'s tick has grown by `n` (Go's WhenTicks). */
  whenTicks(state, n, options) { return this._task({ op: "when", h: this.handle, kind: "ticks", states: [state], n }, options); }

  /**
   * Resolves when `state` is activated by a mutation whose arguments include all of `args`
   * (Go's WhenArgs); a mirror asks its source, through every hop up to the root.
   */
  whenArgs(state, args, options) {
    let wire;
    try {
      wire = wireArgs(args);
    } catch (e) {
      return Promise.reject(e);
    }
    return this._task({ op: "when", h: this.handle, kind: "args", states: [state], args: wire }, options);
  }
  /** The machine's last error (of a failed handler), or null; a mirror asks its source. */
  err(options) { return this._task({ op: "err", h: this.handle }, options); }

  /**
   * The changes from now on, as an async iterator: `for await (const change of m.changes())`.
   * Changes that come while the loop body runs are kept, in order. Ends on `signal`.
   */
  changes({ signal } = {}) {
    const queue = [];
    let wake = null;
    let ended = false;
    const it = { push: (c) => { queue.push(c); wake?.(); } };
    this._iterators.add(it);
    const end = () => { ended = true; this._iterators.delete(it); wake?.(); };
    signal?.addEventListener("abort", end, { once: true });
    return {
      [Symbol.asyncIterator]() { return this; },
      next: async () => {
        while (queue.length === 0 && !ended) await new Promise((r) => { wake = r; });
        wake = null;
        return queue.length > 0 ? { value: queue.shift(), done: false } : { value: undefined, done: true };
      },
      return: async () => { end(); return { value: undefined, done: true }; },
    };
  }

  /** @internal A command whose answer may come later, with an AbortSignal and a timeout. */
  _task(command, { signal, timeoutMs } = {}) {
    try {
      signal?.throwIfAborted();
      const answer = call(command);
      if ("done" in answer) return Promise.resolve(answer.done);
      const id = answer.task;
      return new Promise((resolve, reject) => {
        let timer;
        const settle = (fn) => (value) => { clearTimeout(timer); signal?.removeEventListener("abort", onAbort); fn(value); };
        const cancel = (error) => { tasks.delete(id); call({ op: "cancel", task: id }); settle(reject)(error); };
        const onAbort = () => cancel(signal.reason);
        tasks.set(id, { resolve: settle(resolve), reject: settle(reject) });
        signal?.addEventListener("abort", onAbort, { once: true });
        if (timeoutMs !== undefined) timer = setTimeout(() => cancel(new TimeoutError("timeout", `no answer within ${timeoutMs} ms; a mutation may or may not have run`)), timeoutMs);
      });
    } catch (e) {
      return Promise.reject(e);
    }
  }
}

/**
 * A machine in the page. Its schema is the topology files' format: an object
 * `{states: [{name, require, add, remove, after, auto, multi}]}` or the TOML text of a schema
 * file. Requires the module: `await load()` first, or use `Machine.create`.
 */
export class Machine extends Source {
  /** @param {object|string} schema @param {{id?: string}} [options] */
  constructor(schema, { id } = {}) {
    super();
    const made = call(typeof schema === "string" ? { op: "machine", toml: schema, id } : { op: "machine", schema, id });
    this._attach(made.h, made.id);
  }

  /** Loads the module when needed and makes a machine. */
  static async create(schema, options) {
    await load();
    return new Machine(schema, options);
  }

  /**
   * Binds a handler: `enter`/`exit` of a state (return false, or throw, to cancel), `state`/
   * `end` of a state (throwing activates Exception), `anyEnter`/`anyState` of every
   * transition. Handlers run synchronously inside the transition and get the event
   * ({machine, handler, kind, state, called, entering, exiting, auto, args}); mutations made
   * from one are queued and resolve once they ran.
   * @param {"enter"|"exit"|"state"|"end"|"anyEnter"|"anyState"} handler
   */
  on(handler, state, fn) {
    if (typeof state === "function") [state, fn] = [null, state];
    const id = nextHandler++;
    handlers.set(id, fn);
    try {
      call({ op: "on", h: this.handle, handler, state, fn: id });
    } catch (e) {
      handlers.delete(id);
      throw e;
    }
    this.#handlerIds.push(id);
    return this;
  }

  /** The ids of this machine's handlers in `handlers`, let go when it is disposed. */
  #handlerIds = [];

  /** Ends the machine: waits reject with a `disposed` AmError; its handlers are let go. */
  dispose() {
    call({ op: "dispose", h: this.handle });
    sources.delete(this.handle);
    // A disposed machine runs no handler again: the closures (and all they hold) can go.
    for (const id of this.#handlerIds) handlers.delete(id);
    this.#handlerIds = [];
  }
}

// ----- mirrors -----

/** The wait before reconnect attempt `attempt` (0, 1, ...): doubling up to 5 s, equal jitter. */
export function retryDelay(attempt, random = Math.random) {
  const ceiling = Math.min(5000, 100 * 2 ** attempt);
  return ceiling / 2 + random() * ceiling / 2;
}

/**
 * After a socket of `owner` (an Offer or a Debugger) closed: refused for good when `permanent`
 * says the close code is (then `owner.closed`), otherwise `connect` again after the next
 * backoff delay, reported as `refused` when `refusedNow` says the code is a refusal that may
 * pass. Returns the status to report: [state, reason, code].
 */
function retryOrRefuse(owner, event, permanent, connect, refusedNow = () => false) {
  const reason = event.reason || `closed (${event.code})`;
  if (permanent(event.code)) {
    owner.closed = true;
    return ["refused", reason, event.code];
  }
  owner.retryTimer = setTimeout(connect, retryDelay(owner.attempt++));
  return [refusedNow(event.code) ? "refused" : "disconnected", reason, event.code];
}

/** `text` cut to at most 123 UTF-8 bytes (a WebSocket close reason's limit), whole characters only. */
export function closeReason(text) {
  let out = "";
  for (const ch of text) {
    if (out.length >= 123 || encoder.encode(out + ch).length > 123) break;
    out += ch;
  }
  return out;
}

/**
 * A mirror of a remote machine over WebSocket (through am-relay): the same reads, waits and
 * mutations as a Machine, mutations sent to the source. Events: "change" ({changed, clock,
 * active}), "status" ({state, reason, code}), "payload" ({name, data}). States: "connecting",
 * "ready", "disconnected" (it will retry), "refused" (permanent: a relay close code in
 * PERMANENT_CLOSE_CODES or a permanent refusal by the source; `reason` says why), "closed".
 */
export class Mirror extends Source {
  /**
   * @param {string} url ws(s)://relay/arpc/TARGET
   * @param {{source?: string, clientId?: string, token?: string, track?: string[],
   *   keepaliveMs?: number, compression?: boolean, WebSocket?: typeof WebSocket}} [options]
   */
  constructor(url, { source = "", clientId = `browser-${Math.random().toString(36).slice(2, 10)}`, token = null, track = null, keepaliveMs = DEFAULT_KEEPALIVE_MS, compression = true, WebSocket: Socket = globalThis.WebSocket } = {}) {
    super();
    Object.assign(this, { url, source, clientId, token, track, keepaliveMs, compression, Socket });
    this.state = "disconnected";
    this.attempt = 0;
    this.closed = false;
    this.schema = [];
    this.clock = [];
    this.index = new Map();
    this._readyWaiters = [];
  }

  /** Connects, and reconnects with backoff and jitter until close(). */
  start() {
    this.closed = false;
    load().then(() => {
      if (this.handle === undefined) {
        const made = call({ op: "mirror", id: this.clientId, clientId: this.clientId, source: this.source, endpoint: this.url, token: this.token, track: this.track, compression: this.compression, keepaliveMs: this.keepaliveMs });
        this._attach(made.h, made.id);
      }
      if (!this.closed) this.#connect();
    }, (e) => this.#status("refused", e.message));
    return this;
  }

  /** Resolves once the mirror is ready (at once when it is); rejects when it is refused. */
  ready() {
    if (this.state === "ready") return Promise.resolve(this);
    if (this.state === "refused") return Promise.reject(new AuthError("refused", this.reason));
    return new Promise((resolve, reject) => this._readyWaiters.push({ resolve, reject }));
  }

  /** Says goodbye and stops; waits reject with a `disposed` AmError. */
  close() {
    this.closed = true;
    clearTimeout(this.retryTimer);
    clearTimeout(this.timer);
    if (this.handle !== undefined) {
      call({ op: "dispose", h: this.handle });
      this._flush();
      sources.delete(this.handle);
      // Disposed in the module: a start() after this makes a new mirror there.
      this.handle = undefined;
    }
    this.ws?.close();
    this.ws = undefined;
    this.#status("closed");
  }

  #status(state, reason = "", code = 0) {
    this.state = state;
    this.reason = reason;
    if (state === "ready" || state === "refused") {
      for (const w of this._readyWaiters.splice(0)) {
        if (state === "ready") w.resolve(this); else w.reject(new (code === 4401 || code === 4403 ? AuthError : RefusedError)("refused", reason));
      }
    }
    this.dispatchEvent(new CustomEvent("status", { detail: { state, reason, code } }));
  }

  #connect() {
    this.#status("connecting");
    const ws = new this.Socket(this.url);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    this.lastError = undefined;
    // A socket this mirror replaced (close() then start()) may still report: it is not heard.
    ws.onopen = () => { if (ws === this.ws) this.#input(() => call({ op: "connected", h: this.handle, now: performance.now() })); };
    ws.onmessage = (event) => {
      if (ws !== this.ws) return;
      if (!(event.data instanceof ArrayBuffer)) return this.#fail("text message from the relay");
      this.#input(() => {
        toInbox(new Uint8Array(event.data));
        const status = wasm.exports.am_bytes(this.handle, performance.now());
        const answer = JSON.parse(outboxText());
        if (status !== 0) throw errorFrom(answer);
        return answer;
      });
    };
    ws.onclose = (event) => { if (ws === this.ws) this.#lost(event.code, event.reason || `closed (${event.code})`); };
    ws.onerror = () => {};
  }

  /** Hands one input to the module, then sends, arms the next timeout and acts on events. */
  #input(run) {
    if (this.closed) return;
    let answer;
    try {
      answer = run();
    } catch (e) {
      return this.#fail(e.message);
    }
    this._flush();
    clearTimeout(this.timer);
    if (answer.timeout !== null && answer.timeout !== undefined) {
      this.timer = setTimeout(() => this.#input(() => call({ op: "timeout", h: this.handle, now: performance.now() })), Math.max(0, answer.timeout - performance.now()));
    }
    for (const event of answer.events) {
      switch (event.type) {
        case "ready": this.attempt = 0; this._refresh(); this.#status("ready"); break;
        case "failed": this.#fail(event.reason, event.permanent); break;
        case "closed": this.#fail(event.reason); break;
        case "payload": this.dispatchEvent(new CustomEvent("payload", { detail: { name: event.name, data: fromWire(event.data) } })); break;
      }
    }
  }

  /** @internal Sends what the module queued for this mirror. */
  _flush() {
    if (!wasm || this.handle === undefined) return;
    const len = wasm.exports.am_take(this.handle);
    if (len > 0 && this.ws?.readyState === 1) this.ws.send(outbox().slice());
  }

  /**
   * Ends this connection for a reason of ours; `permanent`: no retry can help. The first reason
   * given for a connection is the one kept.
   */
  #fail(reason, permanent = false) {
    if (this.lastError) return;
    this.lastError = { reason, permanent };
    this.ws?.close(4000, closeReason(reason));
  }

  #lost(code, reason) {
    clearTimeout(this.timer);
    const error = this.lastError;
    const why = error?.reason ?? reason;
    if (this.handle !== undefined && !this.closed) call({ op: "lost", h: this.handle, reason: why });
    if (this.closed) return;
    if (PERMANENT_CLOSE_CODES.has(code) || error?.permanent) {
      this.closed = true;
      this.#status("refused", why, error ? 0 : code);
      return;
    }
    this.#status("disconnected", why, error ? 0 : code);
    this.retryTimer = setTimeout(() => this.#connect(), retryDelay(this.attempt++));
  }
}

// ----- offers (listen mode) -----

/**
 * A machine of this page offered through am-relay: nodes mirror it at
 * `ws://relay/listen/NAME` (and `am-node watch` reaches it there), and mutate it as they
 * would a node's. The page runs the server's side of the protocol in the module; the relay
 * only carries bytes. Events: "status" ({state: "connecting" | "offering" | "disconnected" |
 * "refused" | "closed", reason, code}), "connection" ({conn, state: "open" | "closed",
 * reason}). It is "offering" once the relay says it took the offer, not when a socket opens.
 * A name the relay does not take (4404), a missing or wrong token (4401) or a foreign origin
 * (4403) is refused for good; a name offered already (4409: another page, or this tab before a
 * reload, until the relay's idle timeout drops the old offer) is reported "refused", with the
 * reason, and retried with backoff like every other close, until close().
 */
export class Offer extends EventTarget {
  /**
   * @param {Machine} machine the machine to serve
   * @param {string} url ws(s)://relay/offer/NAME, with ?token=... when the relay wants one
   * @param {{keepaliveMs?: number, WebSocket?: typeof WebSocket}} [options]
   */
  constructor(machine, url, { keepaliveMs = DEFAULT_KEEPALIVE_MS, maxConnections = OFFER_MAX_CONNECTIONS, maxBuffered = OFFER_MAX_BUFFERED, WebSocket: Socket = globalThis.WebSocket } = {}) {
    super();
    const parsed = new URL(url);
    const name = decodeURIComponent(parsed.pathname.replace(/^\/offer\//, ""));
    if (!name || name.includes("/")) throw new TypeError(`${url} is not ws(s)://relay/offer/NAME`);
    Object.assign(this, { machine, url, name, keepaliveMs, maxConnections, maxBuffered, Socket });
    this.state = "closed";
    this.attempt = 0;
    this.closed = true;
    /** Open node connections: conn (a number of ours) -> {ws, timer}. */
    this.conns = new Map();
    this.lastConn = 0;
  }

  /** Offers the machine, and offers it again after transient closes, until close(). */
  start() {
    this.closed = false;
    if (this.s === undefined) {
      this.s = call({ op: "serve", h: this.machine.handle, name: this.name }).s;
      offers.set(this.s, this);
    }
    this.#connect();
    return this;
  }

  /**
   * Resolves once the relay took the offer; rejects at a refusal (the offer goes on retrying
   * one that may pass, 4409, until close()) or close().
   */
  ready() {
    if (this.state === "offering") return Promise.resolve(this);
    return new Promise((resolve, reject) => {
      const on = (e) => {
        if (e.detail.state === "offering") { this.removeEventListener("status", on); resolve(this); }
        if (e.detail.state === "refused" || e.detail.state === "closed") { this.removeEventListener("status", on); reject(new RefusedError("refused", e.detail.reason)); }
      };
      this.addEventListener("status", on);
    });
  }

  /** Withdraws the offer: node connections end, the relay forgets the name. */
  close() {
    this.closed = true;
    clearTimeout(this.retryTimer);
    clearInterval(this.keepalive);
    for (const conn of [...this.conns.keys()]) this.#dropConn(conn, "offer closed");
    this.ws?.close(1000, "offer closed");
    if (this.s !== undefined) {
      call({ op: "unserve", s: this.s });
      offers.delete(this.s);
      this.s = undefined;
    }
    this.#status("closed");
  }

  #status(state, reason = "", code = 0) {
    this.state = state;
    this.dispatchEvent(new CustomEvent("status", { detail: { state, reason, code } }));
  }

  #connect() {
    this.#status("connecting");
    const ws = new this.Socket(this.url);
    this.ws = ws;
    // An open socket is no offer yet: the relay accepts every upgrade and refuses after it
    // (a close with a code), so the offer stands, and the backoff starts over, only once the
    // relay says {"offered": NAME}. Events of a socket that is no longer `this.ws` (closed by
    // close(), its close arriving after start() made another) change nothing: its close would
    // stop the new socket's keepalive and open a third, which the relay refuses (4409) while
    // the second stands.
    ws.onopen = () => {
      if (this.ws !== ws) return;
      clearInterval(this.keepalive);
      // The relay closes an offer it hears nothing from.
      this.keepalive = setInterval(() => ws.readyState === 1 && ws.send("ping"), this.keepaliveMs);
    };
    ws.onmessage = (event) => {
      if (this.ws !== ws || typeof event.data !== "string") return;
      let note;
      try { note = JSON.parse(event.data); } catch { return; }
      if (typeof note.offered === "string") {
        this.attempt = 0;
        this.#status("offering");
      } else if (typeof note.open === "string" && CONN_ID.test(note.open)) {
        // Each node connection holds a session and what it queues in this tab: bounded.
        if (this.conns.size < this.maxConnections) this.#take(note.open);
      }
    };
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      clearInterval(this.keepalive);
      if (this.closed) return;
      // 4409: the name is offered by another page already, or by this tab before a reload
      // whose socket died without a close, which the relay holds until its idle timeout:
      // shown as refused, with the reason, and retried with backoff.
      this.#status(...retryOrRefuse(this, event, (code) => PERMANENT_CLOSE_CODES.has(code), () => this.#connect(), (code) => code === 4409));
    };
    ws.onerror = () => {};
  }

  /**
   * Takes the node connection the relay announced as `id` (known only to this page): a socket
   * of its own, bridged by the relay to the node. The module knows it by a number of ours.
   */
  #take(id) {
    const conn = ++this.lastConn;
    const url = new URL(this.url);
    url.pathname += `/${id}`;
    const ws = new this.Socket(url.href);
    ws.binaryType = "arraybuffer";
    this.conns.set(conn, { ws, timer: undefined });
    ws.onopen = () => {
      this.#act(call({ op: "serverOpen", s: this.s, conn, now: performance.now() }));
      this.dispatchEvent(new CustomEvent("connection", { detail: { conn, state: "open" } }));
    };
    ws.onmessage = (event) => {
      if (!(event.data instanceof ArrayBuffer) || this.s === undefined) return;
      toInbox(new Uint8Array(event.data));
      const status = wasm.exports.am_server_bytes(this.s, conn, performance.now());
      const answer = JSON.parse(outboxText());
      if (status !== 0) return this.#dropConn(conn, answer.message);
      this.#act(answer);
    };
    ws.onclose = (event) => this.#dropConn(conn, event.reason || `closed (${event.code})`);
    ws.onerror = () => {};
  }

  #dropConn(conn, reason) {
    const c = this.conns.get(conn);
    if (!c) return;
    this.conns.delete(conn);
    clearTimeout(c.timer);
    if (c.ws.readyState <= 1) c.ws.close(1000, closeReason(reason));
    if (this.s !== undefined) call({ op: "serverLost", s: this.s, conn });
    this.dispatchEvent(new CustomEvent("connection", { detail: { conn, state: "closed", reason } }));
  }

  /** @internal The machine changed or work finished: push to every connection. */
  _pump() {
    if (this.s !== undefined) this.#act(call({ op: "serverPump", s: this.s, now: performance.now() }));
  }

  /** Sends what the connections have, arms their timeouts, closes the ended ones. */
  #act(reply) {
    for (const conn of reply.pending) {
      const c = this.conns.get(conn);
      const len = wasm.exports.am_server_take(this.s, conn);
      if (c && len > 0 && c.ws.readyState === 1) {
        c.ws.send(outbox().slice());
        // A browser socket cannot stop reading: a node that asks and does not read would grow
        // what this tab buffers for it without end.
        if (c.ws.bufferedAmount > this.maxBuffered) {
          this.#dropConn(conn, `the node reads too slowly: over ${this.maxBuffered} bytes wait for it`);
        }
      }
    }
    for (const [conn, at] of reply.timeouts) {
      const c = this.conns.get(conn);
      if (!c) continue;
      clearTimeout(c.timer);
      if (at !== null) {
        c.timer = setTimeout(() => {
          if (this.s !== undefined && this.conns.has(conn)) this.#act(call({ op: "serverTimeout", s: this.s, conn, now: performance.now() }));
        }, Math.max(0, at - performance.now()));
      }
    }
    for (const { conn, reason } of reply.closed) this.#dropConn(conn, reason);
  }
}

/** Most node connections an Offer serves at once (more are not taken; `maxConnections`). */
export const OFFER_MAX_CONNECTIONS = 64;
/** Most bytes a node connection of an Offer may have waiting in the socket before it is
 * dropped (`maxBuffered`). */
export const OFFER_MAX_BUFFERED = 8 << 20;

/**
 * Offers `machine` through a relay, once the relay took it:
 * `await offer(bar, "ws://relay/offer/bar")`. A refusal (4409 too) rejects and closes the
 * offer; `new Offer(...).start()` keeps retrying one that may pass.
 * @returns {Promise<Offer>}
 */
export async function offer(machine, url, options) {
  await load();
  const offered = new Offer(machine, url, options).start();
  try {
    return await offered.ready();
  } catch (e) {
    offered.close();
    throw e;
  }
}

/**
 * A started mirror, once ready: `const m = await connect("ws://relay/arpc/demo")`.
 * @returns {Promise<Mirror>}
 */
export async function connect(url, options) {
  await load(options?.wasm);
  return new Mirror(url, options).start().ready();
}

// ----- telemetry -----

/** The page's Debugger, while one is open (a page has one at a time). */
let openDebugger = null;

/**
 * Streams what the page's machines and mirrors do to a collector (`am-node dbg`), as a node's
 * machines do: each transition (or a mirror's update, or a mutation it sent) as a record line,
 * taken from bounded buffers every `everyMs` (a full buffer drops records and counts them; the
 * console shows the count). The lines go over a WebSocket the relay bridges to the collector:
 * start the relay with a target for it (`--target dbg=tcp://127.0.0.1:6831`) and give its URL
 * (`ws://relay/arpc/dbg`). Reconnects with backoff until close(); every connection starts with
 * each machine's schema and clock. Events: "status" ({state: "connecting" | "sending" |
 * "disconnected" | "refused" | "closed", reason, code}). One per page: another is refused
 * (`debugger_open`) until this one is closed.
 */
export class Debugger extends EventTarget {
  /**
   * @param {string} url the relay's socket for the collector, ws(s)://relay/arpc/TARGET
   * @param {{node?: string, capacity?: number, redact?: string, everyMs?: number,
   *   keepaliveMs?: number, WebSocket?: typeof WebSocket}} [options]
   */
  constructor(url, { node = "page", capacity, redact, everyMs = 20, keepaliveMs = DEFAULT_KEEPALIVE_MS, establishedMs = DEFAULT_ESTABLISHED_MS, WebSocket: Socket = globalThis.WebSocket } = {}) {
    super();
    // The module has one telemetry tap per page: a second debugger would take half of the
    // first one's records, and each would send what the other missed.
    if (openDebugger && !openDebugger.closed) {
      throw new AmError("debugger_open", "this page has a Debugger already: close() it before making another");
    }
    call({ op: "debug", node, capacity, redact });
    openDebugger = this;
    Object.assign(this, { url, node, everyMs, keepaliveMs, establishedMs, Socket });
    this.state = "closed";
    this.closed = false;
    this.attempt = 0;
    /** Sources to attach once they have a handle in the module (mirrors not started yet). */
    this.waiting = [];
    /** Records dropped so far (full buffers), as of the last take. */
    this.dropped = 0;
    this.#connect();
  }

  /**
   * Streams `source` (a Machine or a Mirror) under `name` (default: its id). A mirror not yet
   * started is attached once it has started.
   */
  attach(source, name = source.id ?? source.clientId) {
    this.waiting.push([source, name]);
    this.#attachWaiting();
    return this;
  }

  #attachWaiting() {
    this.waiting = this.waiting.filter(([source, name]) => {
      if (source.handle === undefined) return true;
      call({ op: "debugAttach", h: source.handle, name });
      return false;
    });
  }

  /** Stops: the tracers are unbound and the socket closed. */
  close() {
    this.closed = true;
    clearTimeout(this.retryTimer);
    clearTimeout(this.establishTimer);
    clearInterval(this.timer);
    clearInterval(this.keepalive);
    this.ws?.close(1000, "telemetry stopped");
    call({ op: "debugStop" });
    this.#status("closed");
  }

  #status(state, reason = "", code = 0) {
    this.state = state;
    this.dispatchEvent(new CustomEvent("status", { detail: { state, reason, code } }));
  }

  /**
   * Sends what the buffers hold; with `hello`, every machine's record first. Every half second
   * the page's status too (its mirrors' links, for the console's tree).
   */
  #send(hello = false) {
    this.#attachWaiting();
    const now = performance.now();
    const status = hello || !(now - (this.statusAt ?? 0) < 500);
    if (status) this.statusAt = now;
    const { lines, dropped } = call({ op: "debugTake", hello, status });
    this.dropped = dropped;
    if (lines.length > 0 && this.ws?.readyState === 1) this.ws.send(encoder.encode(lines));
  }

  #connect() {
    this.#status("connecting");
    const ws = new this.Socket(this.url);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    // As an Offer's: only the current socket's events count.
    ws.onopen = () => {
      if (this.ws !== ws) return;
      clearInterval(this.keepalive);
      // An empty line: the collector skips it, the relay sees the page is alive.
      this.keepalive = setInterval(() => ws.readyState === 1 && ws.send(encoder.encode("\n")), this.keepaliveMs);
      // The relay accepts every upgrade and refuses after it (4502 while the collector is
      // down), and a bridge says nothing of its own: the socket counts as established once it
      // has stayed open for `establishedMs`. Only then are records sent and the backoff reset,
      // so a tab does not retry every 100 ms for as long as the collector is down.
      clearTimeout(this.establishTimer);
      this.establishTimer = setTimeout(() => {
        if (this.closed || this.ws !== ws || ws.readyState !== 1) return;
        this.attempt = 0;
        this.#status("sending");
        this.#send(true);
        clearInterval(this.timer);
        this.timer = setInterval(() => this.#send(), this.everyMs);
      }, this.establishedMs);
    };
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      clearTimeout(this.establishTimer);
      clearInterval(this.timer);
      clearInterval(this.keepalive);
      if (this.closed) return;
      this.#status(...retryOrRefuse(this, event, (code) => PERMANENT_CLOSE_CODES.has(code), () => this.#connect()));
    };
    ws.onerror = () => {};
  }
}

/**
 * Streams `sources` ({name: Machine | Mirror}) to a collector through the relay:
 * `debug("ws://relay/arpc/dbg", { bar }, { node: "tab-1" })`.
 * @returns {Promise<Debugger>}
 */
export async function debug(url, sources = {}, options) {
  await load(options?.wasm);
  const debuggerOf = new Debugger(url, options);
  for (const [name, source] of Object.entries(sources)) debuggerOf.attach(source, name);
  return debuggerOf;
}
