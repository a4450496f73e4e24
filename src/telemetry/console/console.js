// am-dbg's console: the history of every machine of a tree, live over a WebSocket to the
// collector; time travel asks the collector for every machine's clock at an entry. Text
// from nodes reaches the DOM only as text (textContent, attributes), never as markup.
"use strict";

const MAX_ENTRIES = 20000; // kept in the page
const MAX_ROWS = 2000; // rows drawn in the log
const SVG = "http://www.w3.org/2000/svg";

const S = {
  machines: new Map(), // key -> {key, info, clock, queue_tick, dropped, disposed}
  nodes: new Map(), // node -> status record
  entries: [],
  lastSeq: 0,
  at: null, // seq shown, null = live
  atClocks: null,
  atChanged: null, // {key, changed[]} of the entry shown
  selected: null,
  lost: 0,
  ws: null,
  retry: 250,
  pendingLink: null, // from the URL: {m, at}
};

const $ = (id) => document.getElementById(id);
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const k of kids) if (k != null) e.append(k);
  return e;
}
function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text != null) e.textContent = text;
  return e;
}
const keyOf = (r) => r.node + "/" + r.machine;
const active = (tick) => tick % 2 === 1;

// ---- the socket ----

function connect() {
  setConn(S.lastSeq ? "reconnecting" : "connecting");
  const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
  S.ws = ws;
  ws.onopen = () => {
    S.retry = 250;
    send({ op: "hello", since: S.lastSeq });
  };
  ws.onmessage = (ev) => {
    let m;
    try { m = JSON.parse(ev.data); } catch { return; }
    onMessage(m);
  };
  ws.onclose = () => {
    if (S.ws !== ws) return;
    setConn("reconnecting");
    setTimeout(connect, S.retry);
    S.retry = Math.min(S.retry * 2, 3000);
  };
}
function send(m) {
  if (S.ws && S.ws.readyState === WebSocket.OPEN) S.ws.send(JSON.stringify(m));
}
function setConn(state) {
  const c = $("conn");
  c.dataset.state = state;
  c.textContent = state;
}

function onMessage(m) {
  switch (m.t) {
    case "snapshot": return onSnapshot(m);
    case "entry": return onEntry(m, true);
    case "status": S.nodes.set(m.status.node, m.status); return schedule();
    case "at": return onAt(m);
    case "hops": return onHops(m);
    case "lagged":
      banner(`the console fell behind and missed ${m.missed} entries; catching up`);
      return send({ op: "hello", since: S.lastSeq });
    case "error": return banner(m.message);
  }
}

function onSnapshot(m) {
  if (m.since > 0 && m.next_seq <= S.lastSeq) {
    // Another collector (restarted without its history): start over from what it has.
    banner("the collector was restarted without its history: showing what it has now");
    S.entries = []; S.lastSeq = 0; S.machines.clear(); S.nodes.clear();
    goLive();
    return send({ op: "hello", since: 0 });
  }
  const caughtUp = m.entries.filter((e) => e.seq > S.lastSeq).length;
  if (m.since > 0) {
    S.lost += m.lost;
    banner(`reconnected: ${caughtUp} entries caught up` + (m.lost ? `, ${m.lost} no longer kept by the collector` : ""));
  }
  for (const v of m.machines) {
    S.machines.set(v.key, { key: v.key, info: v.info, clock: v.clock, queue_tick: v.queue_tick, dropped: v.dropped, disposed: v.disposed });
  }
  for (const n of m.nodes) S.nodes.set(n.node, n);
  for (const e of m.entries) onEntry(e, false);
  setConn("live");
  fillMachineFilter();
  renderLog();
  schedule();
  if (S.pendingLink) {
    const link = S.pendingLink;
    S.pendingLink = null;
    if (link.m) select(link.m);
    if (link.at) travel(link.at);
  }
}

