// The popshift console's page. Everything it shows comes from the server's snapshots
// (popshift/console_model.py), pushed on one server-sent-events stream; this file lays them out.
// PoPs with coordinates are drawn on a world map (d3-geo + Natural Earth land from world-atlas),
// others on a circle; d3-zoom pans and zooms without growing the marks.
import { select } from "d3-selection";
import { geoNaturalEarth1, geoPath } from "d3-geo";
import { zoom, zoomIdentity } from "d3-zoom";
import { feature } from "topojson-client";
import land110 from "world-atlas/land-110m.json";

const LABEL_ALL_BELOW = 30; // PoPs: above this many only those in a policy or selected are named
const state = { focus: null, events: null, snapshot: null, layoutKey: "", geo: false,
  base: new Map(), projection: null, transform: zoomIdentity };

const svg = select("#map");
const defs = svg.append("defs");
for (const [id, color] of [["head", "#1565c0"], ["head-infeasible", "#ef6c00"]]) {
  defs.append("marker").attr("id", id).attr("viewBox", "0 0 10 10").attr("refX", 9).attr("refY", 5)
    .attr("markerWidth", 9).attr("markerHeight", 9).attr("markerUnits", "userSpaceOnUse")
    .attr("orient", "auto")
    .append("path").attr("d", "M0,0L10,5L0,10z").attr("fill", color);
}
const landLayer = svg.append("g");
const arrowLayer = svg.append("g");
const popLayer = svg.append("g");
const land = feature(land110, land110.objects.land);

const zoomer = zoom().scaleExtent([0.5, 40]).on("zoom", (event) => {
  state.transform = event.transform;
  landLayer.attr("transform", event.transform);
  landLayer.selectAll("path").attr("stroke-width", 0.5 / event.transform.k);
  if (state.snapshot) draw(state.snapshot);
});
svg.call(zoomer);

// On a map, a PoP looked at is brought to the middle, zoomed in on its neighbourhood.
function zoomTo(name) {
  const base = state.base.get(name);
  if (!state.geo || !base) return;
  const [w, h] = size();
  const k = Math.max(state.transform.k, 4);
  svg.call(zoomer.transform, zoomIdentity.translate(w / 2 - k * base[0], h / 2 - k * base[1]).scale(k));
}

function size() {
  const box = svg.node().getBoundingClientRect();
  return [Math.max(box.width, 300), Math.max(box.height, 200)];
}

// --- layout: where each PoP sits (before zoom) --------------------------------------------------

function layout(pops) {
  const key = pops.map((p) => p.name).join(",");
  if (key === state.layoutKey) return;
  state.layoutKey = key;
  const [w, h] = size();
  const located = pops.filter((p) => p.lat != null && p.lon != null);
  state.geo = pops.length >= 3 && located.length === pops.length;
  state.base = new Map();
  landLayer.selectAll("*").remove();
  if (state.geo) {
    const points = { type: "MultiPoint", coordinates: pops.map((p) => [p.lon, p.lat]) };
    const projection = geoNaturalEarth1().fitExtent([[50, 40], [w - 50, h - 40]], points);
    landLayer.append("path").attr("class", "land").attr("d", geoPath(projection)(land));
    for (const p of pops) state.base.set(p.name, projection([p.lon, p.lat]));
  } else {
    const r = Math.min(w, h) * 0.32;
    pops.forEach((p, i) => {
      const a = -Math.PI / 2 + (2 * Math.PI * i) / pops.length;
      state.base.set(p.name, [w / 2 + r * Math.cos(a), h / 2 + r * Math.sin(a)]);
    });
  }
}

const at = (name) => state.transform.apply(state.base.get(name) || [0, 0]);

function radius(pop, maxCap) {
  const cap = pop.capacity_cores || 0;
  const big = state.geo ? 9 : 22;
  return (state.geo ? 3 : 12) + big * Math.sqrt(maxCap > 0 ? cap / maxCap : 0);
}

const pct = (x) => (x == null ? "-" : `${Math.round(x * 100)}%`);

// --- the map ---------------------------------------------------------------------------------

