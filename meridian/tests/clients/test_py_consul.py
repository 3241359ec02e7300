"""Meridian's HTTP API through PyPI's py-consul (pinned in requirements.txt), for every call the
client has for what Meridian serves today; each answer is checked against Consul's documented
shape (consul-shapes.json) and the values registered. Run by meridian/tests/it/clients.rs with
the venv's python against a fresh `meridian agent --dev`; arguments name the cases to run.
The node, health, member, check, maintenance and catalog-register calls are in
test_py_consul_nodes.py.

Every name here starts with `py` so that nothing collides with another script's.
"""

import concurrent.futures
import time

import consul
from case_runner import DC, HOST, NODE, RPC, raw, run

c = consul.Consul()

WEB = {
    "name": "pyweb",
    "service_id": "pyweb-1",
    "address": "127.0.0.1",
    "port": 8080,
    "tags": ["blue", "v1"],
    "meta": {"version": "1"},
}
WEB_CHECK = "service:pyweb-1"


def agent_self(t):
    s = c.agent.self()
    if not t.shape("agent.self", s, "@AgentSelf"):
        return
    t.equal("Config.Datacenter", s["Config"]["Datacenter"], DC)
    t.equal("Config.NodeName", s["Config"]["NodeName"], NODE)
    t.equal("Config.Server", s["Config"]["Server"], True)
    t.equal("Member.Name", s["Member"]["Name"], NODE)
    t.equal("Member.Addr", s["Member"]["Addr"], HOST)


def agent_service_register(t):
    t.equal("register", c.agent.service.register(check=consul.Check.ttl("30s"), **WEB), True)
    services = c.agent.services()
    s = services.get(WEB["service_id"])
    if t.shape('agent.services["pyweb-1"]', s, "@AgentService"):
        t.equal("ID", s["ID"], WEB["service_id"])
        t.equal("Service", s["Service"], WEB["name"])
        t.equal("Tags", s["Tags"], WEB["tags"])
        t.equal("Meta", s["Meta"], WEB["meta"])
        t.equal("Port", s["Port"], WEB["port"])
        t.equal("Address", s["Address"], WEB["address"])
        t.equal("Weights", s["Weights"], {"Passing": 1, "Warning": 1})
        t.equal("Datacenter", s["Datacenter"], DC)
    d = c.agent.service_definition(WEB["service_id"])
    if t.shape("agent.service_definition", d, "@AgentService"):
        t.equal("agent.service_definition ID", d["ID"], WEB["service_id"])
        t.equal("agent.service_definition Port", d["Port"], WEB["port"])
    check = c.agent.checks().get(WEB_CHECK)
    if t.shape(f'agent.checks["{WEB_CHECK}"]', check, "@AgentCheck"):
        t.equal("check Node", check["Node"], NODE)
        t.equal("check Type", check["Type"], "ttl")
        t.equal("check Status", check["Status"], "critical")
        t.equal("check ServiceID", check["ServiceID"], WEB["service_id"])
        t.equal("check ServiceName", check["ServiceName"], WEB["name"])
        t.equal("check ServiceTags", check["ServiceTags"], WEB["tags"])


def agent_check_ttl(t):
    for verb, status in (("pass", "passing"), ("warn", "warning"), ("fail", "critical"), ("pass", "passing")):
        note = f"{verb} from py-consul"
        t.equal(f"ttl_{verb}", getattr(c.agent.check, f"ttl_{verb}")(WEB_CHECK, notes=note), True)
        check = c.agent.checks().get(WEB_CHECK, {})
        t.equal(f"after ttl_{verb}: Status", check.get("Status"), status)
        t.equal(f"after ttl_{verb}: Output", check.get("Output"), note)
    # py-consul answers False for a 404.
    t.equal("ttl_pass of an unknown check", c.agent.check.ttl_pass("pynope"), False)


def catalog_services(t):
    index, services = c.catalog.services()
    t.ok("index", index.isdigit() and int(index) > 0, f"X-Consul-Index {index!r}")
    if t.shape("catalog.services", services, "map<string[]>"):
        t.equal('catalog.services["pyweb"]', sorted(services.get("pyweb", [])), sorted(WEB["tags"]))


