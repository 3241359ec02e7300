// Meridian's HTTP API through the npm `consul` client (v2, pinned in package-lock.json), for
// every call the client has for what Meridian serves today; each answer is checked against
// Consul's documented shape (consul-shapes.json) and the values registered. Run by
// meridian/tests/it/clients.rs against a fresh `meridian agent --dev`; `node consul-npm.test.mjs
// CASE...` runs only the named cases. The node, health, member, check, maintenance and
// catalog-register calls are in consul-npm.nodes.test.mjs.
//
// Every name here starts with `js` so that nothing collides with another script's.

import { EventEmitter } from "node:events";

import { client, env, raw, run, statusOf, stillPending, until, within } from "./case-runner.mjs";

const consul = client();

/** A call's answer with its HTTP response (for X-Consul-Index): [res, body]. */
async function withResponse(method, opts) {
  const ctx = new EventEmitter();
  ctx.includeResponse = true;
  return await method({ ...opts, ctx });
}

function indexOf(where, res) {
  const v = res.headers["x-consul-index"];
  if (!/^[1-9][0-9]*$/.test(v ?? "")) throw new Error(`${where}: X-Consul-Index is ${JSON.stringify(v)}`);
  return BigInt(v);
}

/** A case whose whole answer is known: of `kind`, equal to `expected`. */
function known(name, call, kind, expected) {
  return [
    name,
    async (t) => {
      const v = await call();
      if (t.shape(name, v, kind)) t.equal(name, v, expected);
    },
  ];
}

const web = {
  name: "jsweb",
  id: "jsweb-1",
  tags: ["blue", "v1"],
  meta: { version: "1" },
  address: "127.0.0.1",
  port: 8080,
  check: { ttl: "30s", notes: "set by the test" },
};
const webCheck = "service:jsweb-1";

/** The agent's check `id`, or undefined. */
async function agentCheck(id) {
  return (await consul.agent.check.list())[id];
}

