// The runner of the npm-client scripts: named cases in order, each a function that checks
// answers field by field through a `t` object and may throw; a failed case prints every mismatch
// (where, what was expected, what came) and the run ends with "N passed, N failed" and a nonzero
// exit if any failed. Shared by consul-npm.test.mjs and consul-npm.nodes.test.mjs.
//
// Environment (set by meridian/tests/it/clients.rs): CONSUL_HTTP_ADDR (host:port of the agent's
// HTTP API), MERIDIAN_NODE_CLIENTS (the folder whose node_modules holds the pinned `consul`),
// MERIDIAN_NODE_NAME, MERIDIAN_DC, MERIDIAN_RPC_ADDR (what /v1/status/leader must name).

import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";

/** Consul's documented shapes, shared with the Python script. */
const SHAPES = JSON.parse(readFileSync(new URL("./consul-shapes.json", import.meta.url), "utf8"));

/** Every case has this long (ms) before it counts as failed. */
const CASE_LIMIT_MS = 15000;

function need(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`${name} is not set (meridian/tests/it/clients.rs sets it; scripts/env.sh installs the clients)`);
    process.exit(2);
  }
  return v;
}

/** What the test passes in. */
export const env = {
  addr: need("CONSUL_HTTP_ADDR"),
  node: need("MERIDIAN_NODE_NAME"),
  dc: need("MERIDIAN_DC"),
  rpc: need("MERIDIAN_RPC_ADDR"),
};

/** The pinned `consul` package (v2), from the folder scripts/env.sh installed it in. */
export const Consul = createRequire(join(need("MERIDIAN_NODE_CLIENTS"), "package.json"))("consul");

/** A client of the agent under test. */
export function client() {
  const [host, port] = env.addr.split(":");
  return new Consul({ host, port: Number(port) });
}

/** A raw request to the agent (setup and checks the client has no call for): [status, body]. */
export async function raw(method, path, body) {
  const r = await fetch(`http://${env.addr}${path}`, {
    method,
    headers: body === undefined ? {} : { "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  let parsed = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    // not JSON: kept as text
  }
  return [r.status, parsed];
}

function typeOf(v) {
  if (v === null) return "null";
  if (Array.isArray(v)) return "array";
  if (typeof v === "number" && Number.isInteger(v)) return "integer";
  return typeof v;
}

function show(v) {
  const s = JSON.stringify(v);
  if (s === undefined) return "nothing (missing)";
  return s.length > 300 ? `${s.slice(0, 300)}…` : s;
}

/** What a case checks with; kinds of values as consul-shapes.json describes them. */
class Checks {
  constructor() {
    this.errors = [];
  }

  fail(where, message) {
    this.errors.push(`${where}: ${message}`);
  }

  /** `actual` deep-equals `expected` (JSON equality). */
  equal(where, actual, expected) {
    if (JSON.stringify(actual) !== JSON.stringify(expected)) {
      this.fail(where, `expected ${show(expected)}, got ${show(actual)}`);
    }
  }

  /** `cond` holds. */
  ok(where, cond, message) {
    if (!cond) this.fail(where, message);
  }

  /** `value` has `shape`; returns whether it had (so a case can stop before reading fields). */
  shape(where, value, shape) {
    const before = this.errors.length;
    this.#kind(where, value, shape);
    return this.errors.length === before;
  }

  #kind(where, v, kind) {
    if (Array.isArray(kind)) {
      if (!Array.isArray(v)) return this.fail(where, `expected an array, got ${show(v)}`);
      v.forEach((e, i) => this.#kind(`${where}[${i}]`, e, kind[0]));
      return;
    }
    if (typeof kind === "object") {
      if (typeOf(v) !== "object") return this.fail(where, `expected an object, got ${show(v)}`);
      for (const [field, k] of Object.entries(kind)) {
        this.#kind(`${where}.${field}`, v[field], k);
      }
      return;
    }
    if (kind.startsWith("@")) {
      const named = SHAPES[kind.slice(1)];
      if (named === undefined) throw new Error(`unknown shape ${kind} at ${where}`);
      return this.#kind(where, v, named);
    }
    if (kind.endsWith("?")) {
      if (v === undefined) return;
      kind = kind.slice(0, -1);
    }
    const t = typeOf(v);
    const ok = {
      any: v !== undefined,
      string: t === "string",
      integer: t === "integer",
      number: t === "integer" || t === "number",
      boolean: t === "boolean",
      object: t === "object",
      array: t === "array",
      "string[]": t === "array" && v.every((e) => typeof e === "string"),
      "map<string>": t === "object" && Object.values(v).every((e) => typeof e === "string"),
      "map<string[]>":
        t === "object" && Object.values(v).every((e) => Array.isArray(e) && e.every((x) => typeof x === "string")),
      uuid: t === "string" && /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(v),
    }[kind];
    if (ok === undefined) throw new Error(`unknown kind ${kind} at ${where}`);
    if (!ok) this.fail(where, `expected ${kind}, got ${v === undefined ? "nothing (missing)" : `${t} ${show(v)}`}`);
  }
}

/** Polls `f` (async, returns a value or undefined) until it gives a value; fails after `ms`. */
export async function until(what, ms, f) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Whether `promise` is still pending after `ms` (it is left running). */
export async function stillPending(promise, ms) {
  const marker = Symbol("pending");
  let timer;
  const r = await Promise.race([
    promise.then(
      () => "settled",
      () => "settled",
    ),
    new Promise((res) => {
      timer = setTimeout(() => res(marker), ms);
    }),
  ]);
  clearTimeout(timer);
  return r === marker;
}

/** `promise`, or a failure after `ms`. */
export async function within(what, ms, promise) {
  let timer;
  try {
    return await Promise.race([
      promise,
      new Promise((_, rej) => {
        timer = setTimeout(() => rej(new Error(`${what}: no answer within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** The HTTP status of a failed client call, or what was thrown. */
export async function statusOf(promise) {
  try {
    await promise;
    return 200;
  } catch (e) {
    if (e && e.statusCode) return e.statusCode;
    throw e;
  }
}

/** What was thrown: an HTTP error by its request and answer, anything else by its stack. */
function described(e) {
  const req = e?.response?.req;
  if (e?.statusCode && req) return `${req.method} ${req.path} answered ${e.statusCode}: ${e.message}`;
  return e?.stack ? e.stack.split("\n").slice(0, 4).join("\n    ") : String(e);
}

/** Runs `cases` ([name, async (t) => ...]) in order and exits with the result. */
export async function run(title, cases) {
  let passed = 0;
  const failed = [];
  const only = process.argv.slice(2);
  for (const [name, f] of cases) {
    if (only.length && !only.includes(name)) continue;
    const t = new Checks();
    const started = Date.now();
    try {
      await within(name, CASE_LIMIT_MS, f(t));
    } catch (e) {
      t.fail("threw", described(e));
    }
    const ms = Date.now() - started;
    if (t.errors.length === 0) {
      passed += 1;
      console.log(`case ${name}: ok (${ms} ms)`);
    } else {
      failed.push(name);
      console.log(`case ${name}: FAILED (${ms} ms)`);
      for (const e of t.errors) console.log(`    ${e}`);
    }
  }
  if (failed.length) console.log(`${title}: failed cases: ${failed.join(", ")}`);
  console.log(`${title}: ${passed} passed, ${failed.length} failed`);
  process.exit(failed.length ? 1 : 0);
}