function draw(s) {
  const maxCap = Math.max(0, ...s.pops.map((p) => p.capacity_cores || 0));
  const byName = new Map(s.pops.map((p) => [p.name, p]));
  const focused = new Set(s.arrows.filter((a) => a.source === state.focus || a.destination === state.focus)
    .flatMap((a) => [a.source, a.destination]));
  const few = s.pops.length <= LABEL_ALL_BELOW;

  arrowLayer.selectAll("g.arrow")
    .data(s.arrows, (a) => `${a.source}>${a.destination}`)
    .join((enter) => {
      const g = enter.append("g").attr("class", "arrow");
      g.append("path");
      g.append("text").attr("text-anchor", "middle");
      g.append("title");
      return g;
    })
    .attr("data-source", (a) => a.source)
    .attr("data-destination", (a) => a.destination)
    .classed("infeasible", (a) => a.infeasible)
    .each(function (a) {
      const [sx, sy] = at(a.source), [dx, dy] = at(a.destination);
      const len = Math.hypot(dx - sx, dy - sy) || 1;
      const ux = (dx - sx) / len, uy = (dy - sy) / len;
      const r1 = radius(byName.get(a.source) || {}, maxCap) + 2;
      const r2 = radius(byName.get(a.destination) || {}, maxCap) + 3;
      const x1 = sx + ux * r1, y1 = sy + uy * r1, x2 = dx - ux * r2, y2 = dy - uy * r2;
      const bend = Math.min(len * 0.18, 80);
      const cx = (x1 + x2) / 2 - uy * bend, cy = (y1 + y2) / 2 + ux * bend;
      const top = Math.max(...a.shares.map((x) => x.share));
      const g = select(this);
      g.select("path")
        .attr("d", `M${x1},${y1} Q${cx},${cy} ${x2},${y2}`)
        .attr("stroke-width", 1.5 + 6 * top)
        .attr("marker-end", `url(#${a.infeasible ? "head-infeasible" : "head"})`);
      g.select("text")
        .attr("x", 0.25 * x1 + 0.5 * cx + 0.25 * x2)
        .attr("y", 0.25 * y1 + 0.5 * cy + 0.25 * y2)
        .text(few ? `${a.source}→${a.destination} ${a.label}`
          : state.focus === a.source || state.focus === a.destination ? a.label : "");
      g.select("title").text(`${a.source} → ${a.destination}: ${a.label} (v${a.version})\n${a.reason}`);
    });

  popLayer.selectAll("g.pop")
    .data(s.pops, (p) => p.name)
    .join((enter) => {
      const g = enter.append("g").on("click", (_e, p) => choose(p.name));
      g.append("circle");
      g.append("text").attr("dy", "0.35em");
      g.append("title");
      return g;
    })
    .attr("class", (p) => `pop ${p.status}${p.name === state.focus ? " selected" : ""}`)
    .attr("data-pop", (p) => p.name)
    .attr("data-status", (p) => p.status)
    .each(function (p) {
      const [x, y] = at(p.name);
      const r = radius(p, maxCap);
      const g = select(this);
      g.select("circle").attr("cx", x).attr("cy", y).attr("r", r);
      const named = few || p.status === "shed" || p.name === state.focus || focused.has(p.name);
      g.select("text").attr("x", x + r + 4).attr("y", y)
        .text(named ? `${p.name} ${pct(p.utilisation)}${few ? ` ${p.status}` : ""}` : "");
      g.select("title").text(`${p.name}: ${p.status}, ${pct(p.utilisation)} of ${p.capacity_cores ?? "?"} cores`
        + (p.rule ? `\n${p.rule}` : ""));
    });
}

// --- the side panels -----------------------------------------------------------------------

const STATUS_ORDER = { shed: 0, can_take: 1, neutral: 2, stale: 3, dead: 4, unknown: 5 };

function tables(s) {
  select("#policies tbody").selectAll("tr")
    .data(s.arrows, (a) => `${a.source}>${a.destination}`)
    .join("tr")
    .attr("data-source", (a) => a.source)
    .attr("data-destination", (a) => a.destination)
    .html("")
    .call((tr) => {
      tr.append("td").text((a) => a.source);
      tr.append("td").text((a) => a.destination);
      tr.append("td").text((a) => a.label);
      tr.append("td").text((a) => (a.lease_left_s == null ? "-" : `${Math.round(a.lease_left_s)}s`));
      tr.append("td").attr("class", "reason").text((a) => (a.infeasible ? "least-bad: " : "") + a.reason);
    });

  const rows = [...s.pops].sort((p, q) => (STATUS_ORDER[p.status] - STATUS_ORDER[q.status])
    || ((q.utilisation ?? -1) - (p.utilisation ?? -1)) || p.name.localeCompare(q.name));
  select("#pops tbody").selectAll("tr")
    .data(rows, (p) => p.name)
    .join("tr")
    .order()
    .attr("data-pop", (p) => p.name)
    .classed("selected", (p) => p.name === state.focus)
    .on("click", (_e, p) => choose(p.name))
    .html("")
    .call((tr) => {
      tr.append("td").text((p) => p.name);
      tr.append("td").text((p) => pct(p.utilisation));
      tr.append("td").attr("class", (p) => `status-${p.status}`).text((p) => p.status);
      tr.append("td").text((p) => (p.since_s == null ? "-" : `${Math.round(p.since_s)}s`));
      tr.append("td").text((p) => p.capacity_cores ?? "-");
    });

  select("#timeline ol").selectAll("li")
    .data(s.timeline, (c) => `${c.at}|${c.text}`)
    .join("li")
    .order()
    .attr("class", (c) => `kind-${c.kind}`)
    .html("")
    .call((li) => {
      li.append("span").text((c) => `${String(Math.round(-c.ago_s)).padStart(6)}s  ${c.text}`);
      li.append("span").attr("class", "reason").text((c) => (c.reason ? `  — ${c.reason}` : ""));
    });
}

