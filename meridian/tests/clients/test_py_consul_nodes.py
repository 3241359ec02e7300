"""py-consul against Meridian's node, health, member, check-registration, maintenance and
coordinate endpoints and node-level registration (catalog register), case by case (run by
meridian/tests/it/clients.rs); the endpoints py-consul has no call for are read with plain HTTP
and checked against Consul's documented shapes too.

Run by hand against an agent: CONSUL_HTTP_ADDR=127.0.0.1:8500 MERIDIAN_NODE_NAME=dev
MERIDIAN_DC=dc1 MERIDIAN_RPC_ADDR=127.0.0.1:8300 <venv>/bin/python test_py_consul_nodes.py
[CASE...]. Every name here starts with `pyp`.
"""

import concurrent.futures

import consul
from case_runner import DC, HOST, NODE, RPC, raw, raw_get_indexed, run

c = consul.Consul()
WEB_CHECK = "service:pypweb-1"


def ensure_web():
    """Registers pypweb-1 (passing)."""
    c.agent.service.register(
        "pypweb", service_id="pypweb-1", port=8180, tags=["blue"], meta={"version": "1"}, check=consul.Check.ttl("30s")
    )
    c.agent.check.ttl_pass(WEB_CHECK)


def ids(service, **kw):
    return [e["Service"]["ID"] for e in c.health.service(service, **kw)[1]]


def agent_members(t):
    members = c.agent.members()
    if not t.shape("agent.members", members, ["@Member"]):
        return
    me = [m for m in members if m["Name"] == NODE]
    t.equal("members named like the agent", len(me), 1)
    for m in me:
        t.equal("Addr", m["Addr"], HOST)
        t.equal("Status (1: alive)", m["Status"], 1)
        t.equal("Tags.dc", m["Tags"].get("dc"), DC)


def agent_check_register(t):
    ensure_web()
    t.equal("register node check", c.agent.check.register("pyp node check", consul.Check.ttl("30s"), check_id="pypnode", notes="node level"), True)
    t.equal("register service check", c.agent.check.register("pyp extra", consul.Check.ttl("30s"), check_id="pypweb-extra", service_id="pypweb-1"), True)
    checks = c.agent.checks()
    node = checks.get("pypnode")
    if t.shape('agent.checks["pypnode"]', node, "@AgentCheck"):
        t.equal("node check Name", node["Name"], "pyp node check")
        t.equal("node check Notes", node["Notes"], "node level")
        t.equal("node check ServiceID", node["ServiceID"], "")
        t.equal("node check Type", node["Type"], "ttl")
    extra = checks.get("pypweb-extra")
    if t.shape('agent.checks["pypweb-extra"]', extra, "@AgentCheck"):
        t.equal("service check ServiceID", extra["ServiceID"], "pypweb-1")
        t.equal("service check ServiceName", extra["ServiceName"], "pypweb")
    c.agent.check.ttl_pass("pypweb-extra")
    c.agent.check.ttl_fail("pypnode")
    # A failing node check makes every instance on the node unhealthy, as in Consul.
    t.equal("health.service passing, node check failing", ids("pypweb", passing=True), [])
    c.agent.check.ttl_pass("pypnode")
    t.equal("health.service passing, all passing", ids("pypweb", passing=True), ["pypweb-1"])
    t.equal("deregister node check", c.agent.check.deregister("pypnode"), True)
    t.equal("deregister service check", c.agent.check.deregister("pypweb-extra"), True)
    after = c.agent.checks()
    t.equal("after deregister", [after.get("pypnode"), after.get("pypweb-extra")], [None, None])


def agent_maintenance(t):
    ensure_web()
    # py-consul sends enable=True / enable=False (Python's spelling), which Consul accepts.
    t.equal("maintenance on", c.agent.maintenance(True, reason="pyp drill"), True)
    check = c.agent.checks().get("_node_maintenance")
    if t.shape('agent.checks["_node_maintenance"]', check, "@AgentCheck"):
        t.equal("Status", check["Status"], "critical")
        t.equal("Notes", check["Notes"], "pyp drill")
    t.equal("health.service passing, node in maintenance", ids("pypweb", passing=True), [])
    t.equal("maintenance off", c.agent.maintenance(False), True)
    t.equal("after off", c.agent.checks().get("_node_maintenance"), None)
    t.equal("health.service passing after off", ids("pypweb", passing=True), ["pypweb-1"])


def agent_service_maintenance(t):
    ensure_web()
    check_id = "_service_maintenance:pypweb-1"
    t.equal("maintenance on", c.agent.service.maintenance("pypweb-1", True, reason="pyp deploy"), True)
    check = c.agent.checks().get(check_id)
    if t.shape(f'agent.checks["{check_id}"]', check, "@AgentCheck"):
        t.equal("Status", check["Status"], "critical")
        t.equal("Notes", check["Notes"], "pyp deploy")
        t.equal("ServiceID", check["ServiceID"], "pypweb-1")
    t.equal("health.service passing, in maintenance", ids("pypweb", passing=True), [])
    t.equal("maintenance off", c.agent.service.maintenance("pypweb-1", False), True)
    t.equal("after off", c.agent.checks().get(check_id), None)


