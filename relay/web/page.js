// The demo page: mirrors a relay target and lets a person toggle its states. Everything that
// comes from a node or the relay (state names, reasons) reaches the document as text
// (textContent, dataset), never as markup; the relay serves this page with a policy that runs
// no inline script. Buttons are made once per schema and updated in place on every change, so
// focus and a press that spans a change survive.
import { Mirror, DEFAULT_KEEPALIVE_MS } from "./am.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const token = params.get("token");
const wsBase = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/arpc/`;
let mirror = null;
let keepaliveMs = DEFAULT_KEEPALIVE_MS;
/** The buttons by state name, for the schema they were made for. */
let buttons = new Map();
let builtFor = null;

/** Shows why the relay or the node refused, or hides the notice. */
function showReason(title, text) {
  const box = $("reason");
  if (!title) {
    box.hidden = true;
    box.replaceChildren();
    return;
  }
  const heading = document.createElement("strong");
  heading.textContent = title;
  box.replaceChildren(heading, document.createTextNode(text));
  box.hidden = false;
}

function setStatus(state) {
  $("status").dataset.state = state;
  $("status").textContent = state;
  // The clock shown is the last one known until the mirror is ready again.
  $("states").dataset.stale = String(state !== "ready");
}

function stateButton(state) {
  const button = document.createElement("button");
  button.type = "button";
  button.dataset.state = state.name;
  const name = document.createElement("span");
  name.textContent = state.name;
  const detail = document.createElement("small");
  button.append(name, detail);
  button.addEventListener("click", async () => {
    const kind = mirror.is(state.name) ? "remove" : "add";
    try {
      const outcome = await mirror.mutate(kind, [state.name]);
      $("log").textContent = `${kind} ${state.name}: ${outcome}`;
    } catch (e) {
      $("log").textContent = `${kind} ${state.name} failed: ${e.message}`;
    }
  });
  const item = document.createElement("li");
  item.append(button);
  return { item, button, detail, multi: state.multi };
}

/** Makes the buttons when the schema is new, then sets each one's state in place. */
function render() {
  if (builtFor !== mirror.schemaHash) {
    builtFor = mirror.schemaHash;
    buttons = new Map(mirror.schema.map((state) => [state.name, stateButton(state)]));
    $("states").replaceChildren(...[...buttons.values()].map((b) => b.item));
  }
  mirror.schema.forEach((state, i) => {
    const b = buttons.get(state.name);
    const tick = mirror.clock[i] ?? 0;
    // The source's ACL: a hidden state's tick is unknown here (0 on the wire), a read-only
    // one would be refused. Both are shown as such instead of as inactive buttons.
    const access = mirror.hidden.has(state.name) ? "hidden" : mirror.readOnly.has(state.name) ? "read-only" : "";
    if ((b.item.dataset.access ?? "") !== access) {
      if (access) b.item.dataset.access = access; else delete b.item.dataset.access;
      b.button.disabled = access !== "";
      b.button.title = access === "hidden" ? "hidden from this client by the source's ACL"
        : access === "read-only" ? "this client may not mutate it (the source's ACL)" : "";
    }
    const pressed = access === "hidden" ? "mixed" : String(tick % 2 === 1);
    if (b.button.getAttribute("aria-pressed") !== pressed) b.button.setAttribute("aria-pressed", pressed);
    const text = access === "hidden" ? "hidden by ACL"
      : `tick ${tick}${b.multi ? " · multi" : ""}${access === "read-only" ? " · read-only" : ""}`;
    if (b.detail.textContent !== text) b.detail.textContent = text;
  });
}

function follow(target) {
  mirror?.close();
  builtFor = null;
  const url = wsBase + encodeURIComponent(target.name) + (token ? `?token=${encodeURIComponent(token)}` : "");
  mirror = new Mirror(url, { source: target.machine, keepaliveMs });
  mirror.addEventListener("status", (e) => {
    const { state, reason, code } = e.detail;
    setStatus(state);
    if (state === "refused") {
      showReason(`Refused${code ? ` (${code})` : ""}; not retrying.`, reason);
    } else if (state === "ready") {
      showReason(null);
      render();
    } else if (state === "disconnected" && reason) {
      showReason(`Disconnected${code ? ` (${code})` : ""}; retrying.`, reason);
    }
  });
  mirror.addEventListener("change", (e) => {
    render();
    // A hidden state's tick is not this page's to know: it is never named as changed.
    const changed = e.detail.changed.filter((name) => !mirror.hidden.has(name));
    if (changed.length) $("changed").textContent = `changed: ${changed.join(", ")}`;
  });
  mirror.start();
}

async function main() {
  const response = await fetch("/targets", { headers: token ? { Authorization: `Bearer ${token}` } : {} });
  if (!response.ok) {
    // The reason first: the status is what a reader (or a test) waits on, so it must not say
    // "refused" while the body explaining why is still being read.
    const why = (await response.text()).trim();
    showReason(`The relay refused the target list (${response.status}).`, why);
    setStatus("refused");
    return;
  }
  // Ping well within the relay's idle timeout (it closes a page that sends nothing).
  const idle = Number(response.headers.get("X-Relay-Idle-Timeout-Ms"));
  if (idle > 0) keepaliveMs = Math.max(100, Math.min(DEFAULT_KEEPALIVE_MS, Math.floor(idle / 3)));
  const targets = await response.json();
  for (const t of targets) $("target").append(new Option(t.name, t.name));
  $("target").hidden = targets.length === 0;
  const chosen = targets.find((t) => t.name === params.get("target")) ?? targets[0];
  if (chosen) {
    $("target").value = chosen.name;
    $("target").addEventListener("change", () => follow(targets.find((t) => t.name === $("target").value)));
    follow(chosen);
  } else {
    $("log").textContent = "this relay has no targets";
  }
}

window.amMirror = () => mirror;
main().catch((e) => {
  setStatus("disconnected");
  $("log").textContent = `cannot start: ${e.message}`;
});
