// The npm `consul` client against Meridian's node, health, member, check-registration and
// maintenance endpoints and node-level registration (catalog register), and the full shapes of agent.self and
// query.get, case by case (run by meridian/tests/it/clients.rs).
//
// Run by hand against an agent: CONSUL_HTTP_ADDR=127.0.0.1:8500 MERIDIAN_NODE_NAME=dev
// MERIDIAN_DC=dc1 MERIDIAN_RPC_ADDR=127.0.0.1:8300 MERIDIAN_NODE_CLIENTS=… node
// consul-npm.nodes.test.mjs [CASE...]. Every name here starts with `jsp`.

import { EventEmitter } from "node:events";

import { client, env, raw, run, statusOf, stillPending, within } from "./case-runner.mjs";

const consul = client();

const web = {
  name: "jspweb",
  id: "jspweb-1",
  tags: ["blue"],
  meta: { version: "1" },
  port: 8180,
  check: { ttl: "30s", status: "passing" },
};
const webCheck = "service:jspweb-1";

/** Registers jspweb-1 (passing) if it is not there. */
async function ensureWeb() {
  await consul.agent.service.register(web);
  await consul.agent.check.pass(webCheck);
}

const cases = [
  [
    "agent.members",
    async (t) => {
      const members = await consul.agent.members();
      if (!t.shape("agent.members", members, ["@Member"])) return;
      const me = members.find((m) => m.Name === env.node);
      t.ok("agent.members", me, `no member named ${env.node}`);
      t.equal("Addr", me?.Addr, env.addr.split(":")[0]);
      t.equal("Status (1: alive)", me?.Status, 1);
      t.equal("Tags.dc", me?.Tags?.dc, env.dc);
    },
  ],
  [
    "agent.check.register/deregister",
    async (t) => {
      await ensureWeb();
      await consul.agent.check.register({ name: "jsp node check", id: "jspnode", ttl: "30s", notes: "node level" });
      await consul.agent.check.register({
        name: "jsp extra",
        id: "jspweb-extra",
        serviceid: web.id,
        ttl: "30s",
        status: "warning",
      });
      const checks = await consul.agent.check.list();
      const node = checks.jspnode;
      if (t.shape('agent.check.list["jspnode"]', node, "@AgentCheck")) {
        t.equal("node check Name", node.Name, "jsp node check");
        t.equal("node check Notes", node.Notes, "node level");
        t.equal("node check ServiceID", node.ServiceID, "");
        t.equal("node check Type", node.Type, "ttl");
        t.equal("node check Status", node.Status, "critical");
      }
      const extra = checks["jspweb-extra"];
      if (t.shape('agent.check.list["jspweb-extra"]', extra, "@AgentCheck")) {
        t.equal("service check ServiceID", extra.ServiceID, web.id);
        t.equal("service check ServiceName", extra.ServiceName, web.name);
        t.equal("service check Status", extra.Status, "warning");
      }
      await consul.agent.check.pass("jspnode");
      t.equal("node check after pass", (await consul.agent.check.list()).jspnode?.Status, "passing");
      // A failing node check makes every instance on the node unhealthy, as in Consul.
      await consul.agent.check.fail("jspnode");
      t.equal("health.service passing, node check failing", await consul.health.service({ service: web.name, passing: true }), []);
      const entry = (await consul.health.service(web.name))[0];
      t.equal(
        "health.service Checks",
        (entry?.Checks ?? []).map((c) => c.CheckID).sort(),
        ["jspnode", "jspweb-extra", webCheck].sort(),
      );
      await consul.agent.check.deregister("jspnode");
      await consul.agent.check.deregister("jspweb-extra");
      const after = await consul.agent.check.list();
      t.equal("after deregister", [after.jspnode, after["jspweb-extra"]], [undefined, undefined]);
    },
  ],
  [
    "agent.maintenance",
    async (t) => {
      await ensureWeb();
      await consul.agent.maintenance({ enable: true, reason: "jsp drill" });
      const c = (await consul.agent.check.list())._node_maintenance;
      if (t.shape('agent.check.list["_node_maintenance"]', c, "@AgentCheck")) {
        t.equal("Status", c.Status, "critical");
        t.equal("Notes", c.Notes, "jsp drill");
        t.equal("ServiceID", c.ServiceID, "");
      }
      t.equal("health.service passing, node in maintenance", await consul.health.service({ service: web.name, passing: true }), []);
      await consul.agent.maintenance(false);
      t.equal("after disable", (await consul.agent.check.list())._node_maintenance, undefined);
      t.equal(
        "health.service passing after disable",
        (await consul.health.service({ service: web.name, passing: true })).map((e) => e.Service.ID),
        [web.id],
      );
    },
  ],
  [
    "agent.service.maintenance",
    async (t) => {
      await ensureWeb();
      const id = `_service_maintenance:${web.id}`;
      await consul.agent.service.maintenance({ id: web.id, enable: true, reason: "jsp deploy" });
      const c = (await consul.agent.check.list())[id];
      if (t.shape(`agent.check.list["${id}"]`, c, "@AgentCheck")) {
        t.equal("Status", c.Status, "critical");
        t.equal("Notes", c.Notes, "jsp deploy");
        t.equal("ServiceID", c.ServiceID, web.id);
        t.equal("ServiceName", c.ServiceName, web.name);
      }
      t.equal("health.service passing, in maintenance", await consul.health.service({ service: web.name, passing: true }), []);
      await consul.agent.service.maintenance({ id: web.id, enable: false });
      t.equal("after disable", (await consul.agent.check.list())[id], undefined);
      t.equal(
        "unknown service: status",
        await statusOf(consul.agent.service.maintenance({ id: "jspnope", enable: true })),
        404,
      );
    },
  ],
  [
    "health.checks",
    async (t) => {
      await ensureWeb();
      const checks = await consul.health.checks(web.name);
      if (!t.shape("health.checks", checks, ["@HealthCheck"])) return;
      t.equal("CheckIDs", checks.map((c) => c.CheckID), [webCheck]);
      t.equal("Status", checks[0]?.Status, "passing");
      t.equal("Node", checks[0]?.Node, env.node);
      t.equal("ServiceName", checks[0]?.ServiceName, web.name);
      t.equal("an unknown service", await consul.health.checks("jspnope"), []);
    },
  ],
  [
    "health.state",
    async (t) => {
      await ensureWeb();
      const any = await consul.health.state("any");
      if (!t.shape("health.state any", any, ["@HealthCheck"])) return;
      t.ok("health.state any", any.some((c) => c.CheckID === webCheck), `no ${webCheck}`);
      const ids = async (state) => (await consul.health.state(state)).map((c) => c.CheckID);
      t.ok("passing, while passing", (await ids("passing")).includes(webCheck), "missing");
      t.ok("critical, while passing", !(await ids("critical")).includes(webCheck), "listed");
      await consul.agent.check.warn(webCheck);
      t.ok("warning, once warning", (await ids("warning")).includes(webCheck), "missing");
      await consul.agent.check.fail(webCheck);
      t.ok("critical, once failing", (await ids("critical")).includes(webCheck), "missing");
      t.ok("passing, once failing", !(await ids("passing")).includes(webCheck), "listed");
      await consul.agent.check.pass(webCheck);
      // The client checks the state itself; Meridian answers an unknown one with a 400.
      t.equal("an unknown state: status", (await raw("GET", "/v1/health/state/bogus"))[0], 400);
    },
  ],
  [
    "health.node",
    async (t) => {
      await ensureWeb();
      const checks = await consul.health.node(env.node);
      if (!t.shape("health.node", checks, ["@HealthCheck"])) return;
      t.ok("health.node", checks.some((c) => c.CheckID === webCheck), `no ${webCheck}`);
      t.ok("health.node Node", checks.every((c) => c.Node === env.node), "a check of another node");
      t.equal("an unknown node", await consul.health.node("jspnope"), []);
    },
  ],
  [
    "catalog.node.services",
    async (t) => {
      await ensureWeb();
      const n = await consul.catalog.node.services(env.node);
      if (!t.shape("catalog.node.services", n, "@CatalogNode")) return;
      t.equal("Node.Node", n.Node.Node, env.node);
      t.equal("Node.Datacenter", n.Node.Datacenter, env.dc);
      const s = n.Services[web.id];
      if (t.shape(`Services["${web.id}"]`, s, "@NodeService")) {
        t.equal("Service", s.Service, web.name);
        t.equal("Tags", s.Tags, web.tags);
        t.equal("Port", s.Port, web.port);
        t.equal("Meta", s.Meta, web.meta);
      }
      // Consul answers an unknown node with 200 and null.
      t.equal("an unknown node", await raw("GET", "/v1/catalog/node/jspnope"), [200, null]);
    },
  ],
  [
    "catalog.register/deregister (an external node, as consul-esm does)",
    async (t) => {
      const reg = {
        node: "jspext",
        address: "127.0.0.2",
        nodemeta: { "external-node": "true", "external-probe": "true" },
        service: { id: "jspext-1", service: "jspext", port: 9100, tags: ["ext"], meta: { owner: "esm" } },
        check: {
          checkid: "jspext-1-tcp",
          name: "jspext tcp",
          node: "jspext",
          serviceid: "jspext-1",
          status: "passing",
          definition: { tcp: "127.0.0.2:9100", intervalduration: "10s", timeoutduration: "1s" },
        },
      };
      await consul.catalog.register(reg);
      const nodes = await consul.catalog.node.list();
      const n = nodes.find((x) => x.Node === "jspext");
      if (t.shape("catalog.node.list[jspext]", n, "@Node")) {
        t.equal("Address", n.Address, "127.0.0.2");
        t.equal("Meta", n.Meta, reg.nodemeta);
      }
      const entries = await consul.catalog.service.nodes("jspext");
      if (t.shape("catalog.service.nodes", entries, ["@CatalogService"])) {
        t.equal("Node", entries.map((e) => e.Node), ["jspext"]);
        t.equal("NodeMeta", entries[0]?.NodeMeta, reg.nodemeta);
        t.equal("ServiceID", entries[0]?.ServiceID, "jspext-1");
        t.equal("ServiceMeta", entries[0]?.ServiceMeta, { owner: "esm" });
      }
      const healthy = await consul.health.service({ service: "jspext", passing: true });
      if (t.shape("health.service", healthy, ["@ServiceEntry"])) {
        t.equal("health.service instances", healthy.map((e) => e.Service.ID), ["jspext-1"]);
        t.equal("health.service Node.Address", healthy[0]?.Node.Address, "127.0.0.2");
        t.equal("health.service Checks", healthy[0]?.Checks.map((c) => [c.CheckID, c.Status]), [["jspext-1-tcp", "passing"]]);
      }
      t.equal("health.node", (await consul.health.node("jspext")).map((c) => c.CheckID), ["jspext-1-tcp"]);
      t.ok("catalog.node.services", (await consul.catalog.node.services("jspext"))?.Services?.["jspext-1"], "no jspext-1");
      // Only this agent's own instances are the agent's.
      t.equal("agent.service.list", (await consul.agent.service.list())["jspext-1"], undefined);
      // ESM reports a check's new status by registering it again.
      await consul.catalog.register({ ...reg, check: { ...reg.check, status: "critical" } });
      t.equal("passing, once critical", await consul.health.service({ service: "jspext", passing: true }), []);
      await consul.catalog.deregister({ node: "jspext", serviceid: "jspext-1" });
      t.equal("catalog.service.nodes after service deregister", await consul.catalog.service.nodes("jspext"), []);
      t.ok("node kept", (await consul.catalog.node.list()).some((x) => x.Node === "jspext"), "node gone with its service");
      await consul.catalog.deregister("jspext");
      t.ok("node deregister", !(await consul.catalog.node.list()).some((x) => x.Node === "jspext"), "node still listed");
    },
  ],
  [
    "agent.self: every documented Config and Member field",
    async (t) => {
      t.shape("agent.self", await consul.agent.self(), "@AgentSelfFull");
    },
  ],
  [
    "query.get: Session, Token and Template",
    async (t) => {
      // Consul's PreparedQuery always carries Session, Token and Template (zero values when
      // unused).
      const { ID } = await consul.query.create({ name: "jspq", service: { service: web.name } });
      try {
        t.shape("query.get", await consul.query.get(ID), "@PreparedQueryFull");
      } finally {
        await consul.query.destroy(ID);
      }
    },
  ],
  [
    "blocking (index + wait) on health.checks, health.state, health.node and catalog.node.services",
    async (t) => {
      const calls = [
        ["health.checks", consul.health.checks.bind(consul.health), { service: "jspblk" }],
        ["health.state", consul.health.state.bind(consul.health), { state: "any" }],
        ["health.node", consul.health.node.bind(consul.health), { node: env.node }],
        ["catalog.node.services", consul.catalog.node.services.bind(consul.catalog.node), { node: env.node }],
      ];
      for (const [n, [name, call, opts]] of calls.entries()) {
        const ctx = new EventEmitter();
        ctx.includeResponse = true;
        const [res] = await call({ ...opts, ctx });
        const index = BigInt(res.headers["x-consul-index"] ?? "0");
        t.ok(`${name}: X-Consul-Index`, index > 0n, `is ${res.headers["x-consul-index"]}`);
        const ctx2 = new EventEmitter();
        ctx2.includeResponse = true;
        const blocked = call({ ...opts, index: index.toString(), wait: "10s", ctx: ctx2 });
        t.ok(`${name}: blocks`, await stillPending(blocked, 300), "answered before anything changed");
        // A new instance with a check on this node changes every one of these answers.
        await consul.agent.service.register({
          name: "jspblk",
          id: `jspblk-${n}`,
          port: 9300 + n,
          check: { ttl: "30s", status: "passing" },
        });
        const [res2] = await within(`${name}: the blocking query`, 5000, blocked);
        t.ok(`${name}: X-Consul-Index`, BigInt(res2.headers["x-consul-index"] ?? "0") > index, "did not grow");
      }
      for (const n of calls.keys()) await consul.agent.service.deregister(`jspblk-${n}`);
    },
  ],
];

await run("consul-npm nodes", cases);
