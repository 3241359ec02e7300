"""Meridian's Connect CA and authorize through PyPI's py-consul (pinned in requirements.txt):
connect.ca.roots (JSON and PEM), agent.connect.ca.roots and .leaf, agent.connect.authorize, a
sidecar's registration (kind connect-proxy) read back by catalog.connect and health.connect, and
connect.ca.configuration, each
answer checked against Consul's documented shape (consul-shapes.json) and the values it implies.
Run by meridian/tests/it/clients.rs against an agent with ACLs on and a trust domain (so a mesh
CA), whose management token of the config file is MERIDIAN_MANAGEMENT_TOKEN and trust domain
MERIDIAN_TRUST_DOMAIN.

Every name here starts with `py` so that nothing collides with another script's.
"""

import os
import time

import consul
from case_runner import DC, run

c = consul.Consul(token=os.environ["MERIDIAN_MANAGEMENT_TOKEN"])
TD = os.environ["MERIDIAN_TRUST_DOMAIN"]


def wait_roots():
    for _ in range(100):
        try:
            return c.connect.ca.roots()
        except consul.ConsulException:
            time.sleep(0.1)
    return c.connect.ca.roots()


def ca_roots(t):
    roots = wait_roots()
    if t.shape("connect.ca.roots", roots, "@CARoots"):
        t.equal("TrustDomain", roots["TrustDomain"], TD)
        t.equal("one root, active", [r["Active"] for r in roots["Roots"]], [True])
        t.equal("ActiveRootID", roots["ActiveRootID"], roots["Roots"][0]["ID"])
    t.equal("agent.connect.ca.roots", c.agent.connect.ca.roots()["Roots"], roots["Roots"])
    pem = c.http.get(
        lambda r: r.body, "/v1/connect/ca/roots", params=[("pem", "true")], headers=c.prepare_headers(None)
    )
    t.ok("roots as PEM", pem.startswith("-----BEGIN CERTIFICATE-----"), f"got {pem[:40]!r}")


def ca_leaf(t):
    leaf = c.agent.connect.ca.leaf("pyweb")
    if t.shape("agent.connect.ca.leaf", leaf, "@LeafCert"):
        t.equal("Service", leaf["Service"], "pyweb")
        t.equal("ServiceURI", leaf["ServiceURI"], f"spiffe://{TD}/ns/default/dc/{DC}/svc/pyweb")
        t.ok("CertPEM", leaf["CertPEM"].startswith("-----BEGIN CERTIFICATE-----"), "a PEM certificate")
        t.ok("PrivateKeyPEM", "PRIVATE KEY" in leaf["PrivateKeyPEM"], "a PEM key")


def connect_authorize(t):
    uri = f"spiffe://{TD}/ns/default/dc/{DC}/svc/pyapi"
    got = c.agent.connect.authorize("pyweb", uri, "00:01")
    if t.shape("agent.connect.authorize", got, "@ConnectAuthorize"):
        t.equal("Authorized (default deny)", got["Authorized"], False)
    t.equal("allow pyapi → pyweb", c.connect.intentions.upsert("pyapi", "pyweb", action="allow"), True)
    t.equal("Authorized after allow", c.agent.connect.authorize("pyweb", uri, "00:01")["Authorized"], True)
    t.equal("delete", c.connect.intentions.delete("pyapi", "pyweb"), True)


def sidecar_registration(t):
    proxy = {
        "DestinationServiceName": "pyweb",
        "LocalServiceAddress": "127.0.0.1",
        "LocalServicePort": 8080,
        "Upstreams": [{"DestinationName": "pyapi", "LocalBindPort": 9191}],
    }
    c.agent.service.register(
        "pyweb-sidecar-proxy", service_id="pyweb-proxy", port=21999, kind="connect-proxy", proxy=proxy
    )
    _, nodes = c.catalog.connect("pyweb")
    if t.shape("catalog.connect", nodes, ["@CatalogService"]) and nodes:
        t.equal("ServiceKind", nodes[0]["ServiceKind"], "connect-proxy")
        t.equal("ServicePort", nodes[0]["ServicePort"], 21999)
        if t.shape("ServiceProxy", nodes[0]["ServiceProxy"], "@ConnectProxyConfig"):
            t.equal("destination", nodes[0]["ServiceProxy"]["DestinationServiceName"], "pyweb")
            t.equal("upstream", nodes[0]["ServiceProxy"]["Upstreams"][0]["LocalBindPort"], 9191)
    _, entries = c.health.connect("pyweb")
    if t.shape("health.connect", entries, ["@ServiceEntry"]) and entries:
        t.equal("Service.Kind", entries[0]["Service"]["Kind"], "connect-proxy")
        t.shape("Service.Proxy", entries[0]["Service"]["Proxy"], "@ConnectProxyConfig")
    t.equal("pyweb's own instances are not its mesh endpoints", c.catalog.service("pyweb-sidecar-proxy")[1][0]["ServiceID"], "pyweb-proxy")
    c.agent.service.deregister("pyweb-proxy")
    t.equal("gone", c.catalog.connect("pyweb")[1], [])


def ca_configuration(t):
    conf = c.connect.ca.configuration()
    if t.shape("connect.ca.configuration", conf, "@CAConfig"):
        t.equal("Provider", conf["Provider"], "consul")
        t.equal("no rotation under way", conf.get("Rotation"), None)


run(
    "py-consul connect",
    [
        ("connect.ca.roots", ca_roots),
        ("agent.connect.ca.leaf", ca_leaf),
        ("agent.connect.authorize", connect_authorize),
        ("agent.service.register connect-proxy, catalog.connect, health.connect", sidecar_registration),
        ("connect.ca.configuration", ca_configuration),
    ],
)
