// The foo/bar example (asyncmachine-go's WASM example, re-created): this page hosts the
// machine bar and offers it through the relay (nodes mirror it at ws://relay/listen/bar); it
// mirrors the node's machine foo. foo's handlers mutate bar, bar's handlers mutate foo, so a
// mutation goes both ways. Everything shown is text (textContent).
import { Machine, Mirror, Offer, load } from "./am.js";

/** foo's and bar's schema: a message (multi: every one counts) and a reply to one. */
export const SCHEMA = { states: [{ name: "Msg", multi: true }, { name: "Reply", multi: true }] };

const $ = (id) => document.getElementById(id);
const token = new URLSearchParams(location.search).get("token");
const query = token ? `?token=${encodeURIComponent(token)}` : "";
const base = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}`;

function show(name, machine) {
  for (const state of ["Msg", "Reply"]) $(`${name}-${state}`).textContent = String(machine.tick(state));
}

function status(id, state, reason) {
  $(id).dataset.state = state;
  $(id).textContent = state;
  if (reason && (state === "refused" || state === "disconnected")) {
    $("reason").hidden = false;
    $("reason").textContent = `${id.replace("-status", "")}: ${reason}`;
  }
}

async function main() {
  await load();
  // The relay's target "foo" names the node's machine.
  const response = await fetch("/targets", { headers: token ? { Authorization: `Bearer ${token}` } : {} });
  const target = response.ok ? (await response.json()).find((t) => t.name === "foo") : null;
  const bar = new Machine(SCHEMA, { id: "bar" });
  const foo = new Mirror(`${base}/arpc/foo${query}`, { source: target?.machine ?? "" });
  // bar's handler: a message to bar is answered with a reply to foo.
  bar.on("state", "Msg", (e) => {
    foo.add("Reply", { from: "bar", n: e.args.n ?? 0 }).catch((err) => { $("log").textContent = `reply to foo failed: ${err.message}`; });
  });
  bar.addEventListener("change", () => show("bar", bar));
  foo.addEventListener("change", () => show("foo", foo));
  foo.addEventListener("status", (e) => status("foo-status", e.detail.state, e.detail.reason));
  const offer = new Offer(bar, `${base}/offer/bar${query}`);
  offer.addEventListener("status", (e) => status("bar-status", e.detail.state, e.detail.reason));
  let sent = 0;
  $("to-foo").addEventListener("click", () => foo.add("Msg", { from: "page", n: ++sent }).catch((err) => { $("log").textContent = err.message; }));
  $("to-bar").addEventListener("click", () => bar.add("Msg", { from: "page", n: ++sent }));
  foo.start();
  offer.start();
  show("bar", bar);
  window.foobar = { bar, foo, offer };
}

main().catch((e) => { $("log").textContent = `cannot start: ${e.message}`; });
