// The foo/bar example (asyncmachine-go's WASM example, re-created): this page hosts the
// machine bar and offers it through the relay (nodes mirror it at ws://relay/listen/bar); it
// mirrors the node's machine foo. foo's handlers mutate bar, bar's handlers mutate foo, so a
// mutation goes both ways. When the relay has a target "dbg" (a collector, `am-node dbg`), both
// machines report to it, as the nodes' do. Everything shown is text (textContent).
import { Debugger, Machine, Mirror, Offer, load } from "./am.js";

/** foo's and bar's schema: a message (multi: every one counts) and a reply to one. */
export const SCHEMA = { states: [{ name: "Msg", multi: true }, { name: "Reply", multi: true }] };

const $ = (id) => document.getElementById(id);
const token = new URLSearchParams(location.search).get("token");
const query = token ? `?token=${encodeURIComponent(token)}` : "";
const base = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}`;

function show(name, machine) {
  for (const state of ["Msg", "Reply"]) $(`${name}-${state}`).textContent = String(machine.tick(state));
}

/** Shows a connection's state; a refusal or a disconnection with its reason, and whether it is
 * being retried (an offer refused because another tab holds the name is). */
function status(id, state, reason, retrying = false) {
  const box = $("reason");
  if (reason && (state === "refused" || state === "disconnected")) {
    box.hidden = false;
    box.dataset.for = id;
    box.textContent = `${id.replace("-status", "")}: ${reason}${retrying ? " (retrying)" : ""}`;
  } else if (["ready", "offering", "sending"].includes(state) && box.dataset.for === id) {
    // Recovered: the notice was about this connection.
    box.hidden = true;
    delete box.dataset.for;
  }
  $(id).dataset.state = state;
  $(id).textContent = state;
}

async function main() {
  await load();
  // The relay's target "foo" names the node's machine.
  const response = await fetch("/targets", { headers: token ? { Authorization: `Bearer ${token}` } : {} });
  const targets = response.ok ? await response.json() : [];
  const target = targets.find((t) => t.name === "foo");
  const bar = new Machine(SCHEMA, { id: "bar" });
  // This tab's name: foo's server records it as the client of each mutation, and telemetry
  // names the tab's machines by it, so the debugger links the two.
  const node = `page-${Math.random().toString(36).slice(2, 6)}`;
  const foo = new Mirror(`${base}/arpc/foo${query}`, { source: target?.machine ?? "", clientId: node });
  // bar's handler: a message to bar is answered with a reply to foo.
  bar.on("state", "Msg", (e) => {
    foo.add("Reply", { from: "bar", n: e.args.n ?? 0 }).catch((err) => { $("log").textContent = `reply to foo failed: ${err.message}`; });
  });
  bar.addEventListener("change", () => show("bar", bar));
  foo.addEventListener("change", () => show("foo", foo));
  foo.addEventListener("status", (e) => status("foo-status", e.detail.state, e.detail.reason));
  const offer = new Offer(bar, `${base}/offer/bar${query}`);
  offer.addEventListener("status", (e) => status("bar-status", e.detail.state, e.detail.reason, !offer.closed));
  let sent = 0;
  $("to-foo").addEventListener("click", () => foo.add("Msg", { from: "page", n: ++sent }).catch((err) => { $("log").textContent = err.message; }));
  $("to-bar").addEventListener("click", () => bar.add("Msg", { from: "page", n: ++sent }));
  foo.start();
  offer.start();
  show("bar", bar);
  // Telemetry, when the relay bridges to a collector: this tab is a node of its own.
  let debugging = null;
  if (targets.some((t) => t.name === "dbg")) {
    debugging = new Debugger(`${base}/arpc/dbg${query}`, { node }).attach(bar, "bar").attach(foo, "foo");
  }
  window.foobar = { bar, foo, offer, debugging };
}

main().catch((e) => { $("log").textContent = `cannot start: ${e.message}`; });