function onEntry(e, live) {
  if (e.seq <= S.lastSeq) return;
  S.lastSeq = e.seq;
  S.entries.push(e);
  if (S.entries.length > MAX_ENTRIES) S.entries.splice(0, S.entries.length - MAX_ENTRIES);
  const r = e.record;
  if (r.t !== "status") {
    const key = keyOf(r);
    let v = S.machines.get(key);
    if (!v) { v = { key, info: null, clock: [], queue_tick: 0, dropped: 0, disposed: false }; S.machines.set(key, v); }
    if (r.t === "machine") { v.info = r; v.clock = r.clock; v.queue_tick = r.queue_tick; v.disposed = false; fillMachineFilter(); }
    if (r.t === "transition") { v.clock = r.clock; v.queue_tick = r.queue_tick; }
    if (r.t === "dispose") v.disposed = true;
    if (r.dropped != null) v.dropped = r.dropped;
  }
  if (live) {
    if (matches(e)) appendRow(e, true);
    schedule();
  }
}

// A hop's record came after the transition it led to: the transition's hops are longer now.
function onHops(m) {
  const e = S.entries.find((x) => x.seq === m.seq);
  if (!e || (e.hops && e.hops.length >= m.hops.length)) return;
  e.hops = m.hops;
  const row = document.querySelector(`#log tr[data-seq="${m.seq}"]`);
  if (row) row.lastElementChild.textContent = m.hops.join(" ← ");
}

function onAt(m) {
  if (m.seq == null) { banner("no transition further that way"); return; }
  S.at = m.seq;
  S.atClocks = m.clocks;
  const e = S.entries.find((x) => x.seq === m.seq);
  S.atChanged = e && e.record.t === "transition" ? { key: keyOf(e.record), changed: e.record.changed } : null;
  document.body.classList.add("past");
  updateLink();
  markRows();
  schedule();
  const row = document.querySelector(`#log tr[data-seq="${m.seq}"]`);
  if (row) row.scrollIntoView({ block: "center" });
}

// ---- time travel ----

function travel(seq) { send({ op: "at", seq: Number(seq) }); }
function step(forward) {
  const from = S.at != null ? S.at : (forward ? S.lastSeq : lastTransitionSeq());
  const filter = $("along").checked && S.selected ? { machine: S.selected } : {};
  if (S.at == null && forward) return;
  send({ op: "step", seq: from, forward, filter });
}
function lastTransitionSeq() {
  for (let i = S.entries.length - 1; i >= 0; i--) if (S.entries[i].record.t === "transition") return S.entries[i].seq;
  return S.lastSeq + 1;
}
function goLive() {
  S.at = null; S.atClocks = null; S.atChanged = null;
  document.body.classList.remove("past");
  updateLink();
  markRows();
  schedule();
}
function select(key) {
  S.selected = S.selected === key ? null : key;
  updateLink();
  schedule();
}
function updateLink() {
  const parts = [];
  if (S.selected) parts.push("m=" + encodeURIComponent(S.selected));
  if (S.at != null) parts.push("at=" + S.at);
  history.replaceState(null, "", parts.length ? "#" + parts.join("&") : location.pathname);
  $("position").textContent = S.at == null ? "live" : `at #${S.at}`;
  $("live").setAttribute("aria-pressed", String(S.at == null));
}
function readLink() {
  const p = new URLSearchParams(location.hash.slice(1));
  const m = p.get("m"), at = Number(p.get("at"));
  if (m || at) S.pendingLink = { m, at: at > 0 ? at : null };
}

// ---- the log ----

