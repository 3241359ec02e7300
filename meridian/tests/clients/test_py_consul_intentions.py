"""Meridian's intentions through PyPI's py-consul (pinned in requirements.txt): upsert, read,
list, match, check and delete (Consul's exact-match model), each answer checked against Consul's
documented shape (consul-shapes.json) and the decision it implies. Run by
meridian/tests/it/clients.rs against a fresh `meridian agent --dev` (default intention: deny).

Every name here starts with `py` so that nothing collides with another script's.
"""

import consul
from case_runner import run

c = consul.Consul()


def intention_upsert_read(t):
    t.equal("upsert pyapi → pyweb", c.connect.intentions.upsert("pyapi", "pyweb", action="allow", description="d", meta={"team": "a"}), True)
    got = c.connect.intentions.read("pyapi", "pyweb")
    if t.shape("connect.intentions.read", got, "@Intention"):
        t.equal("Action", got["Action"], "allow")
        t.equal("SourceName", got["SourceName"], "pyapi")
        t.equal("DestinationName", got["DestinationName"], "pyweb")
        t.equal("Precedence", got["Precedence"], 9)
        t.equal("Meta", got["Meta"], {"team": "a"})
        t.equal("Description", got["Description"], "d")


def intention_check_match(t):
    t.equal("upsert * → pyweb", c.connect.intentions.upsert("*", "pyweb", action="deny"), True)
    t.equal("check pyapi → pyweb", c.connect.intentions.check("pyapi", "pyweb"), True)
    t.equal("check pycli → pyweb", c.connect.intentions.check("pycli", "pyweb"), False)
    t.equal("check pycli → pydb (default deny)", c.connect.intentions.check("pycli", "pydb"), False)
    m = c.connect.intentions.match("destination", "pyweb")
    if t.shape("connect.intentions.match", m, {"pyweb": ["@Intention"]}):
        t.equal("match order", [(i["SourceName"], i["Precedence"]) for i in m["pyweb"]], [("pyapi", 9), ("*", 8)])
    listed = c.connect.intentions.list()
    if t.shape("connect.intentions.list", listed, ["@Intention"]):
        mine = [(i["SourceName"], i["DestinationName"]) for i in listed if i["DestinationName"] == "pyweb"]
        t.equal("list", mine, [("pyapi", "pyweb"), ("*", "pyweb")])


def intention_update_delete(t):
    t.equal("upsert again (deny)", c.connect.intentions.upsert("pyapi", "pyweb", action="deny"), True)
    t.equal("check after update", c.connect.intentions.check("pyapi", "pyweb"), False)
    t.equal("delete", c.connect.intentions.delete("pyapi", "pyweb"), True)
    t.equal("delete *", c.connect.intentions.delete("*", "pyweb"), True)
    t.equal("read after delete", c.connect.intentions.read("pyapi", "pyweb"), None)
    t.equal("check after delete (default deny)", c.connect.intentions.check("pyapi", "pyweb"), False)


run(
    "py-consul intentions",
    [
        ("connect.intentions.upsert/read", intention_upsert_read),
        ("connect.intentions.check/match/list", intention_check_match),
        ("connect.intentions update/delete", intention_update_delete),
    ],
)