function detail(f) {
  const box = select("#detail");
  if (!state.focus) return;
  box.html("");
  box.append("h2").text(`PoP ${state.focus}`);
  if (!f) { box.append("p").text("no data yet"); return; }
  box.append("pre").attr("class", "explain").text(f.explain.join("\n"));
  section(box, `Servers (pop-load ${f.pop_load_age_s == null ? "not seen" : `${f.pop_load_age_s}s ago`})`,
    ["server", "util", "cores", "healthy", "heartbeat"], f.servers.map((x) => [
      x.server, pct(x.utilisation), x.capacity_cores, x.healthy ? "yes" : "no",
      x.heartbeat_age_s == null ? "-" : `${x.heartbeat_age_s}s ago`]));
  section(box, "Tables", ["tier", "version", "policy", "buckets away", "written"], f.tables.map((t) => [
    `t${t.tier}`, `v${t.version}`, `v${t.policy_version}`,
    Object.entries(t.buckets_away).map(([d, n]) => `${d} ${n}/${t.buckets || "?"}`).join(", ") || "none",
    `${t.age_s}s ago`]));
  section(box, "Forwarder counters", ["node", "tier", "local", "to peers", "in PoP", "2nd chance", "from peers", "dropped"],
    f.counters.map((c) => [c.node, `t${c.tier}`, c.local, c.inter_pop_forward, c.intra_pop_forward,
      c.second_chance_forward, c.received_from_peer,
      Object.values(c.dropped || {}).reduce((a, b) => a + b, 0)]));
}

function section(box, title, head, rows) {
  box.append("h2").text(title);
  if (!rows.length) { box.append("p").attr("class", "hint").text("none"); return; }
  const t = box.append("table");
  t.append("thead").append("tr").selectAll("th").data(head).join("th").text((x) => x);
  t.append("tbody").selectAll("tr").data(rows).join("tr")
    .selectAll("td").data((r) => r).join("td").text((x) => x);
}

function header(s) {
  select("#source").text(s.connected ? s.source : `${s.source}: no data (Kafka unreachable?), last view kept`);
  select("#clock").text(s.source.startsWith("replay")
    ? `t = ${Math.round(s.now)} s` : new Date(s.now * 1000).toLocaleTimeString());
  select("#invalid").text(s.invalid ? `${s.invalid} invalid messages skipped` : "");
  link(true); // a snapshot came: the stream is up
}

function link(up) {
  select("#link").attr("class", up ? "up" : "down").text(up ? "live" : "reconnecting…");
}

function render(s) {
  state.snapshot = s;
  header(s);
  layout(s.pops);
  draw(s);
  tables(s);
  detail(s.focus);
}

// --- the stream ------------------------------------------------------------------------------

function choose(name) {
  state.focus = name === state.focus ? null : name;
  if (!state.focus) select("#detail").html('<p class="hint">Click a PoP to see its details.</p>');
  else zoomTo(state.focus);
  document.querySelector("aside").scrollTop = 0;
  connect();
}

function connect() {
  if (state.events) state.events.close();
  const url = state.focus ? `/events?focus=${encodeURIComponent(state.focus)}` : "/events";
  const events = new EventSource(url);
  events.addEventListener("snapshot", (e) => render(JSON.parse(e.data)));
  events.onerror = () => link(false); // EventSource reconnects by itself
  state.events = events;
}

window.addEventListener("resize", () => { state.layoutKey = ""; if (state.snapshot) render(state.snapshot); });
connect();
