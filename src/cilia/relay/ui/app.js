// The service map: nodes (pods, services, external peers) grouped by namespace, edges (flows)
// coloured by verdict with counts, a flows table; fed live by the relay's /api/flows event stream.
// Plain JS, no dependencies. State is kept in `map` and redrawn (throttled) when it changes.
"use strict";

const MAX_ROWS = 300;
const SVG = "http://www.w3.org/2000/svg";
const map = { nodes: new Map(), edges: new Map(), flows: [], namespaces: new Set(), status: {} };
let dirty = false;

function verdictClass(verdict) {
  return verdict === "DROPPED" ? "dropped" : verdict === "AUDIT" ? "audit" : "forwarded";
}

function addNode(end) {
  if (!map.nodes.has(end.id)) {
    map.nodes.set(end.id, { id: end.id, kind: end.kind, name: end.name,
                            group: end.kind === "pod" || end.kind === "service" ? end.namespace : "outside" });
  }
  if (end.namespace) map.namespaces.add(end.namespace);
}

function addEdge(src, dst, verdict) {
  const cls = verdictClass(verdict);
  const key = src + "|" + dst + "|" + cls;
  const edge = map.edges.get(key) || { src, dst, verdict: cls, count: 0 };
  edge.count += 1;
  edge.last = Date.now();
  map.edges.set(key, edge);
}

// Server ends (ip:port) seen as the destination of a connection's first packet: a flow from one
// of them is a reply, also when the datapath did not mark it (is_reply unset).
const servers = new Set();

function isReply(flow) {
  if (flow.is_reply !== null) return flow.is_reply;
  const from = flow.source.ip + ":" + flow.source_port, to = flow.destination.ip + ":" + flow.destination_port;
  const flags = flow.tcp_flags || [];
  if (flags.includes("SYN") && !flags.includes("ACK")) { servers.add(to); return false; }
  if (flags.includes("SYN") && flags.includes("ACK")) { servers.add(from); return true; }
  return servers.has(from) && !servers.has(to);
}

// Neighbour discovery and router solicitations (ICMPv6 133-137), and packets without ports or
// ICMP, are link chatter, not service traffic: in the table, not on the map.
function onMap(flow) {
  if (flow.protocol === "ICMPv6" && flow.icmp_type >= 133 && flow.icmp_type <= 137) return false;
  return flow.protocol !== "";
}

function onFlow(flow) {
  map.flows.push(flow);
  if (map.flows.length > 5000) map.flows.splice(0, map.flows.length - 5000);
  // A connection is drawn once, in its direction: replies and the other node's copy of the same
  // packet count again, but never draw a reverse edge.
  if (isReply(flow) || !onMap(flow)) { dirty = true; return; }
  addNode(flow.source);
  addNode(flow.destination);
  if (flow.service) {
    const [ns, name] = flow.service.split("/");
    const svc = { id: "service:" + flow.service, kind: "service", name, namespace: ns };
    addNode(svc);
    addEdge(flow.source.id, svc.id, flow.verdict);
    addEdge(svc.id, flow.destination.id, flow.verdict);
  } else {
    addEdge(flow.source.id, flow.destination.id, flow.verdict);
  }
  dirty = true;
}

function selectedNamespace() { return document.getElementById("namespace").value; }

function visibleNode(node, ns) {
  if (!ns) return true;
  if (node.group === ns) return true;
  // outside peers (and pods of other namespaces) stay when they talk to the namespace
  for (const e of map.edges.values()) {
    const other = e.src === node.id ? e.dst : e.dst === node.id ? e.src : null;
    if (other && map.nodes.get(other) && map.nodes.get(other).group === ns) return true;
  }
  return false;
}

function el(name, attrs, text) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function layout(ns) {
  const groups = new Map();
  for (const node of map.nodes.values()) {
    if (!visibleNode(node, ns)) continue;
    if (!groups.has(node.group)) groups.set(node.group, []);
    groups.get(node.group).push(node);
  }
  const names = [...groups.keys()].sort((a, b) => (a === "outside") - (b === "outside") || a.localeCompare(b));
  const pos = new Map();
  const boxes = [];
  names.forEach((group, col) => {
    const members = groups.get(group).sort((a, b) => (a.kind === "service") - (b.kind === "service") || a.name.localeCompare(b.name));
    const x = 30 + col * 300;
    boxes.push({ group, x, h: 50 + members.length * 56 });
    members.forEach((node, row) => pos.set(node.id, { x: x + 20, y: 50 + row * 56 }));
  });
  return { pos, boxes };
}

