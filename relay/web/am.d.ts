// Type declarations of am.js: asyncmachine for JavaScript (machines in the page, mirrors of
// remote machines over am-relay, offers of page machines to nodes), run by am.wasm.

/** How often a ready mirror pings, unless told otherwise (ms). */
export const DEFAULT_KEEPALIVE_MS: number;
/** How long a Debugger's socket stays open before it counts as established (1000 ms). */
export const DEFAULT_ESTABLISHED_MS: number;
/** Relay close codes after which the same connection can never succeed. */
export const PERMANENT_CLOSE_CODES: Set<number>;
/** How deep lists and maps may nest in an argument. */
export const DEPTH_LIMIT: number;

/** What an argument may be: what the protocol carries, exactly. */
export type Value =
  | null
  | boolean
  | number
  | bigint
  | string
  | Uint8Array
  | Value[]
  | { [name: string]: Value }
  | Map<string, Value>;
/** A mutation's arguments: names to values. */
export type Args = { [name: string]: Value } | Map<string, Value>;
/** What a mutation became. */
export type Outcome = "Executed" | "Canceled" | "Queued";
/** Error codes: the class of each is below. */
export type ErrorCode =
  | "refused" | "queue_full" | "auth" | "not_connected" | "protocol" | "timeout"
  | "unknown_state" | "disposed" | "canceled" | "schema" | "bad_request" | "not_loaded";

/** Any failure of this library. */
export class AmError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string);
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

/** Options of a wait or a mutation. */
export interface CallOptions {
  /** Rejects with the signal's reason when it aborts (a sent mutation may still run). */
  signal?: AbortSignal;
  /** Rejects with a TimeoutError after this many milliseconds. */
  timeoutMs?: number;
}

/** A state of a schema, in the topology files' format. */
export interface StateDef {
  name: string;
  require?: string[];
  add?: string[];
  remove?: string[];
  after?: string[];
  auto?: boolean;
  multi?: boolean;
}
/** A schema: its states in order (`Exception` is added when missing). */
export interface SchemaDef {
  states: StateDef[];
}

/** A change of a machine's clock. */
export interface Change {
  /** The names of the states whose tick changed. */
  changed: string[];
  clock: number[];
  active: string[];
}

/** What a handler gets. */
export interface HandlerEvent {
  machine: string;
  /** asyncmachine's name of the handler: `AEnter`, `AState`, `AnyState`, ... */
  handler: string;
  kind: "add" | "remove" | "set";
  state: string | null;
  called: string[];
  entering: string[];
  exiting: string[];
  auto: boolean;
  args: { [name: string]: Value };
}

/** Loads am.wasm once (by default beside am.js; in Node, pass its bytes). */
export function load(source?: string | URL | Response | BufferSource | WebAssembly.Module): Promise<void>;
/** A JS value as the module's tagged JSON; throws a TypeError naming what cannot be carried. */
export function toWire(value: Value): unknown;
/** The module's tagged JSON back as JS values. */
export function fromWire(json: unknown): Value;
/** The wait before reconnect attempt `attempt`: doubling up to 5 s, equal jitter. */
export function retryDelay(attempt: number, random?: () => number): number;
/** `text` cut to at most 123 UTF-8 bytes on a character boundary. */
export function closeReason(text: string): string;

/** What local machines and mirrors share. */
export class Source extends EventTarget {
  readonly id: string;
  /** The schema's states, in order. */
  readonly schema: StateDef[];
  /** Ticks by position (odd: active). */
  readonly clock: number[];
  readonly queueTick: number;
  /** States the source's ACL hides from this mirror (their ticks stay 0); empty on a machine. */
  readonly hidden: ReadonlySet<string>;
  /** States this mirror may see but not mutate (the source refuses them); empty on a machine. */
  readonly readOnly: ReadonlySet<string>;
  /** The state names, in schema order. */
  readonly states: string[];
  is(states: string | string[]): boolean;
  not(states: string | string[]): boolean;
  tick(state: string): number;
  active(): string[];
  mutate(kind: "add" | "remove" | "set", states: string | string[], args?: Args, options?: CallOptions): Promise<Outcome>;
  add(states: string | string[], args?: Args, options?: CallOptions): Promise<Outcome>;
  remove(states: string | string[], args?: Args, options?: CallOptions): Promise<Outcome>;
  set(states: string | string[], args?: Args, options?: CallOptions): Promise<Outcome>;
  when(states: string | string[], options?: CallOptions): Promise<null>;
  whenNot(states: string | string[], options?: CallOptions): Promise<null>;
  whenTicks(state: string, n: number, options?: CallOptions): Promise<null>;
  whenArgs(state: string, args: Args, options?: CallOptions): Promise<null>;
  /** The last error (of a failed handler), or null. */
  err(options?: CallOptions): Promise<string | null>;
  /** The changes from now on; ends on `signal` or when the loop breaks. */
  changes(options?: { signal?: AbortSignal }): AsyncIterableIterator<Change>;
  addEventListener(type: "change", listener: (event: CustomEvent<Change>) => void, options?: AddEventListenerOptions | boolean): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject, options?: AddEventListenerOptions | boolean): void;
}