function filter() {
  return {
    machine: $("f-machine").value, state: $("f-state").value.trim(),
    kind: $("f-kind").value, outcome: $("f-outcome").value,
  };
}
function kindOf(r) {
  if (r.t === "transition") return r.kind || "update";
  return r.t;
}
function matches(e) {
  const f = filter(), r = e.record;
  if (r.t === "status") return false;
  if (f.machine && keyOf(r) !== f.machine) return false;
  if (f.kind && kindOf(r) !== f.kind) return false;
  if (f.outcome && !(r.t === "transition" && r.outcome === f.outcome)) return false;
  if (f.state) {
    const called = r.called || [];
    let hit = called.includes(f.state);
    if (!hit && r.t === "transition") {
      const info = S.machines.get(keyOf(r))?.info;
      hit = !!info && r.changed.some((i) => info.states[i]?.name === f.state);
    }
    if (!hit) return false;
  }
  return true;
}
function timeText(ms) {
  const d = new Date(ms);
  return d.toTimeString().slice(0, 8) + "." + String(d.getMilliseconds()).padStart(3, "0");
}
function rowFor(e) {
  const r = e.record;
  const states = r.t === "transition" && !r.kind
    ? changedText(r)
    : (r.called || []).join(" ");
  const statesCell = el("td", {}, el("span", { text: states }));
  const args = (r.args || []).map(([k, v]) => k + "=" + v);
  // Arguments the node left out (past its bounds) are counted.
  if (r.args_dropped) args.push(`+${r.args_dropped} more`);
  if (args.length) statesCell.append(el("span", { class: "args", text: args.join(" ") }));
  for (const err of r.errors || []) statesCell.append(el("span", { class: "err", text: err }));
  const outcome = r.t === "transition" ? r.outcome : "";
  const via = e.hops ? e.hops.join(" ← ") : (r.origin ? "from " + r.origin : "");
  const tr = el("tr", { "data-seq": String(e.seq), "data-machine": keyOf(r), "data-kind": kindOf(r), "data-shown-ms": String(Date.now()) },
    el("td", { class: "num", text: String(e.seq) }),
    el("td", { class: "time", text: timeText(r.time_us ? r.time_us / 1000 : e.received_ms) }),
    el("td", { text: keyOf(r) }),
    el("td", { text: kindOf(r) + (r.auto ? " (auto)" : "") }),
    statesCell,
    el("td", { class: outcome, text: outcome }),
    el("td", { text: via }));
  tr.addEventListener("click", () => travel(e.seq));
  return tr;
}
function changedText(r) {
  const info = S.machines.get(keyOf(r))?.info;
  if (!info) return r.changed.map((i) => "#" + i).join(" ");
  return r.changed.map((i) => (active(r.clock[i] || 0) ? "+" : "-") + (info.states[i]?.name ?? "#" + i)).join(" ");
}
function appendRow(e, scroll) {
  const body = $("log").tBodies[0];
  body.append(rowFor(e));
  while (body.rows.length > MAX_ROWS) body.deleteRow(0);
  if (S.at != null) markRows();
  const wrap = $("log-wrap");
  if (scroll && S.at == null) wrap.scrollTop = wrap.scrollHeight;
}
function renderLog() {
  const body = $("log").tBodies[0];
  body.replaceChildren();
  const shown = S.entries.filter(matches).slice(-MAX_ROWS);
  const frag = document.createDocumentFragment();
  for (const e of shown) frag.append(rowFor(e));
  body.append(frag);
  markRows();
  const wrap = $("log-wrap");
  if (S.at == null) wrap.scrollTop = wrap.scrollHeight;
}
function markRows() {
  for (const tr of $("log").tBodies[0].rows) {
    const seq = Number(tr.dataset.seq);
    tr.classList.toggle("at", S.at === seq);
    tr.classList.toggle("after", S.at != null && seq > S.at);
  }
}
function fillMachineFilter() {
  const sel = $("f-machine"), keep = sel.value;
  const keys = [...S.machines.keys()].sort();
  if (sel.options.length - 1 === keys.length) return;
  sel.replaceChildren(el("option", { value: "", text: "all machines" }), ...keys.map((k) => el("option", { value: k, text: k })));
  sel.value = keep;
}

// ---- the tree ----