const cases = [
  [
    "agent.self",
    async (t) => {
      const self = await consul.agent.self();
      if (!t.shape("agent.self", self, "@AgentSelf")) return;
      t.equal("agent.self.Config.Datacenter", self.Config.Datacenter, env.dc);
      t.equal("agent.self.Config.NodeName", self.Config.NodeName, env.node);
      t.equal("agent.self.Config.Server", self.Config.Server, true);
      t.equal("agent.self.Member.Name", self.Member.Name, env.node);
      t.equal("agent.self.Member.Addr", self.Member.Addr, env.addr.split(":")[0]);
    },
  ],
  [
    "agent.service.register",
    async (t) => {
      await consul.agent.service.register(web);
      const services = await consul.agent.service.list();
      t.ok("agent.service.list", typeof services === "object" && !Array.isArray(services), "not an object by ID");
      const s = services[web.id];
      if (!t.shape(`agent.service.list["${web.id}"]`, s, "@AgentService")) return;
      t.equal("ID", s.ID, web.id);
      t.equal("Service", s.Service, web.name);
      t.equal("Tags", s.Tags, web.tags);
      t.equal("Meta", s.Meta, web.meta);
      t.equal("Port", s.Port, web.port);
      t.equal("Address", s.Address, web.address);
      t.equal("Weights", s.Weights, { Passing: 1, Warning: 1 });
      t.equal("Datacenter", s.Datacenter, env.dc);
      const c = await agentCheck(webCheck);
      if (!t.shape(`agent.check.list["${webCheck}"]`, c, "@AgentCheck")) return;
      t.equal("check Node", c.Node, env.node);
      t.equal("check CheckID", c.CheckID, webCheck);
      t.equal("check Type", c.Type, "ttl");
      // A check registered without a Status starts critical, as in Consul.
      t.equal("check Status", c.Status, "critical");
      t.equal("check Notes", c.Notes, web.check.notes);
      t.equal("check ServiceID", c.ServiceID, web.id);
      t.equal("check ServiceName", c.ServiceName, web.name);
      t.equal("check ServiceTags", c.ServiceTags, web.tags);
    },
  ],
  [
    "agent.check.pass/warn/fail",
    async (t) => {
      for (const [verb, status] of [
        ["pass", "passing"],
        ["warn", "warning"],
        ["fail", "critical"],
        ["pass", "passing"],
      ]) {
        const note = `${verb} from the npm client`;
        await consul.agent.check[verb]({ id: webCheck, note });
        const c = await agentCheck(webCheck);
        t.equal(`after ${verb}: Status`, c?.Status, status);
        t.equal(`after ${verb}: Output`, c?.Output, note);
      }
      t.equal("agent.check.pass of an unknown check: status", await statusOf(consul.agent.check.pass("jsnope")), 404);
    },
  ],
  [
    "catalog.service.list",
    async (t) => {
      const services = await consul.catalog.service.list();
      if (!t.shape("catalog.service.list", services, "map<string[]>")) return;
      t.equal(`catalog.service.list["${web.name}"]`, [...(services[web.name] ?? [])].sort(), [...web.tags].sort());
    },
  ],
  [
    "catalog.service.nodes",
    async (t) => {
      const entries = await consul.catalog.service.nodes(web.name);
      if (!t.shape("catalog.service.nodes", entries, ["@CatalogService"])) return;
      t.equal("catalog.service.nodes length", entries.length, 1);
      const e = entries[0];
      if (!e) return;
      t.equal("Node", e.Node, env.node);
      t.equal("Datacenter", e.Datacenter, env.dc);
      t.equal("ServiceID", e.ServiceID, web.id);
      t.equal("ServiceName", e.ServiceName, web.name);
      t.equal("ServiceTags", e.ServiceTags, web.tags);
      t.equal("ServicePort", e.ServicePort, web.port);
      t.equal("ServiceAddress", e.ServiceAddress, web.address);
      t.equal("ServiceMeta", e.ServiceMeta, web.meta);
      const blue = await consul.catalog.service.nodes({ service: web.name, tag: "blue" });
      t.equal("with tag blue: IDs", blue.map((x) => x.ServiceID), [web.id]);
      const green = await consul.catalog.service.nodes({ service: web.name, tag: "green" });
      t.equal("with tag green", green, []);
      t.equal("an unknown service", await consul.catalog.service.nodes("jsnope"), []);
    },
  ],
  [
    "catalog.node.list",
    async (t) => {
      const nodes = await consul.catalog.node.list();
      if (!t.shape("catalog.node.list", nodes, ["@Node"])) return;
      const me = nodes.find((n) => n.Node === env.node);
      t.ok("catalog.node.list", me, `no node ${env.node} in ${JSON.stringify(nodes)}`);
      t.equal("Datacenter", me?.Datacenter, env.dc);
      t.equal("Address", me?.Address, env.addr.split(":")[0]);
    },
  ],
  known("catalog.datacenters", () => consul.catalog.datacenters(), "string[]", [env.dc]),
  [
    "health.service",
    async (t) => {
      await consul.agent.check.pass(webCheck);
      const all = await consul.health.service(web.name);
      if (!t.shape("health.service", all, ["@ServiceEntry"])) return;
      t.equal("health.service length", all.length, 1);
      const e = all[0];
      if (!e) return;
      t.equal("Node.Node", e.Node.Node, env.node);
      t.equal("Node.Datacenter", e.Node.Datacenter, env.dc);
      t.equal("Service.ID", e.Service.ID, web.id);
      t.equal("Service.Service", e.Service.Service, web.name);
      t.equal("Service.Tags", e.Service.Tags, web.tags);
      t.equal("Service.Port", e.Service.Port, web.port);
      t.equal("Service.Meta", e.Service.Meta, web.meta);
      const check = e.Checks.find((c) => c.CheckID === webCheck);
      t.equal(`Checks["${webCheck}"].Status`, check?.Status, "passing");
      t.equal(`Checks["${webCheck}"].ServiceID`, check?.ServiceID, web.id);
      const passing = await consul.health.service({ service: web.name, passing: true });
      t.equal("passing: true, while passing", passing.map((x) => x.Service.ID), [web.id]);
      const tagged = await consul.health.service({ service: web.name, tag: "v1" });
      t.equal("tag v1", tagged.map((x) => x.Service.ID), [web.id]);
      t.equal("tag green", await consul.health.service({ service: web.name, tag: "green" }), []);
      await consul.agent.check.fail(webCheck);
      t.equal("passing: true, once failing", await consul.health.service({ service: web.name, passing: true }), []);
      const failing = await consul.health.service(web.name);
      t.equal("without passing, once failing", failing.map((x) => x.Checks.find((c) => c.CheckID === webCheck)?.Status), [
        "critical",
      ]);
      await consul.agent.check.pass(webCheck);
    },
  ],
  [
    "health.service blocking (index + wait)",
    async (t) => {
      const [res, before] = await withResponse(consul.health.service.bind(consul.health), { service: "jsblock" });
      t.equal("before any registration", before, []);
      const index = indexOf("health.service", res);
      const started = Date.now();
      const blocked = withResponse(consul.health.service.bind(consul.health), {
        service: "jsblock",
        index: index.toString(),
        wait: "10s",
      });
      t.ok("blocking query", await stillPending(blocked, 500), "answered before anything changed");
      await consul.agent.service.register({ name: "jsblock", id: "jsblock-1", port: 9001 });
      const [res2, after] = await within("the blocking query", 5000, blocked);
      const elapsed = Date.now() - started;
      t.ok("blocking query", elapsed < 8000, `woke after ${elapsed} ms: at its wait, not at the change`);
      t.ok("X-Consul-Index", indexOf("health.service", res2) > index, "did not grow");
      t.shape("answer", after, ["@ServiceEntry"]);
      t.equal("answer's instances", after.map((e) => e.Service?.ID), ["jsblock-1"]);
    },
  ],
  [
    "watch health.service",
    async (t) => {
      const watch = consul.watch({
        method: consul.health.service,
        options: { service: "jswatch", wait: "10s" },
        backoffFactor: 50,
        backoffMax: 500,
      });
      const changes = [];
      const errors = [];
      watch.on("change", (data) => changes.push(data));
      watch.on("error", (e) => errors.push(String(e)));
      try {
        await until("the watch's first answer", 5000, async () => (changes.length ? true : undefined));
        t.equal("first answer", changes[0], []);
        // The watch now blocks on the index it got: nothing may come before a change.
        const next = until("a second answer", 10000, async () => (changes.length > 1 ? true : undefined));
        t.ok("watch", await stillPending(next, 500), `answered again with nothing changed: ${JSON.stringify(changes)}`);
        await consul.agent.service.register({
          name: "jswatch",
          id: "jswatch-1",
          port: 9002,
          check: { ttl: "30s", status: "passing" },
        });
        await within("the watch's answer after the registration", 5000, next);
        const last = changes[changes.length - 1];
        if (!t.shape("watch change", last, ["@ServiceEntry"])) return;
        t.equal("watch change: instances", last.map((e) => e.Service.ID), ["jswatch-1"]);
        t.equal("watch change: check status", last[0]?.Checks.find((c) => c.ServiceID === "jswatch-1")?.Status, "passing");
        t.equal("watch errors", errors, []);
      } finally {
        watch.end();
      }
    },
  ],
  [
    "agent.service.deregister",
    async (t) => {
      await consul.agent.service.register({ name: "jsgone", id: "jsgone-1", port: 9003, check: { ttl: "30s" } });
      t.ok("registered", (await consul.agent.service.list())["jsgone-1"], "jsgone-1 not listed after register");
      await consul.agent.service.deregister("jsgone-1");
      t.equal("agent.service.list after", (await consul.agent.service.list())["jsgone-1"], undefined);
      t.equal("its check after", await agentCheck("service:jsgone-1"), undefined);
      t.equal("catalog.service.nodes after", await consul.catalog.service.nodes("jsgone"), []);
      t.equal("deregister again: status", await statusOf(consul.agent.service.deregister("jsgone-1")), 404);
    },
  ],
  known("status.leader", () => consul.status.leader(), "string", env.rpc),
  known("status.peers", () => consul.status.peers(), "string[]", [env.rpc]),
  [
    "query create/get/list/execute/update/delete",
    async (t) => {
      const created = await consul.query.create({
        name: "jsq",
        service: { service: web.name, onlypassing: true, tags: ["blue"] },
      });
      if (!t.shape("query.create", created, { ID: "uuid" })) return;
      const id = created.ID;
      const q = await consul.query.get(id);
      if (t.shape("query.get", q, "@PreparedQuery")) {
        t.equal("query.get ID", q.ID, id);
        t.equal("query.get Name", q.Name, "jsq");
        t.equal("query.get Service.Service", q.Service.Service, web.name);
        t.equal("query.get Service.OnlyPassing", q.Service.OnlyPassing, true);
        t.equal("query.get Service.Tags", q.Service.Tags, ["blue"]);
      }
      const list = await consul.query.list();
      if (t.shape("query.list", list, ["@PreparedQuery"])) {
        t.equal("query.list names", list.filter((x) => x.ID === id).map((x) => x.Name), ["jsq"]);
      }
      for (const by of [id, "jsq"]) {
        const r = await consul.query.execute(by);
        if (!t.shape(`query.execute(${by})`, r, "@QueryExecute")) continue;
        t.equal(`query.execute(${by}) Service`, r.Service, web.name);
        t.equal(`query.execute(${by}) Datacenter`, r.Datacenter, env.dc);
        t.equal(`query.execute(${by}) Failovers`, r.Failovers, 0);
        t.equal(`query.execute(${by}) Nodes`, r.Nodes.map((e) => e.Service.ID), [web.id]);
      }
      await consul.query.update({ query: id, name: "jsq", service: { service: web.name, tags: ["green"] } });
      const updated = await consul.query.get(id);
      t.equal("after update: Service.Tags", updated?.Service?.Tags, ["green"]);
      t.equal("after update: Service.OnlyPassing", updated?.Service?.OnlyPassing, false);
      t.equal("after update: CreateIndex", updated?.CreateIndex, q?.CreateIndex);
      t.ok("after update: ModifyIndex", updated?.ModifyIndex > q?.ModifyIndex, `${updated?.ModifyIndex} <= ${q?.ModifyIndex}`);
      t.equal("execute after update", (await consul.query.execute(id)).Nodes, []);
      await consul.query.destroy(id);
      t.equal("query.get after destroy: status", await statusOf(consul.query.get(id)), 404);
      t.equal("query.list after destroy", (await consul.query.list()).filter((x) => x.ID === id), []);
      // What raw HTTP shows of the same, so a client-side quirk cannot hide a server one.
      const [status] = await raw("GET", `/v1/query/${id}`);
      t.equal("GET /v1/query/:id after destroy: status", status, 404);
    },
  ],
];

await run("consul-npm", cases);
