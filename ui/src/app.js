// Meridian UI: the pages, over the agent's HTTP API. Plain modules, no build step: the binary
// embeds these files as they are (node/src/http/ui.rs).
//
// Data flows in through blocking queries (`?index=&wait=`): the federation map and the services
// list are followed for as long as the page is open, so a change shows within one answer's
// round trip. The token lives in this tab's sessionStorage only.

import {
  visibleRange, filterServices, dcBadge, fmtMs, describeAnswer, describeRoute,
  operatorAllowed, ringLayout, totals, drillRows,
} from "./lib.js";

const ROW = 34;
const state = {
  token: sessionStorage.getItem("meridian-token") || "",
  scope: null,
  dcs: null,
  services: null,
  filter: "",
  internal: false,
  drill: null,
  timings: {},
};
window.__meridian = state;

// --- DOM helpers -----------------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    // CSSOM, not the attribute: the page's CSP allows no inline style attributes.
    else if (k === "style") el.style.cssText = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

const $ = (sel) => document.querySelector(sel);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const setLive = (text) => { $("#live").textContent = text; };

// --- The API ---------------------------------------------------------------------------------

async function api(path, { method = "GET", body, signal } = {}) {
  const headers = {};
  if (state.token) headers["X-Consul-Token"] = state.token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, {
    method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  if (!r.ok) {
    const e = new Error(text.trim() || `${r.status} ${r.statusText}`);
    e.status = r.status;
    throw e;
  }
  return { data: text ? JSON.parse(text) : null, index: Number(r.headers.get("X-Consul-Index")) || 0 };
}

/** Follows `path` with blocking queries, calling `onData` with each answer, until `signal` aborts. */
async function follow(path, onData, signal, wait = "5s") {
  let index = 0;
  while (!signal.aborted) {
    try {
      const sep = path.includes("?") ? "&" : "?";
      const r = await api(index ? `${path}${sep}index=${index}&wait=${wait}` : path, { signal });
      index = r.index;
      onData(r.data);
    } catch (e) {
      if (signal.aborted) return;
      onData(null, e);
      index = 0;
      await sleep(1000);
    }
  }
}

// --- The token -------------------------------------------------------------------------------

async function learnScope() {
  const out = $("#token-scope");
  if (!state.token) {
    state.scope = null;
    out.textContent = "no token";
  } else {
    try {
      const r = await api("/v1/acl/token/self");
      state.scope = r.data.Scope || null;
      out.textContent = `scope: ${state.scope}`;
    } catch (e) {
      state.scope = null;
      out.textContent = e.status === 403 ? "token not accepted" : `token: ${e.message}`;
    }
  }
  render();
}

function setupToken() {
  $("#token").value = state.token;
  $("#token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.token = $("#token").value.trim();
    if (state.token) sessionStorage.setItem("meridian-token", state.token);
    else sessionStorage.removeItem("meridian-token");
    restartFollowers();
    learnScope();
  });
  $("#token-clear").addEventListener("click", () => {
    state.token = "";
    $("#token").value = "";
    sessionStorage.removeItem("meridian-token");
    restartFollowers();
    learnScope();
  });
}

// --- Followers -------------------------------------------------------------------------------

let followers = null;

function restartFollowers() {
  if (followers) followers.abort();
  followers = new AbortController();
  const { signal } = followers;
  follow("/v1/internal/ui/datacenters", (data, err) => {
    if (err) { state.dcsError = err.message; } else { state.dcs = data; state.dcsError = null; state.dcsAt = Date.now(); }
    $("#where").textContent = state.dcs ? `${state.dcs.Datacenter} · ${state.dcs.Node}` : "";
    if (page() === "datacenters" || page() === "failover") render();
  }, signal, "5s");
  follow("/v1/internal/ui/services", (data, err) => {
    if (err) { state.servicesError = err.message; } else { state.services = data; state.servicesError = null; }
    if (page() === "services" || page() === "service" || page() === "failover") render();
  }, signal, "30s");
}

// --- Routing ---------------------------------------------------------------------------------

function route() {
  const parts = (location.hash || "#/datacenters").slice(2).split("/").map(decodeURIComponent);
  if (parts[0] === "services" && parts[1]) return { page: "service", name: parts[1] };
  if (["datacenters", "services", "failover"].includes(parts[0])) return { page: parts[0] };
  return { page: "datacenters" };
}
const page = () => route().page;

