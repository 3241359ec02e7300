"""Meridian's ACL token API through PyPI's py-consul (pinned in requirements.txt): create, read,
read_self, list, update and delete, each answer checked against Consul's documented shape
(consul-shapes.json), and what a token created this way may do. Run by
meridian/tests/it/clients.rs against an agent with ACLs on, whose management token of the
config file is MERIDIAN_MANAGEMENT_TOKEN.

Every name here starts with `py` so that nothing collides with another script's.
"""

import os

import consul
from case_runner import run

MANAGEMENT = os.environ["MERIDIAN_MANAGEMENT_TOKEN"]
c = consul.Consul(token=MANAGEMENT)
made = {}


def token_create(t):
    tok = c.acl.token.create(description="pydeployer", service_identities=[{"ServiceName": "pyweb"}])
    if not t.shape("acl.token.create", tok, "@ACLToken"):
        return
    t.ok("SecretID", tok["SecretID"] != "<hidden>", "the create shows the secret")
    t.equal("ServiceIdentities", tok["ServiceIdentities"], [{"ServiceName": "pyweb"}])
    t.equal("Description", tok["Description"], "pydeployer")
    made.update(accessor=tok["AccessorID"], secret=tok["SecretID"])


def token_authorizes(t):
    deployer = consul.Consul(token=made["secret"])
    t.equal("register pyweb", deployer.agent.service.register("pyweb", service_id="pyweb-1", port=80), True)
    try:
        deployer.agent.service.register("pydb", service_id="pydb-1", port=80)
        t.fail("register pydb", "a token of pyweb registered pydb")
    except consul.ACLPermissionDenied:
        pass
    me = deployer.acl.token.read_self()
    if t.shape("acl.token.read_self", me, "@ACLToken"):
        t.equal("AccessorID", me["AccessorID"], made["accessor"])
        t.equal("SecretID", me["SecretID"], "<hidden>")
    try:
        deployer.acl.token.list()
        t.fail("acl.token.list", "a write token listed tokens")
    except consul.ACLPermissionDenied:
        pass


def token_read_list(t):
    tok = c.acl.token.read(made["accessor"])
    if t.shape("acl.token.read", tok, "@ACLToken"):
        t.equal("SecretID", tok["SecretID"], "<hidden>")
    tokens = c.acl.token.list()
    if t.shape("acl.token.list", tokens, ["@ACLToken"]):
        t.equal("list", [x["AccessorID"] for x in tokens if x["Description"] == "pydeployer"], [made["accessor"]])
        t.ok("list secrets", all(x["SecretID"] == "<hidden>" for x in tokens), "a listing shows a secret")


def token_update(t):
    tok = c.acl.token.update(
        made["accessor"], description="pyreader", policies_name=["builtin/global-read-only"]
    )
    if t.shape("acl.token.update", tok, "@ACLToken"):
        t.equal("Description", tok["Description"], "pyreader")
        t.equal("Policies", [p["Name"] for p in tok["Policies"]], ["builtin/global-read-only"])
        t.equal("SecretID", tok["SecretID"], "<hidden>")
    reader = consul.Consul(token=made["secret"])
    try:
        reader.agent.service.register("pyweb", service_id="pyweb-2", port=80)
        t.fail("register as reader", "a read-only token registered")
    except consul.ACLPermissionDenied:
        pass
    t.ok("read as reader", "pyweb" in reader.catalog.services()[1], "the reader reads the catalog")


def token_management_by_policy(t):
    tok = c.acl.token.create(description="pyadmin", policies_name=["global-management"])
    if t.shape("acl.token.create (global-management)", tok, "@ACLToken"):
        admin = consul.Consul(token=tok["SecretID"])
        t.equal("admin lists", made["accessor"] in [x["AccessorID"] for x in admin.acl.token.list()], True)
        t.equal("acl.token.delete (admin)", c.acl.token.delete(tok["AccessorID"]), True)


def token_delete(t):
    t.equal("acl.token.delete", c.acl.token.delete(made["accessor"]), True)
    gone = consul.Consul(token=made["secret"])
    try:
        gone.catalog.services()
        t.fail("read after delete", "a deleted token still reads")
    except consul.ACLPermissionDenied:
        pass
    t.equal("acl.token.read after delete", c.acl.token.read(made["accessor"]), None)


run(
    "py-consul acl",
    [
        ("acl.token.create (service identity)", token_create),
        ("the token writes its service only, reads itself", token_authorizes),
        ("acl.token.read/list", token_read_list),
        ("acl.token.update (to read-only)", token_update),
        ("acl.token.create (global-management)", token_management_by_policy),
        ("acl.token.delete", token_delete),
    ],
)