def health_checks(t):
    ensure_web()
    index, checks = c.health.checks("pypweb")
    t.ok("index", index.isdigit(), f"X-Consul-Index {index!r}")
    if t.shape("health.checks", checks, ["@HealthCheck"]):
        t.equal("CheckIDs", [ch["CheckID"] for ch in checks], [WEB_CHECK])
        t.equal("Status", [ch["Status"] for ch in checks], ["passing"])
    t.equal("an unknown service", c.health.checks("pypnope")[1], [])


def health_state(t):
    ensure_web()
    _, every = c.health.state("any")
    if not t.shape("health.state any", every, ["@HealthCheck"]):
        return
    t.ok("health.state any", any(ch["CheckID"] == WEB_CHECK for ch in every), f"no {WEB_CHECK}")

    def listed(state):
        return WEB_CHECK in [ch["CheckID"] for ch in c.health.state(state)[1]]

    t.ok("passing, while passing", listed("passing"), "missing")
    c.agent.check.ttl_warn(WEB_CHECK)
    t.ok("warning, once warning", listed("warning"), "missing")
    c.agent.check.ttl_fail(WEB_CHECK)
    t.ok("critical, once failing", listed("critical"), "missing")
    t.ok("passing, once failing", not listed("passing"), "listed")
    c.agent.check.ttl_pass(WEB_CHECK)


def health_node(t):
    ensure_web()
    _, checks = c.health.node(NODE)
    if t.shape("health.node", checks, ["@HealthCheck"]):
        t.ok("health.node", any(ch["CheckID"] == WEB_CHECK for ch in checks), f"no {WEB_CHECK}")
        t.ok("health.node Node", all(ch["Node"] == NODE for ch in checks), "a check of another node")


def catalog_node(t):
    ensure_web()
    _, n = c.catalog.node(NODE)
    if not t.shape("catalog.node", n, "@CatalogNode"):
        return
    t.equal("Node.Node", n["Node"]["Node"], NODE)
    s = n["Services"].get("pypweb-1")
    if t.shape('Services["pypweb-1"]', s, "@NodeService"):
        t.equal("Service", s["Service"], "pypweb")
        t.equal("Port", s["Port"], 8180)
    # py-consul answers None for Consul's 200 with null (an unknown node).
    t.equal("an unknown node", c.catalog.node("pypnope")[1], None)


def catalog_register(t):
    service = {"ID": "pypext-1", "Service": "pypext", "Port": 9100, "Tags": ["ext"]}
    check = {
        "Node": "pypext",
        "CheckID": "pypext-1-tcp",
        "Name": "pypext tcp",
        "Status": "passing",
        "ServiceID": "pypext-1",
        "Definition": {"TCP": "127.0.0.2:9100", "IntervalDuration": "10s", "TimeoutDuration": "1s"},
    }
    t.equal("catalog.register", c.catalog.register("pypext", "127.0.0.2", service=service, check=check), True)
    _, entries = c.catalog.service("pypext")
    if t.shape("catalog.service", entries, ["@CatalogService"]):
        t.equal("Node", [e["Node"] for e in entries], ["pypext"])
        t.equal("Address", [e["Address"] for e in entries], ["127.0.0.2"])
    _, healthy = c.health.service("pypext", passing=True)
    if t.shape("health.service", healthy, ["@ServiceEntry"]):
        t.equal("health.service Checks", [[ch["CheckID"], ch["Status"]] for e in healthy for ch in e["Checks"]], [["pypext-1-tcp", "passing"]])
    c.catalog.register("pypext", "127.0.0.2", service=service, check={**check, "Status": "critical"})
    t.equal("passing, once critical", ids("pypext", passing=True), [])
    t.equal("deregister the service", c.catalog.deregister("pypext", service_id="pypext-1"), True)
    t.equal("catalog.service after", c.catalog.service("pypext")[1], [])
    t.equal("deregister the node", c.catalog.deregister("pypext"), True)
    t.ok("node gone", all(n["Node"] != "pypext" for n in c.catalog.nodes()[1]), "still listed")


def agent_self_full(t):
    t.shape("agent.self", c.agent.self(), "@AgentSelfFull")


def query_get_full(t):
    # Consul's PreparedQuery always carries Session, Token and Template (zero values when
    # unused).
    _, created = raw("POST", "/v1/query", {"Name": "pypfull", "Service": {"Service": "pypweb"}})
    try:
        t.shape("query.get", c.query.get(created["ID"]), ["@PreparedQueryFull"])
    finally:
        c.query.delete(created["ID"])



