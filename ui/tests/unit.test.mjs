// The UI's pure logic (ui/src/lib.js), with Node's own test runner: `node --test ui/tests/`.
// Run by meridian/tests/it/ui.rs, so the README's test command runs it.

import test from "node:test";
import assert from "node:assert/strict";
import {
  visibleRange, filterServices, dcBadge, fmtMs, describeAnswer, describeRoute,
  operatorAllowed, ringLayout, totals, drillRows,
} from "../src/lib.js";

test("a virtual list renders the visible rows and a few more, never past the ends", () => {
  assert.deepEqual(visibleRange(0, 340, 34, 10_000, 5), { start: 0, end: 16 });
  assert.deepEqual(visibleRange(34 * 5000, 340, 34, 10_000, 5), { start: 4995, end: 5016 });
  assert.deepEqual(visibleRange(34 * 9999, 340, 34, 10_000, 5), { start: 9994, end: 10_000 });
  assert.deepEqual(visibleRange(0, 340, 34, 0), { start: 0, end: 0 });
  assert.deepEqual(visibleRange(-50, 340, 34, 3), { start: 0, end: 3 });
});

test("filtering keeps names containing the text, and hides Meridian's own unless asked", () => {
  const s = [{ Name: "web" }, { Name: "web-admin" }, { Name: "api" }, { Name: "meridian-gateway", Internal: true }];
  assert.deepEqual(filterServices(s, " WEB", false).map((x) => x.Name), ["web", "web-admin"]);
  assert.deepEqual(filterServices(s, "", false).map((x) => x.Name), ["web", "web-admin", "api"]);
  assert.equal(filterServices(s, "gate", true).length, 1);
  assert.equal(filterServices(s, "gate", false).length, 0);
});

test("a DC that answers but lost its control stream is badged stale; others by status", () => {
  assert.equal(dcBadge({ Status: "up", Stale: true }), "stale");
  assert.equal(dcBadge({ Status: "down", Stale: true }), "down");
  assert.equal(dcBadge({ Status: "drained", Stale: false }), "drained");
});

test("durations read as people say them", () => {
  assert.equal(fmtMs(null), "–");
  assert.equal(fmtMs(849.6), "850 ms");
  assert.equal(fmtMs(12_345), "12.3 s");
  assert.equal(fmtMs(240_000), "4 min");
  assert.equal(fmtMs(7_200_000), "2 h");
});

test("answers say where and why, and the gateway route agrees", () => {
  const local = { Datacenter: "dc3", Reason: "healthy instances in this datacenter", AddressMode: "direct" };
  assert.equal(describeAnswer(local, "dc3"), "dc3 (local)");
  assert.equal(describeRoute(local, "dc3"), "to local instances");
  const away = { Datacenter: "dc2", Reason: "no instance in this datacenter", AddressMode: "gateway", Skipped: ["dc1 is drained"] };
  assert.equal(describeAnswer(away, "dc3"), "dc2, failed over: no instance in this datacenter via this DC's gateways; dc1 is drained");
  assert.equal(describeRoute(away, "dc3"), "through the tunnel to dc2's gateways");
  const none = { Datacenter: null, Error: "no healthy instance", Reason: "this datacenter is drained" };
  assert.match(describeAnswer(none, "dc3"), /^no answer \(no healthy instance\)/);
  assert.match(describeRoute(none, "dc3"), /^refused/);
});

test("only operator and management tokens may drain, and the reason says what is missing", () => {
  assert.equal(operatorAllowed("operator").ok, true);
  assert.equal(operatorAllowed("management").ok, true);
  assert.deepEqual(operatorAllowed(null), { ok: false, reason: "needs an operator token: enter one above" });
  assert.match(operatorAllowed("read").reason, /scope \(read\)/);
});

test("the ring puts the first DC at the top and the others around it, inside the box", () => {
  const p = ringLayout(3, 720, 360);
  assert.equal(p[0].x, 360);
  assert.ok(p[0].y < p[1].y && p[0].y < p[2].y);
  for (const q of p) assert.ok(q.x > 0 && q.x < 720 && q.y > 0 && q.y < 360);
  assert.deepEqual(ringLayout(1, 100, 100), [{ x: 50, y: 50 }]);
});

test("counts add up over DCs that have the service", () => {
  assert.deepEqual(totals([[1, 2, 3], null, [4, 0, 1]]), [5, 2, 4]);
});

test("a drill report becomes one row per probing DC", () => {
  const rows = drillRows({
    datacenters: [{
      datacenter: "dc3", rounds: 40, stale_answers: 0,
      dns: { stopped_ms: 120.5, during: { dc2: 30 }, failures_during: 1, failback_ms: 900 },
      gateway: { stopped_ms: 130, failures_during: 2 },
    }],
  });
  assert.deepEqual(rows, [{ dc: "dc3", rounds: 40, dnsStopped: 120.5, gatewayStopped: 130, during: "dc2", failures: 3, failback: 900, stale: 0 }]);
  assert.deepEqual(drillRows(null), []);
});