let rendered = null;
function render() {
  const r = route();
  for (const a of document.querySelectorAll("header nav a")) {
    const current = a.dataset.page === r.page || (r.page === "service" && a.dataset.page === "services");
    if (current) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  const key = r.page + (r.name || "");
  const main = $("#main");
  const fresh = rendered !== key;
  rendered = key;
  if (r.page === "datacenters") renderDatacenters(main);
  else if (r.page === "services") renderServices(main, fresh);
  else if (r.page === "service") renderService(main, r.name, fresh);
  else renderFailover(main, fresh);
}

// --- Datacenters -----------------------------------------------------------------------------

function renderDatacenters(main) {
  const d = state.dcs;
  if (!d) { main.replaceChildren(h("p", {}, state.dcsError ? h("span", { class: "error" }, state.dcsError) : "Loading…")); return; }
  const dcs = d.Datacenters;
  const W = 720, H = 360;
  const pos = ringLayout(dcs.length, W, H);
  const map = svg("svg", { class: "map", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `Map of ${dcs.length} datacenters` });
  dcs.forEach((dc, i) => {
    if (i === 0) return;
    const a = pos[0], b = pos[i];
    map.append(svg("line", { x1: a.x, y1: a.y, x2: b.x, y2: b.y, stroke: dc.Connected ? "#8a93a0" : "#b3261e", "stroke-width": 2, "stroke-dasharray": dc.Connected ? "" : "6 4" }));
    map.append(svg("text", { class: "rtt", x: (a.x + b.x) / 2 + 6, y: (a.y + b.y) / 2 - 6 }, dc.RttMs == null ? "rtt –" : `${dc.RttMs.toFixed(1)} ms`));
  });
  const colour = { up: "#0f6b3a", suspect: "#8a5a00", down: "#b3261e", drained: "#4a5360", stale: "#6b3fa0" };
  dcs.forEach((dc, i) => {
    const p = pos[i], badge = dcBadge(dc);
    map.append(svg("circle", { cx: p.x, cy: p.y, r: i === 0 ? 30 : 26, fill: colour[badge] || "#4a5360", stroke: i === 0 ? "#14213d" : "none", "stroke-width": 3 }));
    map.append(svg("text", { x: p.x, y: p.y + 5, "text-anchor": "middle", fill: "#fff", "font-weight": 600, class: "on-dot" }, dc.Datacenter));
    map.append(svg("text", { x: p.x, y: p.y + 48, "text-anchor": "middle" }, badge));
  });
  const cards = h("div", { class: "cards" }, dcs.map((dc) => h("section", {
    class: "card", "aria-label": `datacenter ${dc.Datacenter}`, dataset: { dc: dc.Datacenter, status: dc.Status },
  },
  h("h3", {}, dc.Datacenter, h("span", { class: `badge ${dcBadge(dc)}` }, dcBadge(dc)), dc.Local ? h("span", { class: "muted" }, "(this DC)") : null),
  h("dl", {},
    h("dt", {}, "since"), h("dd", {}, dc.ForMs == null ? "–" : `${fmtMs(dc.ForMs)} ago`),
    h("dt", {}, "RTT"), h("dd", {}, dc.Local ? "–" : dc.RttMs == null ? "not measured" : `${dc.RttMs.toFixed(1)} ms`),
    h("dt", {}, "federation"), h("dd", {}, dc.Local ? `origin, index ${dc.Index}` : `${dc.Connected ? "connected" : "disconnected"}, index ${dc.Index}${dc.IndexLag == null ? "" : ` (${dc.IndexLag} behind)`}, last contact ${fmtMs(dc.LastContactMs)} ago`),
    h("dt", {}, "digest"), h("dd", {}, dc.Local ? "–" : `${dc.Digest}${dc.Connected ? " (in sync with the origin)" : " (stale copy)"}`),
    h("dt", {}, "catalog"), h("dd", {}, `${dc.Services} services, ${dc.Instances} instances`),
    h("dt", {}, "gateways"), h("dd", {}, dc.Gateways.length === 0 ? "none" : dc.Gateways.map((g) => h("div", {}, `${g.Node} ${g.Address}:${g.Port} `, h("span", { class: `badge ${g.Health}` }, g.Health)))),
  ))));
  main.replaceChildren(h("h2", {}, `Datacenters, as ${d.Datacenter} sees them`), map, cards,
    h("p", { class: "muted" }, `Updated ${new Date(state.dcsAt).toLocaleTimeString()}`, state.dcsError ? h("span", { class: "error" }, ` · ${state.dcsError}`) : ""));
}

// --- Services --------------------------------------------------------------------------------

let list = null; // the services page's DOM, kept across updates so scrolling and focus stay

function renderServices(main, fresh) {
  const d = state.services;
  if (!d) { main.replaceChildren(h("p", {}, state.servicesError ? h("span", { class: "error" }, state.servicesError) : "Loading…")); list = null; return; }
  const cols = `minmax(140px, 1.2fr) ${d.Datacenters.map(() => "110px").join(" ")} minmax(220px, 2fr) minmax(180px, 1.4fr)`;
  if (fresh || !list || !main.contains(list.box)) {
    const search = h("input", { type: "search", placeholder: "Filter by name", "aria-label": "Filter services by name", value: state.filter });
    const internal = h("input", { type: "checkbox", id: "show-internal", checked: state.internal });
    const count = h("span", { class: "muted", role: "status", "aria-live": "polite" });
    const box = h("div", { class: "vlist", role: "table", "aria-label": "Services", tabindex: "0" });
    const spacer = h("div", { class: "spacer", role: "rowgroup" });
    const head = h("div", { class: "row head", role: "row" });
    box.append(head, spacer);
    list = { box, spacer, head, count, rows: [] };
    search.addEventListener("input", () => { state.filter = search.value; list.rows = null; paint(); });
    internal.addEventListener("change", () => { state.internal = internal.checked; list.rows = null; paint(); });
    box.addEventListener("scroll", () => paint(), { passive: true });
    main.replaceChildren(
      h("h2", {}, `Services, and what a client in ${d.Datacenter} gets for `, h("code", {}, `<name>.service.${d.Domain}`)),
      h("div", { class: "toolbar" }, search, h("label", { for: "show-internal" }, internal, " show Meridian's own"), count),
      box,
    );
  }
  list.rows = null;
  list.cols = cols;
  paint();
  if (!state.timings.servicesRendered) {
    state.timings.servicesRendered = performance.now();
    state.timings.services = d.Services.length;
  }
}

function paint() {
  const d = state.services;
  if (!list || !d) return;
  if (!list.rows) list.rows = filterServices(d.Services, state.filter, state.internal);
  const rows = list.rows;
  list.count.textContent = `${rows.length} of ${d.Services.length} services`;
  list.head.style.gridTemplateColumns = list.cols;
  list.head.replaceChildren(...[
    h("span", { role: "columnheader" }, "service"),
    d.Datacenters.map((dc) => h("span", { role: "columnheader", title: "instances passing / warning / critical" }, `${dc} ✓ ! ✗`)),
    h("span", { role: "columnheader" }, `DNS answer in ${d.Datacenter}`),
    h("span", { role: "columnheader" }, `gateway route in ${d.Datacenter}`),
  ].flat());
  list.spacer.style.height = `${rows.length * ROW}px`;
  const { start, end } = visibleRange(list.box.scrollTop, list.box.clientHeight || 600, ROW, rows.length);
  const out = [];
  for (let i = start; i < end; i++) {
    const s = rows[i];
    const a = s.Answer;
    out.push(h("a", {
      class: "row", role: "row", href: `#/services/${encodeURIComponent(s.Name)}`,
      style: `top:${i * ROW}px;grid-template-columns:${list.cols}`,
      dataset: { service: s.Name, answer: a.Datacenter || "" },
    },
    h("span", { role: "cell", class: "name" }, s.Name, s.Kind ? h("span", { class: "muted" }, " (sidecar)") : ""),
    s.Counts.map((c) => h("span", { role: "cell", class: "counts" }, c ? [
      h("span", { class: "c-p", title: "passing" }, c[0]),
      h("span", { class: "c-w", title: "warning" }, c[1]),
      h("span", { class: "c-c", title: "critical" }, c[2]),
    ] : h("span", { class: "muted" }, "–"))),
    h("span", { role: "cell", class: "answer", title: describeAnswer(a, d.Datacenter) }, describeAnswer(a, d.Datacenter)),
    h("span", { role: "cell", class: "why" }, describeRoute(a, d.Datacenter)),
    ));
  }
  list.spacer.replaceChildren(...out);
}

// --- One service -----------------------------------------------------------------------------

let detail = { name: null, data: null, loading: false };

async function loadService(name) {
  detail.loading = true;
  const dcs = state.services ? state.services.Datacenters : [];
  const enc = encodeURIComponent(name);
  const per = await Promise.all(dcs.map(async (dc) => {
    const [health, sidecars] = await Promise.all([
      api(`/v1/health/service/${enc}?dc=${dc}`).then((r) => r.data).catch(() => []),
      api(`/v1/health/connect/${enc}?dc=${dc}`).then((r) => r.data).catch(() => []),
    ]);
    return { dc, health, sidecars };
  }));
  const intentions = await api(`/v1/connect/intentions/match?by=destination&name=${enc}`)
    .then((r) => r.data[name] || []).catch((e) => ({ error: e.message }));
  if (detail.name === name) { detail.data = { per, intentions }; }
  detail.loading = false;
}

function renderService(main, name, fresh) {
  if (fresh || detail.name !== name) { detail = { name, data: null, loading: false }; }
  const d = state.services;
  const s = d && d.Services.find((x) => x.Name === name);
  if (!detail.loading) loadService(name).then(() => { if (route().name === name) paintService(main, name); });
  paintService(main, name, s);
}

function paintService(main, name, s = state.services && state.services.Services.find((x) => x.Name === name)) {
  const d = state.services;
  const parts = [h("p", {}, h("a", { href: "#/services" }, "← all services")), h("h2", {}, `Service ${name}`)];
  if (s && d) {
    parts.push(h("p", {}, "DNS answer in ", d.Datacenter, ": ", h("span", { class: "answer", dataset: { answer: s.Answer.Datacenter || "" } }, describeAnswer(s.Answer, d.Datacenter)),
      h("br"), "Gateway route: ", describeRoute(s.Answer, d.Datacenter),
      h("br"), h("span", { class: "why" }, `why: ${s.Answer.Reason} (${s.Answer.Healthy} healthy in the answer, ${s.Answer.Failovers ?? 0} DCs passed over)`)));
  }
  const data = detail.data;
  if (!data) { parts.push(h("p", {}, "Loading instances…")); main.replaceChildren(...parts); return; }
  for (const { dc, health, sidecars } of data.per) {
    if (!health.length && !sidecars.length) continue;
    parts.push(h("h3", {}, `${dc}: ${health.length} instance${health.length === 1 ? "" : "s"}`));
    parts.push(h("table", {},
      h("thead", {}, h("tr", {}, ["node", "address", "tags", "meta", "checks"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, health.map((e) => h("tr", {},
        h("td", {}, e.Node.Node),
        h("td", {}, `${e.Service.Address || e.Node.Address}:${e.Service.Port}`),
        h("td", {}, (e.Service.Tags || []).join(", ")),
        h("td", {}, Object.entries(e.Service.Meta || {}).map(([k, v]) => `${k}=${v}`).join(", ")),
        h("td", {}, (e.Checks || []).map((c) => h("div", {}, h("span", { class: `badge ${c.Status}` }, c.Status), ` ${c.Name || c.CheckID}`, c.Output ? h("span", { class: "muted" }, `: ${c.Output.slice(0, 200)}`) : ""))),
      )))));
    if (sidecars.length) {
      parts.push(h("p", {}, `Sidecars in ${dc}: `, sidecars.map((e) => `${e.Service.ID} (${e.Node.Node} ${e.Service.Address || e.Node.Address}:${e.Service.Port})`).join(", ")));
    }
  }
  const ints = data.intentions;
  parts.push(h("h3", {}, "Intentions that decide who may call it"));
  if (ints.error) parts.push(h("p", { class: "muted" }, ints.error));
  else if (!ints.length) parts.push(h("p", { class: "muted" }, "none: [mesh] default_intention decides"));
  else parts.push(h("table", {}, h("thead", {}, h("tr", {}, ["source", "destination", "action", "written in", "precedence"].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, ints.map((i) => h("tr", {}, h("td", {}, i.SourceName), h("td", {}, i.DestinationName), h("td", {}, i.Action), h("td", {}, i.Meta?.["meridian-origin-dc"] || i.Datacenter || "–"), h("td", {}, i.Precedence))))));
  main.replaceChildren(...parts);
}

// --- Failover and drills ---------------------------------------------------------------------

let drillWatch = null;

function watchDrill(id) {
  if (drillWatch) drillWatch.abort();
  drillWatch = new AbortController();
  follow(`/v1/operator/drill/${id}`, (data, err) => {
    if (!err) state.drill = data;
    if (data && (data.Phase === "done" || data.Phase === "failed")) { drillWatch.abort(); loadDrills(); }
    if (page() === "failover") render();
  }, drillWatch.signal, "10s");
}

async function loadDrills() {
  try { state.drills = (await api("/v1/operator/drills")).data; } catch (e) { state.drills = { error: e.message }; }
  if (page() === "failover") render();
}

// The page is built once and patched on each update, so a button under the pointer (or with the
// keyboard's focus) stays the same element while the data behind it changes.
let failover = null;

function renderFailover(main, fresh) {
  if (fresh) loadDrills();
  const d = state.dcs;
  if (!d) { main.replaceChildren(h("p", {}, "Loading…")); failover = null; return; }
  if (fresh || !failover || !main.contains(failover.root)) failover = buildFailover(main, d);
  const f = failover;
  const local = d.Datacenters[0];
  const allowed = operatorAllowed(state.scope);
  const drained = local.Status === "drained";
  const reason = allowed.ok ? "" : allowed.reason;
  f.badge.className = `badge ${dcBadge(local)}`;
  f.badge.textContent = dcBadge(local);
  f.drain.disabled = !allowed.ok || drained;
  f.undrain.disabled = !allowed.ok || !drained;
  f.why.textContent = reason || (drained ? `${local.Datacenter} is drained: every DC answers from elsewhere.` : "Other DCs are drained from their own UI.");
  const running = state.drill && !["done", "failed"].includes(state.drill.Phase);
  f.start.disabled = !allowed.ok || running;
  f.drillWhy.textContent = reason || (running ? "one drill at a time: this one is still running" : "");
  f.drillArea.replaceChildren(...(state.drill ? [drillView(state.drill)] : []));
  const past = state.drills;
  const key = JSON.stringify(past ?? null);
  if (key !== f.pastKey) {
    f.pastKey = key;
    let body;
    if (!past) body = h("p", { class: "muted" }, "Loading…");
    else if (past.error) body = h("p", { class: "muted" }, past.error);
    else if (!past.length) body = h("p", { class: "muted" }, "none yet");
    else body = h("table", { id: "drills" }, h("thead", {}, h("tr", {}, ["#", "drill", "datacenter", "started", "phase", ""].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, past.map((x) => h("tr", {}, h("td", {}, x.ID), h("td", {}, x.Kind), h("td", {}, x.Datacenter), h("td", {}, new Date(x.StartedUnixMs).toLocaleTimeString()), h("td", {}, x.Phase),
        h("td", {}, h("button", { onclick: () => watchDrill(x.ID) }, `show report ${x.ID}`))))));
    f.pastArea.replaceChildren(body);
  }
}

function buildFailover(main, d) {
  const local = d.Datacenters[0];
  const badge = h("span", { class: "badge" });
  const drain = h("button", {
    id: "drain", class: "primary", "aria-describedby": "drain-why",
    onclick: async () => {
      try { await api("/v1/operator/drain", { method: "PUT", body: { Reason: "drained from the UI" } }); setLive(`${local.Datacenter} drained`); } catch (e) { setLive(`drain failed: ${e.message}`); }
    },
  }, `Drain ${local.Datacenter}`);
  const undrain = h("button", {
    id: "undrain", "aria-describedby": "drain-why",
    onclick: async () => {
      try { await api("/v1/operator/drain", { method: "DELETE" }); setLive(`${local.Datacenter} undrained`); } catch (e) { setLive(`undrain failed: ${e.message}`); }
    },
  }, `Undrain ${local.Datacenter}`);
  const why = h("p", { id: "drain-why", class: "why" });
  const form = drillForm(d);
  const drillArea = h("div", { "aria-live": "polite" });
  const pastArea = h("div");
  const root = h("div", {},
    h("h2", {}, "Failover"),
    h("fieldset", {}, h("legend", {}, `This datacenter: ${local.Datacenter} `, badge),
      h("p", {}, "A drain takes this DC out of every DC's answers and routes at once (other DCs fail over by their policy); an undrain brings it back after the failback hold."),
      h("div", { class: "form" }, drain, undrain), why),
    form, drillArea, h("h3", {}, "Drills run from this node"), pastArea);
  main.replaceChildren(root);
  return { root, badge, drain, undrain, why, start: form.querySelector("#drill-start"), drillWhy: form.querySelector("#drill-why"), drillArea, pastArea, pastKey: undefined };
}

function drillForm(d) {
  const dcs = d.Datacenters.map((x) => x.Datacenter);
  const kind = h("select", { id: "drill-kind" }, h("option", { value: "dc-down" }, "dc-down: drain a datacenter"), h("option", { value: "service-down" }, "service-down: fail a service's TTL checks"));
  const dc = h("select", { id: "drill-dc" }, dcs.map((x) => h("option", { value: x }, x)));
  const service = h("input", { id: "drill-service", placeholder: "picked for dc-down", list: "service-names" });
  const names = h("datalist", { id: "service-names" }, (state.services?.Services || []).filter((s) => !s.Internal).slice(0, 500).map((s) => h("option", { value: s.Name })));
  const dur = h("input", { id: "drill-for", value: "5s", size: 6 });
  const error = h("p", { class: "error", role: "alert" });
  const form = h("fieldset", { id: "drill-form" }, h("legend", {}, "Run a drill"),
    h("div", { class: "form" },
      h("label", {}, "drill", kind), h("label", {}, "datacenter", dc), h("label", {}, "service", service, names), h("label", {}, "for", dur),
      h("button", { class: "primary", id: "drill-start", "aria-describedby": "drill-why", onclick: async () => {
        error.textContent = "";
        try {
          const r = await api("/v1/operator/drill", { method: "POST", body: { Kind: kind.value, Datacenter: dc.value, Service: service.value.trim(), For: dur.value.trim() } });
          state.drill = { ID: r.data.ID, Phase: "preparing", Kind: kind.value, Datacenter: dc.value };
          watchDrill(r.data.ID);
          loadDrills();
        } catch (e) { error.textContent = e.message; }
      } }, "Start drill")),
    h("p", { id: "drill-why", class: "why" }),
    h("p", { class: "muted" }, "Probes resolve the service at every DC's DNS and connect through its gateway every 100 ms, from one node of each DC; the DC is restored after the time given."),
    error);
  return form;
}

function drillView(x) {
  const r = x.Report;
  const rows = drillRows(r);
  return h("section", { id: "drill", "aria-label": "drill report", dataset: { phase: x.Phase } },
    h("h3", {}, `Drill ${x.ID}: ${x.Kind} of ${x.Datacenter} · `, h("span", { class: "phase" }, x.Phase)),
    x.Error ? h("p", { class: "error" }, x.Error) : null,
    r ? h("p", {}, `service ${r.service}; overall: DNS stopped answering with ${r.datacenter} after ${fmtMs(r.overall.dns_stopped_ms)}, gateways after ${fmtMs(r.overall.gateway_stopped_ms)}; ${r.overall.dns_failures} failed resolutions, ${r.overall.gateway_failures} failed connections; failback ${fmtMs(r.overall.dns_failback_ms)}; ${r.overall.stale_answers} stale answers`) : null,
    rows.length ? h("table", { id: "drill-report" }, h("thead", {}, h("tr", {}, ["from", "rounds", "DNS moved after", "gateway moved after", "answered from", "failures", "failback", "stale"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows.map((w) => h("tr", { dataset: { dc: w.dc } }, h("td", {}, w.dc), h("td", {}, w.rounds), h("td", {}, fmtMs(w.dnsStopped)), h("td", {}, fmtMs(w.gatewayStopped)), h("td", {}, w.during || "–"), h("td", {}, w.failures), h("td", {}, fmtMs(w.failback)), h("td", {}, w.stale))))) : null,
    x.Log && x.Log.length ? h("pre", { class: "log" }, x.Log.join("\n")) : null);
}

// --- Start -----------------------------------------------------------------------------------

window.addEventListener("hashchange", () => { render(); $("#main").focus(); });
setupToken();
restartFollowers();
learnScope();
render();
