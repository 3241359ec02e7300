// Meridian UI: the pure logic (no DOM), tested by ui/tests/unit.test.mjs with `node --test`.

/** Rows to render in a virtual list: the visible ones plus `overscan` on each side. */
export function visibleRange(scrollTop, viewport, rowHeight, total, overscan = 8) {
  const first = Math.floor(Math.max(0, scrollTop) / rowHeight);
  const count = Math.ceil(Math.max(0, viewport) / rowHeight) + 1;
  const start = Math.max(0, first - overscan);
  const end = Math.min(total, first + count + overscan);
  return { start, end: Math.max(start, end) };
}

/** The services whose name contains `text` (any case), Meridian's own only when asked. */
export function filterServices(services, text, showInternal) {
  const t = (text || "").trim().toLowerCase();
  return services.filter(
    (s) => (showInternal || !s.Internal) && (t === "" || s.Name.includes(t)),
  );
}

/** The badge a DC's state gets: its status, or `stale` beside it. */
export function dcBadge(dc) {
  return dc.Stale && dc.Status === "up" ? "stale" : dc.Status;
}

/** Milliseconds for people: `850 ms`, `12.3 s`, `4 min`, `2 h`. */
export function fmtMs(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "–";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  if (ms < 3_600_000) return `${Math.round(ms / 60_000)} min`;
  return `${Math.round(ms / 3_600_000)} h`;
}

/** What a client in `local` gets for the service's plain name, and why, in words. */
export function describeAnswer(answer, local) {
  if (!answer.Datacenter) return `no answer (${answer.Error}): ${answer.Reason}`;
  const where =
    answer.Datacenter === local
      ? `${local} (local)`
      : `${answer.Datacenter}, failed over: ${answer.Reason}`;
  const how = answer.AddressMode === "gateway" ? " via this DC's gateways" : "";
  const skipped = answer.Skipped && answer.Skipped.length ? `; ${answer.Skipped.join(", ")}` : "";
  return `${where}${how}${skipped}`;
}

/** Where this DC's gateway sends a connection whose SNI is the service's plain name. */
export function describeRoute(answer, local) {
  if (!answer.Datacenter) return "refused: no instance to route to";
  if (answer.Datacenter === local) return "to local instances";
  return `through the tunnel to ${answer.Datacenter}'s gateways`;
}

/** Whether a token of `scope` may drain and run drills, and if not, why (for the button). */
export function operatorAllowed(scope) {
  if (scope === "operator" || scope === "management") return { ok: true, reason: "" };
  if (!scope) return { ok: false, reason: "needs an operator token: enter one above" };
  return { ok: false, reason: `the token's scope (${scope}) cannot drain or run drills: an operator token can` };
}

/** Positions of `n` DCs on a ring around the centre of a `w`×`h` box, the first at the top. */
export function ringLayout(n, w, h) {
  const r = Math.min(w, h) / 2 - 60;
  return Array.from({ length: n }, (_, i) => {
    const a = -Math.PI / 2 + (2 * Math.PI * i) / Math.max(1, n);
    return { x: w / 2 + (n === 1 ? 0 : r * Math.cos(a)), y: h / 2 + (n === 1 ? 0 : r * Math.sin(a)) };
  });
}

/** The `[passing, warning, critical]` counts summed over every DC. */
export function totals(counts) {
  const t = [0, 0, 0];
  for (const c of counts) if (c) for (let i = 0; i < 3; i++) t[i] += c[i];
  return t;
}

/** The drill report's rows: one per probing DC, the figures people look at. */
export function drillRows(report) {
  if (!report || !Array.isArray(report.datacenters)) return [];
  return report.datacenters.map((d) => ({
    dc: d.datacenter,
    rounds: d.rounds,
    dnsStopped: d.dns?.stopped_ms ?? null,
    gatewayStopped: d.gateway?.stopped_ms ?? null,
    during: Object.keys(d.dns?.during ?? {}).sort().join(", "),
    failures: (d.dns?.failures_during ?? 0) + (d.gateway?.failures_during ?? 0),
    failback: d.dns?.failback_ms ?? null,
    stale: d.stale_answers ?? 0,
  }));
}
