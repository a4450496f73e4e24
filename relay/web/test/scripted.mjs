// A WebSocket the tests drive in place of a browser's: it records what is sent, and opens,
// talks and closes when the test says so.

export class ScriptedSocket {
  /** Every socket made, in order; a test empties it when it starts. */
  static made = [];
  constructor(url) {
    this.url = url;
    this.sent = [];
    this.readyState = 0;
    ScriptedSocket.made.push(this);
  }
  send(data) { this.sent.push(data); }
  /** What a browser does: the socket is closing; its close event comes later (closeWith), if at all. */
  close() { this.readyState = 2; }
  open() { this.readyState = 1; this.onopen?.(); }
  /** The relay closes with a code and reason (what a browser reports in onclose). */
  closeWith(code, reason) { this.readyState = 3; this.onclose?.({ code, reason }); }
  /** A text message (the relay's notes). */
  text(note) { this.onmessage?.({ data: JSON.stringify(note) }); }
  /** A binary message (protocol frames). */
  deliver(bytes) { this.onmessage?.({ data: bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) }); }
  /** The message types of the frames sent (each send is one frame here). */
  sentTypes() { return this.sent.map((b) => b[b[0] & 0x80 ? 2 : 1]); }
}
