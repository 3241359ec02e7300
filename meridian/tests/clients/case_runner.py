"""The runner of the py-consul scripts: named cases in order, each a function that checks answers
field by field through a `Checks` object and may raise; a failed case prints every mismatch
(where, what was expected, what came) and the run ends with "N passed, N failed" and a nonzero
exit if any failed. Shared by test_py_consul.py and test_py_consul_nodes.py; the kinds of
values are those of consul-shapes.json, which the npm client's runner reads too.

Environment (set by meridian/tests/it/clients.rs): CONSUL_HTTP_ADDR (host:port of the agent's
HTTP API, which py-consul reads itself), MERIDIAN_NODE_NAME, MERIDIAN_DC, MERIDIAN_RPC_ADDR
(what /v1/status/leader must name).
"""

import concurrent.futures
import json
import os
import pathlib
import re
import sys
import time
import traceback

import requests

SHAPES = json.loads((pathlib.Path(__file__).parent / "consul-shapes.json").read_text())

# Every case has this long (s) before it counts as failed.
CASE_LIMIT_S = 15


def _need(name):
    value = os.environ.get(name)
    if not value:
        print(f"{name} is not set (meridian/tests/it/clients.rs sets it)", file=sys.stderr)
        sys.exit(2)
    return value


ADDR = _need("CONSUL_HTTP_ADDR")
NODE = _need("MERIDIAN_NODE_NAME")
DC = _need("MERIDIAN_DC")
RPC = _need("MERIDIAN_RPC_ADDR")
HOST = ADDR.rsplit(":", 1)[0]

_raw = requests.Session()
_raw.trust_env = False


def raw(method, path, body=None):
    """A raw request to the agent (setup and checks the client has no call for): (status, body)."""
    r = _raw.request(method, f"http://{ADDR}{path}", json=body, timeout=10)
    try:
        return r.status_code, r.json()
    except ValueError:
        return r.status_code, r.text


def raw_get_indexed(path, index=None, wait=None):
    """A GET with Consul's blocking parameters, for an endpoint the client has no call for:
    (X-Consul-Index, body). Its own session, so that it may run in another thread."""
    params = {k: v for k, v in {"index": index, "wait": wait}.items() if v is not None}
    session = requests.Session()
    session.trust_env = False
    r = session.get(f"http://{ADDR}{path}", params=params, timeout=30)
    r.raise_for_status()
    return r.headers["X-Consul-Index"], r.json()


def _show(v):
    s = json.dumps(v)
    return s if len(s) <= 300 else s[:300] + "…"


def _type_of(v):
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


_MISSING = object()
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)


class Checks:
    """What a case checks with; every mismatch is kept, the case goes on."""

    def __init__(self):
        self.errors = []

    def fail(self, where, message):
        self.errors.append(f"{where}: {message}")

    def equal(self, where, actual, expected):
        """`actual` equals `expected`."""
        if actual != expected:
            self.fail(where, f"expected {_show(expected)}, got {_show(actual)}")

    def ok(self, where, cond, message):
        """`cond` holds."""
        if not cond:
            self.fail(where, message)

    def shape(self, where, value, kind):
        """`value` has the kind `kind`; returns whether it had."""
        before = len(self.errors)
        self._kind(where, value, kind)
        return len(self.errors) == before

    def _kind(self, where, v, kind):
        if isinstance(kind, list):
            if not isinstance(v, list):
                return self.fail(where, f"expected an array, got {self._got(v)}")
            for i, e in enumerate(v):
                self._kind(f"{where}[{i}]", e, kind[0])
            return None
        if isinstance(kind, dict):
            if not isinstance(v, dict):
                return self.fail(where, f"expected an object, got {self._got(v)}")
            for field, k in kind.items():
                self._kind(f"{where}.{field}", v.get(field, _MISSING), k)
            return None
        if kind.startswith("@"):
            return self._kind(where, v, SHAPES[kind[1:]])
        if kind.endswith("?"):
            if v is _MISSING:
                return None
            kind = kind[:-1]
        t = _type_of(v) if v is not _MISSING else "missing"
        ok = {
            "any": v is not _MISSING,
            "string": t == "string",
            "integer": t == "integer",
            "number": t in ("integer", "number"),
            "boolean": t == "boolean",
            "object": t == "object",
            "array": t == "array",
            "string[]": t == "array" and all(isinstance(e, str) for e in v),
            "map<string>": t == "object" and all(isinstance(e, str) for e in v.values()),
            "map<string[]>": t == "object"
            and all(isinstance(e, list) and all(isinstance(x, str) for x in e) for e in v.values()),
            "uuid": t == "string" and bool(_UUID.match(v)),
        }[kind]
        if not ok:
            self.fail(where, f"expected {kind}, got {self._got(v)}")
        return None

    @staticmethod
    def _got(v):
        if v is _MISSING:
            return "nothing (missing)"
        return "null" if v is None else f"{_type_of(v)} {_show(v)}"


def until(what, seconds, f):
    """Polls `f` until it returns something other than None; fails after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        v = f()
        if v is not None:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.05)


def run(title, cases):
    """Runs `cases` ([(name, f(t))]) in order, each with CASE_LIMIT_S, and exits with the result.
    Arguments name the cases to run (all when none)."""
    only = sys.argv[1:]
    passed, failed = 0, []
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    for name, f in cases:
        if only and name not in only:
            continue
        t = Checks()
        started = time.monotonic()
        try:
            pool.submit(f, t).result(timeout=CASE_LIMIT_S)
        except concurrent.futures.TimeoutError:
            t.fail("timeout", f"no end within {CASE_LIMIT_S} s")
        except Exception as e:  # noqa: BLE001 - any failure of a case is reported, not raised
            t.fail("raised", "".join(traceback.format_exception_only(type(e), e)).strip())
        ms = int((time.monotonic() - started) * 1000)
        if not t.errors:
            passed += 1
            print(f"case {name}: ok ({ms} ms)", flush=True)
        else:
            failed.append(name)
            print(f"case {name}: FAILED ({ms} ms)", flush=True)
            for e in t.errors:
                print(f"    {e}", flush=True)
    if failed:
        print(f"{title}: failed cases: {', '.join(failed)}")
    print(f"{title}: {passed} passed, {len(failed)} failed", flush=True)
    # A case stuck past its limit leaves its thread behind: end without waiting for it.
    os._exit(1 if failed else 0)