function draw() {
  if (!dirty) return;
  dirty = false;
  const ns = selectedNamespace();
  const { pos, boxes } = layout(ns);
  const groups = document.getElementById("groups");
  const nodes = document.getElementById("nodes");
  const edges = document.getElementById("edges");
  groups.replaceChildren(); nodes.replaceChildren(); edges.replaceChildren();
  for (const box of boxes) {
    groups.append(el("rect", { class: "ns-box", x: box.x, y: 10, width: 210, height: box.h, rx: 8, "data-namespace": box.group }));
    groups.append(el("text", { class: "ns-title", x: box.x + 10, y: 30 }, box.group === "outside" ? "outside the cluster" : "namespace " + box.group));
  }
  for (const [id, p] of pos) {
    const node = map.nodes.get(id);
    const g = el("g", { class: "node kind-" + node.kind, "data-id": id, "data-kind": node.kind, transform: `translate(${p.x},${p.y})` });
    g.append(el("rect", { width: 170, height: 36 }));
    g.append(el("text", { x: 10, y: 22 }, (node.kind === "service" ? "svc " : node.kind === "pod" ? "" : node.kind + " ") + node.name));
    nodes.append(g);
  }
  for (const e of map.edges.values()) {
    const a = pos.get(e.src), b = pos.get(e.dst);
    if (!a || !b) continue;
    const offset = e.verdict === "dropped" ? 6 : e.verdict === "audit" ? -6 : 0;
    // leave and enter on the sides that face each other; within a column, loop out to the right
    const sameColumn = Math.abs(a.x - b.x) < 1, rightward = b.x > a.x;
    const y1 = a.y + 18 + offset, y2 = b.y + 18 + offset;
    const x1 = sameColumn || rightward ? a.x + 170 : a.x, x2 = sameColumn || !rightward ? b.x + 170 : b.x;
    const d = sameColumn
      ? `M${x1},${y1} C${x1 + 45},${y1} ${x2 + 45},${y2} ${x2},${y2}`
      : Math.abs(b.x - a.x) > 300  // skipping a column: arc over it rather than through its boxes
        ? `M${x1},${y1} C${(x1 + x2) / 2},-30 ${(x1 + x2) / 2},-30 ${x2},${y2}`  // over the boxes' tops
        : `M${x1},${y1} C${(x1 + x2) / 2},${y1} ${(x1 + x2) / 2},${y2} ${x2},${y2}`;
    edges.append(el("path", { class: "edge " + e.verdict, d, "marker-end": `url(#arrow-${e.verdict})`,
                              "data-src": e.src, "data-dst": e.dst, "data-verdict": e.verdict, "data-count": e.count }));
    const arc = !sameColumn && Math.abs(b.x - a.x) > 300;
    const lx = sameColumn ? x1 + 30 : (x1 + x2) / 2, ly = arc ? -10 : (y1 + y2) / 2 - 4;
    edges.append(el("text", { class: "edge-label " + e.verdict, x: lx, y: ly }, String(e.count)));
  }
  const height = Math.max(520, 80 + Math.max(0, ...boxes.map(b => b.h)));
  document.getElementById("map").setAttribute("height", height);
  drawNamespaces();
  drawTable(ns);
}

function drawNamespaces() {
  const select = document.getElementById("namespace");
  const have = new Set([...select.options].map(o => o.value));
  for (const ns of [...map.namespaces].sort()) {
    if (!have.has(ns)) select.append(new Option(ns, ns));
  }
}

function matches(flow, words, ns) {
  if (ns && flow.source.namespace !== ns && flow.destination.namespace !== ns) return false;
  for (const word of words) {
    const [k, v] = word.includes(":") ? word.split(/:(.*)/s) : ["", word];
    const vv = (v || "").toLowerCase();
    const pods = [flow.source.id, flow.destination.id].map(s => s.toLowerCase());
    const ok =
      k === "verdict" ? flow.verdict.toLowerCase() === vv :
      k === "pod" ? pods.some(p => p.startsWith(vv)) :
      k === "from" ? flow.source.id.toLowerCase().startsWith(vv) :
      k === "to" ? flow.destination.id.toLowerCase().startsWith(vv) :
      k === "port" ? String(flow.source_port) === vv || String(flow.destination_port) === vv :
      k === "type" ? flow.type === vv :
      k === "node" ? flow.node.toLowerCase() === vv :
      k === "protocol" ? flow.protocol.toLowerCase() === vv :
      JSON.stringify(flow).toLowerCase().includes(word.toLowerCase());
    if (!ok) return false;
  }
  return true;
}

function drawTable(ns) {
  const words = document.getElementById("filter").value.split(/\s+/).filter(Boolean);
  const rows = [];
  for (let i = map.flows.length - 1; i >= 0 && rows.length < MAX_ROWS; i--) {
    const f = map.flows[i];
    if (!matches(f, words, ns)) continue;
    const tr = document.createElement("tr");
    tr.className = f.verdict;
    const cells = [f.time.replace("T", " ").replace("Z", ""), f.node, f.source.id, f.destination.id,
                   f.protocol + (f.destination_port ? ":" + f.destination_port : ""), f.type, f.verdict,
                   f.drop_reason ? f.drop_reason : f.summary];
    cells.forEach((text, j) => { const td = document.createElement("td"); td.textContent = text; if (j === 6) td.className = "verdict"; tr.append(td); });
    rows.push(tr);
  }
  document.querySelector("#flows tbody").replaceChildren(...rows);
  document.getElementById("count").textContent = `${rows.length} shown of ${map.flows.length} flows`;
}

function setStatus(text) { document.getElementById("status").textContent = text; }

function connect() {
  const source = new EventSource("api/flows?number=500");
  let opened = false;
  source.addEventListener("open", () => {
    if (opened) {  // reconnected: the stream starts over with the history, so the map does too
      map.nodes.clear(); map.edges.clear(); map.flows.length = 0; servers.clear(); dirty = true;
    }
    opened = true;
    setStatus("live");
  });
  source.addEventListener("flow", ev => onFlow(JSON.parse(ev.data)));
  source.addEventListener("status", ev => {
    const s = JSON.parse(ev.data);
    for (const n of s.nodes) map.status[n] = s.state;
    const down = Object.entries(map.status).filter(([, st]) => st !== "NODE_CONNECTED").map(([n]) => n);
    setStatus("live · nodes: " + Object.keys(map.status).length + (down.length ? " · unavailable: " + down.join(", ") : ""));
  });
  source.addEventListener("error", () => setStatus("reconnecting…"));
}

document.getElementById("namespace").addEventListener("change", () => { dirty = true; draw(); });
document.getElementById("filter").addEventListener("input", () => { dirty = true; draw(); });
setInterval(draw, 200);
connect();
// for tests and scripts: the map as data
window.ciliaMap = map;