function parseEndpoint(text) {
  const m = /^([a-z]+):\/\/([^/]+)(?:\/(.*))?$/.exec(text || "");
  if (!m) return null;
  const hp = m[2], at = hp.lastIndexOf(":");
  return { scheme: m[1], host: hp.slice(0, at), port: hp.slice(at + 1), path: m[3] || "" };
}
// Which machine a mirror mirrors: the machine of the node listening on its upstream's port;
// else (through a relay, a proxy or NAT the port says nothing) the machine whose node lists
// the mirror's node as a client (a node's mirrors, and a page's, present that name).
function upstreamOf(v) {
  const up = parseEndpoint(v.info?.upstream);
  if (!up) return null;
  for (const w of S.machines.values()) {
    if (!w.info || w.key === v.key || (up.path && w.info.machine !== up.path)) continue;
    const listens = (w.info.listen || []).map(parseEndpoint).filter(Boolean);
    if (listens.some((l) => l.port === up.port && (l.host === up.host || l.host === "0.0.0.0" || l.host === "[::]"))) {
      return { key: w.key, scheme: up.scheme };
    }
  }
  const node = v.key.split("/")[0];
  for (const [name, st] of S.nodes) {
    if (name === node) continue;
    const client = (st.status?.clients || []).find((c) => c.id === node);
    if (client && S.machines.has(`${name}/${client.source}`)) return { key: `${name}/${client.source}`, scheme: up.scheme };
  }
  return null;
}
function linkState(v) {
  const st = S.nodes.get(v.info?.node);
  const src = st?.status?.sources?.find((s) => s.name === v.info.machine);
  return src?.connection || "unknown";
}
function clockOf(key) {
  if (S.at != null) return S.atClocks?.[key] || null;
  return S.machines.get(key)?.clock || null;
}
const sum = (c) => (c || []).reduce((a, b) => a + b, 0);