/** A machine in the page. */
export class Machine extends Source {
  constructor(schema: SchemaDef | string, options?: { id?: string });
  static create(schema: SchemaDef | string, options?: { id?: string }): Promise<Machine>;
  on(handler: "enter" | "exit", state: string, fn: (event: HandlerEvent) => boolean | void): this;
  on(handler: "state" | "end", state: string, fn: (event: HandlerEvent) => void): this;
  on(handler: "anyEnter", fn: (event: HandlerEvent) => boolean | void): this;
  on(handler: "anyState", fn: (event: HandlerEvent) => void): this;
  dispose(): void;
}

/** A mirror's connection status. */
export interface MirrorStatus {
  state: "connecting" | "ready" | "disconnected" | "refused" | "closed";
  reason: string;
  code: number;
}
export interface MirrorOptions {
  /** The source's name at the node (empty: its only source). */
  source?: string;
  clientId?: string;
  token?: string | null;
  track?: string[] | null;
  keepaliveMs?: number;
  compression?: boolean;
  /** The WebSocket class (Node 20: from the `ws` package; Node 22 and browsers have one). */
  WebSocket?: typeof WebSocket;
}

/** A mirror of a remote machine over WebSocket (through am-relay). */
export class Mirror extends Source {
  readonly url: string;
  readonly state: MirrorStatus["state"];
  constructor(url: string, options?: MirrorOptions);
  start(): this;
  ready(): Promise<this>;
  close(): void;
  addEventListener(type: "status", listener: (event: CustomEvent<MirrorStatus>) => void, options?: AddEventListenerOptions | boolean): void;
  addEventListener(type: "payload", listener: (event: CustomEvent<{ name: string; data: Uint8Array }>) => void, options?: AddEventListenerOptions | boolean): void;
  addEventListener(type: "change", listener: (event: CustomEvent<Change>) => void, options?: AddEventListenerOptions | boolean): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject, options?: AddEventListenerOptions | boolean): void;
}

/** A started mirror, once ready. */
export function connect(url: string, options?: MirrorOptions & { wasm?: Parameters<typeof load>[0] }): Promise<Mirror>;

/** An offer's status: "offering" once the relay said it took the offer, not when a socket opened. */
export interface OfferStatus {
  state: "connecting" | "offering" | "disconnected" | "refused" | "closed";
  reason: string;
  code: number;
}

/**
 * A machine of this page offered through am-relay, for nodes to mirror at ws://relay/listen/NAME.
 * A name offered already (4409) is reported refused and retried with backoff until close();
 * 4401, 4403 and 4404 end it.
 */
export class Offer extends EventTarget {
  readonly name: string;
  readonly state: OfferStatus["state"];
  /** `maxConnections`: node connections served at once (64); `maxBuffered`: bytes waiting for
   * one node before it is dropped (8 MiB). */
  constructor(machine: Machine, url: string, options?: { keepaliveMs?: number; maxConnections?: number; maxBuffered?: number; WebSocket?: typeof WebSocket });
  start(): this;
  ready(): Promise<this>;
  close(): void;
  addEventListener(type: "status", listener: (event: CustomEvent<OfferStatus>) => void, options?: AddEventListenerOptions | boolean): void;
  addEventListener(type: "connection", listener: (event: CustomEvent<{ conn: number; state: "open" | "closed"; reason?: string }>) => void, options?: AddEventListenerOptions | boolean): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject, options?: AddEventListenerOptions | boolean): void;
}

/** Offers `machine` through a relay, once the relay took it; a refusal rejects and closes the offer. */
export function offer(machine: Machine, url: string, options?: { keepaliveMs?: number; maxConnections?: number; maxBuffered?: number; WebSocket?: typeof WebSocket }): Promise<Offer>;

/** A debugger connection's status. */
export interface DebuggerStatus {
  state: "connecting" | "sending" | "disconnected" | "refused" | "closed";
  reason: string;
  code: number;
}

/** Options of a page's telemetry. */
export interface DebuggerOptions {
  /** The page's node name at the collector (default "page"). */
  node?: string;
  /** Records each machine's buffer holds (default 4096, at most 65536). */
  capacity?: number;
  /** Comma-separated words: arguments whose names contain one are sent as `<redacted>`. */
  redact?: string;
  /** How often the buffers are taken and sent (default 20 ms). */
  everyMs?: number;
  keepaliveMs?: number;
  /** How long the socket must stay open before records go and the backoff starts over (default 1000 ms). */
  establishedMs?: number;
  WebSocket?: typeof WebSocket;
}

/** Streams the page's machines and mirrors to a collector (`am-node dbg`) through the relay. */
export class Debugger extends EventTarget {
  readonly node: string;
  readonly state: DebuggerStatus["state"];
  /** Records dropped so far (full buffers), as of the last take. */
  readonly dropped: number;
  constructor(url: string, options?: DebuggerOptions);
  attach(source: Source, name?: string): this;
  close(): void;
  addEventListener(type: "status", listener: (event: CustomEvent<DebuggerStatus>) => void, options?: AddEventListenerOptions | boolean): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject, options?: AddEventListenerOptions | boolean): void;
}

/** Streams `sources` (by name) to a collector through the relay's socket `url` (ws://relay/arpc/TARGET). */
export function debug(url: string, sources?: Record<string, Source>, options?: DebuggerOptions & { wasm?: Parameters<typeof load>[0] }): Promise<Debugger>;