def catalog_service(t):
    _, entries = c.catalog.service("pyweb")
    if not t.shape("catalog.service", entries, ["@CatalogService"]):
        return
    t.equal("length", len(entries), 1)
    for e in entries[:1]:
        t.equal("Node", e["Node"], NODE)
        t.equal("Datacenter", e["Datacenter"], DC)
        t.equal("ServiceID", e["ServiceID"], WEB["service_id"])
        t.equal("ServiceName", e["ServiceName"], "pyweb")
        t.equal("ServiceTags", e["ServiceTags"], WEB["tags"])
        t.equal("ServicePort", e["ServicePort"], WEB["port"])
        t.equal("ServiceAddress", e["ServiceAddress"], WEB["address"])
        t.equal("ServiceMeta", e["ServiceMeta"], WEB["meta"])
    t.equal("tag blue", [e["ServiceID"] for e in c.catalog.service("pyweb", tag="blue")[1]], ["pyweb-1"])
    t.equal("tag green", c.catalog.service("pyweb", tag="green")[1], [])
    t.equal("an unknown service", c.catalog.service("pynope")[1], [])


def catalog_nodes(t):
    _, nodes = c.catalog.nodes()
    if not t.shape("catalog.nodes", nodes, ["@Node"]):
        return
    me = [n for n in nodes if n["Node"] == NODE]
    t.equal("nodes named like the agent", len(me), 1)
    for n in me:
        t.equal("Datacenter", n["Datacenter"], DC)
        t.equal("Address", n["Address"], HOST)


def catalog_datacenters(t):
    t.equal("catalog.datacenters", c.catalog.datacenters(), [DC])


def health_service(t):
    c.agent.check.ttl_pass(WEB_CHECK)
    _, entries = c.health.service("pyweb")
    if not t.shape("health.service", entries, ["@ServiceEntry"]):
        return
    t.equal("length", len(entries), 1)
    for e in entries[:1]:
        t.equal("Node.Node", e["Node"]["Node"], NODE)
        t.equal("Service.ID", e["Service"]["ID"], WEB["service_id"])
        t.equal("Service.Tags", e["Service"]["Tags"], WEB["tags"])
        t.equal("Service.Port", e["Service"]["Port"], WEB["port"])
        statuses = {ch["CheckID"]: ch["Status"] for ch in e["Checks"]}
        t.equal(f"Checks[{WEB_CHECK}]", statuses.get(WEB_CHECK), "passing")

    def ids(**kw):
        return [e["Service"]["ID"] for e in c.health.service("pyweb", **kw)[1]]

    t.equal("passing=True, while passing", ids(passing=True), ["pyweb-1"])
    t.equal("tag v1", ids(tag="v1"), ["pyweb-1"])
    t.equal("tag green", ids(tag="green"), [])
    t.equal("tags blue and v1", ids(tag=["blue", "v1"]), ["pyweb-1"])
    c.agent.check.ttl_fail(WEB_CHECK)
    t.equal("passing=True, once failing", ids(passing=True), [])
    t.equal("without passing, once failing", ids(), ["pyweb-1"])
    c.agent.check.ttl_pass(WEB_CHECK)


def health_service_blocking(t):
    index, before = c.health.service("pyblock")
    t.equal("before any registration", before, [])
    # Its own client: a requests session is not meant to be shared between threads.
    blocking = consul.Consul()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    started = time.monotonic()
    future = pool.submit(blocking.health.service, "pyblock", index=index, wait="10s")
    try:
        future.result(timeout=0.5)
        t.fail("blocking query", "answered before anything changed")
    except concurrent.futures.TimeoutError:
        pass
    c.agent.service.register("pyblock", service_id="pyblock-1", port=9001)
    new_index, after = future.result(timeout=5)
    elapsed = time.monotonic() - started
    t.ok("blocking query", elapsed < 8, f"woke after {elapsed:.1f} s: at its wait, not at the change")
    t.ok("X-Consul-Index", int(new_index) > int(index), f"{new_index} is not above {index}")
    if t.shape("answer", after, ["@ServiceEntry"]):
        t.equal("answer's instances", [e["Service"]["ID"] for e in after], ["pyblock-1"])
    pool.shutdown()


def agent_service_deregister(t):
    c.agent.service.register("pygone", service_id="pygone-1", port=9003, check=consul.Check.ttl("30s"))
    t.ok("registered", "pygone-1" in c.agent.services(), "pygone-1 not listed after register")
    t.equal("deregister", c.agent.service.deregister("pygone-1"), True)
    t.equal("agent.services after", c.agent.services().get("pygone-1"), None)
    t.equal("its check after", c.agent.checks().get("service:pygone-1"), None)
    t.equal("catalog.service after", c.catalog.service("pygone")[1], [])
    # py-consul answers False for a 404.
    t.equal("deregister again", c.agent.service.deregister("pygone-1"), False)