function renderTree() {
  const t = $("tree");
  const nodes = new Map(); // node -> {name, machines: [], depth}
  const ups = new Map();
  for (const v of S.machines.values()) {
    const node = v.key.split("/")[0];
    if (!nodes.has(node)) nodes.set(node, { name: node, machines: [], depth: 0 });
    nodes.get(node).machines.push(v);
    const up = upstreamOf(v);
    if (up) ups.set(v.key, up);
  }
  for (const n of S.nodes.keys()) if (!nodes.has(n)) nodes.set(n, { name: n, machines: [], depth: 0 });
  S.depth = new Map();
  // Depth: a node is one below the deepest node it mirrors from.
  for (let round = 0; round < nodes.size; round++) {
    for (const n of nodes.values()) {
      for (const v of n.machines) {
        const up = ups.get(v.key);
        if (up) n.depth = Math.max(n.depth, nodes.get(up.key.split("/")[0]).depth + 1);
      }
    }
  }
  for (const n of nodes.values()) S.depth.set(n.name, n.depth);
  const rows = [];
  for (const n of [...nodes.values()].sort((a, b) => a.name.localeCompare(b.name))) (rows[n.depth] ||= []).push(n);
  const cols = Math.max(1, ...rows.filter(Boolean).map((r) => r.length));
  // As wide as the panel allows: a phone gets narrower boxes rather than a scrolled tree.
  const room = $("tree-wrap").clientWidth || 600;
  const GAPX = room < 500 ? 16 : 40, GAPY = 70, LINE = 17;
  const W = Math.max(110, Math.min(170, Math.floor((room - GAPX) / cols) - GAPX));
  const width = cols * (W + GAPX) + GAPX;
  const pos = new Map(); // machine key -> {x, y}
  let y = 14;
  const nodeBoxes = [];
  for (const row of rows) {
    if (!row) continue;
    const h = Math.max(...row.map((n) => 26 + Math.max(1, n.machines.length) * LINE + clientsHeight(n)));
    row.forEach((n, i) => {
      const x = GAPX + i * (W + GAPX) + ((cols - row.length) * (W + GAPX)) / 2;
      nodeBoxes.push({ n, x, y, h: 26 + Math.max(1, n.machines.length) * LINE + clientsHeight(n) });
      n.machines.sort((a, b) => a.key.localeCompare(b.key)).forEach((v, j) => pos.set(v.key, { x, y: y + 26 + j * LINE }));
    });
    y += h + GAPY;
  }
  const height = Math.max(y - GAPY + 14, 120);
  t.setAttribute("viewBox", `0 0 ${width} ${height}`);
  // The drawing scales to the panel's width (never scrolled sideways).
  t.style.height = Math.round(height * Math.min(1, room / width)) + "px";
  const layers = [svg("g"), svg("g"), svg("g")];
  for (const [key, up] of ups) {
    const a = pos.get(key), b = pos.get(up.key);
    if (!a || !b) continue;
    const v = S.machines.get(key), state = linkState(v);
    const x1 = a.x + W / 2, y1 = nodeTop(nodeBoxes, key), x2 = b.x + W / 2;
    const y2 = nodeBottom(nodeBoxes, up.key);
    layers[0].append(svg("path", { class: "edge " + state, d: `M${x1},${y1} C${x1},${(y1 + y2) / 2} ${x2},${(y1 + y2) / 2} ${x2},${y2}` }));
    const lag = sum(clockOf(up.key)) - sum(clockOf(key));
    const label = `${up.scheme} · ${state}` + (lag > 0 ? ` · ${lag} ticks behind` : "");
    layers[0].append(svg("text", { class: "edge-label", x: (x1 + x2) / 2 + 6, y: (y1 + y2) / 2 }, label));
  }
  for (const { n, x, y: top, h } of nodeBoxes) {
    const g = svg("g", { class: "node" + (n.machines.some((v) => v.key === S.selected) ? " sel" : "") });
    g.append(svg("rect", { x, y: top, width: W, height: h }));
    g.append(svg("text", { class: "title", x: x + 8, y: top + 17 }, n.name));
    n.machines.forEach((v, j) => {
      const c = clockOf(v.key);
      const on = c && v.info ? v.info.states.filter((s, i) => active(c[i] || 0)).length : 0;
      const m = svg("g", { class: "machine", "data-key": v.key });
      m.append(svg("text", { x: x + 12, y: top + 38 + j * LINE }, `${v.info?.machine ?? v.key.split("/")[1]}  (${on} active${v.dropped ? ", " + v.dropped + " dropped" : ""})`));
      m.addEventListener("click", () => select(v.key));
      g.append(m);
    });
    drawClients(g, n, x, top + 26 + Math.max(1, n.machines.length) * LINE, nodes);
    layers[1].append(g);
  }
  t.replaceChildren(...layers);
}
function nodeTop(boxes, key) {
  const b = boxes.find((b) => b.n.machines.some((v) => v.key === key));
  return b ? b.y : 0;
}
function nodeBottom(boxes, key) {
  const b = boxes.find((b) => b.n.machines.some((v) => v.key === key));
  return b ? b.y + b.h : 0;
}
// Clients of a node that are not nodes of the tree (a CLI, a page, a program).
function outsideClients(n) {
  const st = S.nodes.get(n.name);
  const names = new Set([...S.machines.keys()].map((k) => k.split("/")[0]));
  return (st?.status?.clients || []).filter((c) => !names.has(c.id));
}
function clientsHeight(n) { return outsideClients(n).length ? 34 : 0; }
function drawClients(g, n, x, y) {
  const list = outsideClients(n);
  list.slice(0, 3).forEach((c, i) => {
    const cg = svg("g", { class: "client" });
    cg.append(svg("circle", { cx: x + 16 + i * 50, cy: y + 8, r: 6 }));
    cg.append(svg("text", { x: x + 16 + i * 50, y: y + 24, "text-anchor": "middle" }, c.id.length > 8 ? c.id.slice(0, 7) + "…" : c.id));
    cg.append(svg("title", {}, `client ${c.id} of ${c.source} (${c.peer})`));
    g.append(cg);
  });
  if (list.length > 3) g.append(svg("text", { x: x + 16 + 3 * 50, y: y + 12, "text-anchor": "end" }, `+${list.length - 3}`));
}

// ---- the machines ----

