// The demo page: mirrors a relay target and lets a person toggle its states. Everything that
// comes from a node or the relay (state names, reasons) reaches the document as text
// (textContent, dataset), never as markup; the relay serves this page with a policy that runs
// no inline script.
import { Mirror, DEFAULT_KEEPALIVE_MS } from "./am.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const token = params.get("token");
const wsBase = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/arpc/`;
let mirror = null;
let keepaliveMs = DEFAULT_KEEPALIVE_MS;

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
}

function stateButton(state, tick) {
  const button = document.createElement("button");
  button.type = "button";
  button.dataset.state = state.name;
  button.setAttribute("aria-pressed", String(tick % 2 === 1));
  const name = document.createElement("span");
  name.textContent = state.name;
  const detail = document.createElement("small");
  detail.textContent = `tick ${tick}${state.multi ? " · multi" : ""}`;
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
  return item;
}

function render() {
  $("states").replaceChildren(...mirror.schema.map((state, i) => stateButton(state, mirror.clock[i])));
}

function follow(target) {
  mirror?.close();
  const url = wsBase + encodeURIComponent(target.name) + (token ? `?token=${encodeURIComponent(token)}` : "");
  mirror = new Mirror(url, { source: target.machine, keepaliveMs });
  mirror.addEventListener("status", (e) => {
    const { state, reason, code } = e.detail;
    setStatus(state);
    if (state === "refused") {
      showReason(`Refused${code ? ` (${code})` : ""}; not retrying.`, reason);
    } else if (state === "ready") {
      showReason(null);
    } else if (state === "disconnected" && reason) {
      showReason(`Disconnected${code ? ` (${code})` : ""}; retrying.`, reason);
    }
  });
  mirror.addEventListener("change", render);
  mirror.start();
}

async function main() {
  const response = await fetch("/targets", { headers: token ? { Authorization: `Bearer ${token}` } : {} });
  if (!response.ok) {
    setStatus("refused");
    showReason(`The relay refused the target list (${response.status}).`, (await response.text()).trim());
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