def status_leader(t):
    t.equal("status.leader", c.status.leader(), RPC)


def status_peers(t):
    t.equal("status.peers", c.status.peers(), [RPC])


def query_get_list_execute_delete(t):
    # Created in Consul's documented shape; py-consul's own create (a template) is the next case.
    status, created = raw(
        "POST",
        "/v1/query",
        {"Name": "pyq", "Service": {"Service": "pyweb", "OnlyPassing": True, "Tags": ["blue"]}},
    )
    t.equal("POST /v1/query status", status, 200)
    if not t.shape("POST /v1/query", created, {"ID": "uuid"}):
        return
    qid = created["ID"]
    got = c.query.get(qid)
    if t.shape("query.get", got, ["@PreparedQuery"]):
        t.equal("query.get length", len(got), 1)
        for q in got[:1]:
            t.equal("ID", q["ID"], qid)
            t.equal("Name", q["Name"], "pyq")
            t.equal("Service.Service", q["Service"]["Service"], "pyweb")
            t.equal("Service.OnlyPassing", q["Service"]["OnlyPassing"], True)
            t.equal("Service.Tags", q["Service"]["Tags"], ["blue"])
    listed = c.query.list()
    if t.shape("query.list", listed, ["@PreparedQuery"]):
        t.equal("query.list", [q["Name"] for q in listed if q["ID"] == qid], ["pyq"])
    for by in (qid, "pyq"):
        r = c.query.execute(by)
        if t.shape(f"query.execute({by})", r, "@QueryExecute"):
            t.equal(f"query.execute({by}) Service", r["Service"], "pyweb")
            t.equal(f"query.execute({by}) Datacenter", r["Datacenter"], DC)
            t.equal(f"query.execute({by}) Failovers", r["Failovers"], 0)
            t.equal(f"query.execute({by}) Nodes", [e["Service"]["ID"] for e in r["Nodes"]], ["pyweb-1"])
    t.equal("query.execute limit=1", len(c.query.execute(qid, limit=1)["Nodes"]), 1)
    t.equal("query.delete", c.query.delete(qid), True)
    # py-consul answers None for a 404.
    t.equal("query.get after delete", c.query.get(qid), None)
    t.equal("query.list after delete", [q for q in c.query.list() if q["ID"] == qid], [])


def query_create_update(t):
    # py-consul sends lowercase keys and always makes a name-prefix template named as the query.
    qid = c.query.create("pyweb", name="pyt", onlypassing=True, tags=["blue"])
    if not t.shape("query.create", qid, {"ID": "uuid"}):
        return
    qid = qid["ID"]
    got = c.query.get(qid)
    if t.shape("query.get", got, ["@PreparedQuery"]):
        for q in got[:1]:
            t.equal("Name", q["Name"], "pyt")
            t.equal("Template.Type", q["Template"]["Type"], "name_prefix_match")
            t.equal("Service.Tags", q["Service"]["Tags"], ["blue"])
    # A template answers every name it starts, by name (not by ID).
    for name in ("pyt", "pyt-anything"):
        r = c.query.execute(name)
        if t.shape(f"query.execute({name})", r, "@QueryExecute"):
            t.equal(f"query.execute({name}) Nodes", [e["Service"]["ID"] for e in r["Nodes"]], ["pyweb-1"])
    t.equal("query.update", c.query.update(qid, "pyweb", name="pyt", tags=["green"]), True)
    t.equal("query.get after update", [q["Service"]["Tags"] for q in c.query.get(qid)], [["green"]])
    t.equal("query.execute after update", c.query.execute("pyt")["Nodes"], [])
    t.equal("query.delete", c.query.delete(qid), True)
    t.equal("query.get after delete", c.query.get(qid), None)


run(
    "py-consul",
    [
        ("agent.self", agent_self),
        ("agent.service.register", agent_service_register),
        ("agent.check.ttl_pass/ttl_warn/ttl_fail", agent_check_ttl),
        ("catalog.services", catalog_services),
        ("catalog.service", catalog_service),
        ("catalog.nodes", catalog_nodes),
        ("catalog.datacenters", catalog_datacenters),
        ("health.service", health_service),
        ("health.service blocking (index + wait)", health_service_blocking),
        ("agent.service.deregister", agent_service_deregister),
        ("status.leader", status_leader),
        ("status.peers", status_peers),
        ("query get/list/execute/delete", query_get_list_execute_delete),
        ("query.create/update (a template)", query_create_update),
    ],
)