def blocking_node_endpoints(t):
    """Blocking (index + wait) on health.checks, health.state, health.node, catalog.node,
    coordinate.nodes, and (plain HTTP) catalog/node-services."""
    blocking = consul.Consul()  # its own session, for the other thread
    calls = [
        ("health.checks", lambda k, **kw: k.health.checks("pypblk", **kw)),
        ("health.state", lambda k, **kw: k.health.state("any", **kw)),
        ("health.node", lambda k, **kw: k.health.node(NODE, **kw)),
        ("catalog.node", lambda k, **kw: k.catalog.node(NODE, **kw)),
        ("coordinate.nodes", lambda k, **kw: k.coordinate.nodes(**kw)),
        ("catalog/node-services", lambda _, **kw: raw_get_indexed(f"/v1/catalog/node-services/{NODE}", **kw)),
    ]
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        for n, (name, call) in enumerate(calls):
            index, _ = call(c)
            t.ok(f"{name}: X-Consul-Index", int(index) > 0, f"is {index}")
            future = pool.submit(call, blocking, index=index, wait="10s")
            try:
                future.result(timeout=0.3)
                t.fail(f"{name}: blocks", "answered before anything changed")
            except concurrent.futures.TimeoutError:
                pass
            # A new instance with a check on this node changes every one of these answers.
            c.agent.service.register("pypblk", service_id=f"pypblk-{n}", port=9400 + n, check=consul.Check.ttl("30s"))
            new_index, _ = future.result(timeout=5)
            t.ok(f"{name}: X-Consul-Index", int(new_index) > int(index), f"{new_index} is not above {index}")
    finally:
        pool.shutdown()
        for n in range(len(calls)):
            c.agent.service.deregister(f"pypblk-{n}")


def coordinates(t):
    dcs = c.coordinate.datacenters()
    if t.shape("coordinate.datacenters", dcs, ["@DatacenterCoordinates"]):
        t.equal("coordinate.datacenters: this DC first", [d["Datacenter"] for d in dcs][:1], [DC])
        servers = [e["Node"] for d in dcs[:1] for e in d["Coordinates"]]
        t.ok("this agent's server, as <node>.<dc>", f"{NODE}.{DC}" in servers, f"not in {servers}")
    _, nodes = c.coordinate.nodes()
    if t.shape("coordinate.nodes", nodes, ["@NodeCoordinate"]):
        t.ok("coordinate.nodes", NODE in [n["Node"] for n in nodes], f"{NODE} not listed")
    _, one = c.coordinate.node(NODE)
    if t.shape("coordinate.node", one, ["@NodeCoordinate"]):
        t.equal("coordinate.node", [n["Node"] for n in one], [NODE])
    # py-consul answers None for a 404.
    t.equal("coordinate.node of an unknown node", c.coordinate.node("pypnope")[1], None)


def operator_raft_config(t):
    conf = c.operator.raft_config()
    if t.shape("operator.raft_config", conf, "@RaftConfiguration"):
        t.equal(
            "Servers (this dev agent alone, leading)",
            [(s["Node"], s["Address"], s["Leader"], s["Voter"]) for s in conf["Servers"]],
            [(NODE, RPC, True, True)],
        )


def plain_http_shapes(t):
    # Endpoints py-consul has no call for, read with plain HTTP against Consul's documented shapes.
    ensure_web()
    status, listed = raw("GET", f"/v1/catalog/node-services/{NODE}")
    t.equal("catalog/node-services status", status, 200)
    if t.shape("catalog/node-services", listed, "@NodeServiceList"):
        t.equal("Node.Node", listed["Node"]["Node"], NODE)
        t.ok("pypweb-1 listed", any(s["ID"] == "pypweb-1" for s in listed["Services"]), "pypweb-1 missing")
    status, by_name = raw("GET", "/v1/agent/health/service/name/pypweb")
    t.equal("agent/health/service/name status (200: passing)", status, 200)
    if t.shape("agent/health/service/name", by_name, ["@AgentServiceHealth"]):
        t.equal("AggregatedStatus", [e["AggregatedStatus"] for e in by_name], ["passing"])
    status, by_id = raw("GET", "/v1/agent/health/service/id/pypweb-1")
    t.equal("agent/health/service/id status", status, 200)
    if t.shape("agent/health/service/id", by_id, "@AgentServiceHealth"):
        t.equal("Service.ID", by_id["Service"]["ID"], "pypweb-1")
        t.ok("its check", any(ch["CheckID"] == WEB_CHECK for ch in by_id["Checks"]), f"no {WEB_CHECK}")
    status, _ = raw("GET", "/v1/agent/health/service/id/pypnope-1")
    t.equal("agent/health/service/id of an unknown instance", status, 404)


run(
    "py-consul nodes",
    [
        ("agent.members", agent_members),
        ("agent.check.register/deregister", agent_check_register),
        ("agent.maintenance", agent_maintenance),
        ("agent.service.maintenance", agent_service_maintenance),
        ("health.checks", health_checks),
        ("health.state", health_state),
        ("health.node", health_node),
        ("catalog.node", catalog_node),
        ("catalog.register/deregister (an external node, as consul-esm does)", catalog_register),
        ("agent.self: every documented Config and Member field", agent_self_full),
        ("query.get: Session, Token and Template", query_get_full),
        ("blocking on health.checks/state/node, catalog.node, coordinate.nodes, node-services", blocking_node_endpoints),
        ("coordinate.datacenters/nodes/node", coordinates),
        ("operator.raft_config", operator_raft_config),
        ("plain HTTP: catalog/node-services, agent/health/service/name and id", plain_http_shapes),
    ],
)