function renderMachines() {
  const box = $("machines");
  const cards = [];
  // Roots first, then each depth of the tree.
  const depth = (k) => S.depth?.get(k.split("/")[0]) ?? 0;
  const keys = [...S.machines.keys()].sort((a, b) => depth(a) - depth(b) || a.localeCompare(b));
  for (const key of keys) {
    const v = S.machines.get(key);
    const clock = clockOf(key);
    const card = el("div", { class: "card" + (key === S.selected ? " sel" : ""), "data-key": key });
    const title = el("h3", {}, el("span", { text: key }));
    title.append(el("span", { class: "badge", text: v.info?.upstream ? "mirror" : "root" }));
    if (v.info?.upstream) title.append(el("span", { class: "badge", text: linkState(v) }));
    if (clock) title.append(el("span", { class: "badge", text: "Σ" + sum(clock) }));
    if (v.dropped) title.append(el("span", { class: "badge bad", text: v.dropped + " dropped" }));
    if (v.disposed) title.append(el("span", { class: "badge bad", text: "disposed" }));
    if (S.at != null && !clock) title.append(el("span", { class: "badge", text: "not yet seen" }));
    title.addEventListener("click", () => select(key));
    card.append(title);
    const ul = el("ul");
    const changed = S.atChanged && S.atChanged.key === key ? new Set(S.atChanged.changed) : null;
    (v.info?.states || []).forEach((s, i) => {
      const tick = clock ? clock[i] || 0 : 0;
      const li = el("li", { class: (active(tick) ? "on" : "") + (changed?.has(i) ? " changed" : ""), "data-state": s.name, "data-tick": String(tick) },
        el("span", { class: "name", text: s.name }), el("span", { class: "tick", text: String(tick) }));
      if (key === S.selected) {
        const rel = [["requires", s.require], ["adds", s.add], ["removes", s.remove], ["after", s.after]]
          .filter(([, l]) => l && l.length).map(([n, l]) => n + " " + l.join(", "));
        if (s.auto) rel.push("auto");
        if (s.multi) rel.push("multi");
        if (rel.length) li.append(el("span", { class: "rel", text: rel.join(" · ") }));
      }
      ul.append(li);
    });
    card.append(ul);
    cards.push(card);
  }
  box.replaceChildren(...cards);
}

function renderCounters() {
  const c = $("counters");
  const dropped = [...S.machines.values()].reduce((a, v) => a + (v.dropped || 0), 0);
  const parts = [el("span", { text: `${S.machines.size} machines · ${S.nodes.size} nodes · ${S.entries.length} entries` })];
  if (dropped) parts.push(el("span", { class: "bad", text: ` · ${dropped} dropped at nodes` }));
  if (S.lost) parts.push(el("span", { class: "bad", text: ` · ${S.lost} missed` }));
  c.replaceChildren(...parts);
}

let scheduled = false;
function schedule() {
  if (scheduled) return;
  scheduled = true;
  requestAnimationFrame(() => {
    scheduled = false;
    renderTree();
    renderMachines();
    renderCounters();
  });
}
let bannerTimer = null;
function banner(text) {
  const b = $("banner");
  b.textContent = text;
  b.hidden = false;
  clearTimeout(bannerTimer);
  bannerTimer = setTimeout(() => { b.hidden = true; }, 6000);
}

document.addEventListener("DOMContentLoaded", () => {
  $("back").addEventListener("click", () => step(false));
  $("forward").addEventListener("click", () => step(true));
  $("live").addEventListener("click", goLive);
  for (const id of ["f-machine", "f-state", "f-kind", "f-outcome"]) $(id).addEventListener("input", renderLog);
  $("filters").addEventListener("submit", (e) => e.preventDefault());
  document.addEventListener("keydown", (e) => {
    if (e.target.matches("input, select")) return;
    if (e.key === "ArrowLeft") step(false);
    else if (e.key === "ArrowRight") step(true);
    else if (e.key === "Escape") goLive();
  });
  window.addEventListener("resize", schedule);
  readLink();
  updateLink();
  connect();
});
