"""Hostile node names at every edge of a real master process over real TLS on loopback (issue 14,
item 2), and the master's rules for request bodies (item 8).

Each name of the table is sent where a node name goes in: the body of a registration, the path
of a lease, of a delete, of a certificate rotation, and ``nodectl delete node``. Each is refused
with a 400 naming what is wrong (a 404 where the name is an empty path segment), quoted escaped,
never a 500; nothing is stored, so ``nodectl get nodes`` (table, wide, JSON) shows the one node
registered with a valid name and no forged row, and that node can still be deleted.

Then bodies: only ``application/json`` is read (415 for ``text/plain``, a form, no type), and
JSON nested past the bound is a 400 naming it (it was a 500, RecursionError), whoever sends it.
"""

from __future__ import annotations

import http.client
import json
import ssl
import tomllib
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.pki.core import build_csr, generate_key, key_to_pem
from agent.pki.names import NODE_CN_PREFIX, NODES_GROUP
from agent.proto.jsonbody import MAX_JSON_DEPTH
from tests.helpers import MasterProcess

MakeMaster = Callable[..., MasterProcess]

VALID = "node-1.example"
# (label, name): every row the issue lists, and more.
HOSTILE = [
    ("empty", ""),
    ("dot-dot", "../../etc"),
    ("slash", "a/b"),
    ("star", "*"),
    ("group", "system:masters"),
    ("nul", "a\x00b"),
    ("newline-forging-a-row", f"x\n{VALID}   Ready   Approved   open   v9.9.9"),
    ("carriage-return", "a\rb"),
    ("escape-sequence", "a\x1b[2Jb"),
    ("right-to-left-override", "a\u202eb"),
    ("label-of-53", "a" * 53),
    ("label-of-64", "a" * 64),
    ("subdomain-of-254", ".".join(["a" * 63] * 3 + ["a" * 62])),
    ("very-long", "a" * 5000),
    ("non-ascii", "nöde"),
    ("uppercase", "Node-1"),
    ("trailing-dot", "node-1."),
    ("leading-hyphen", "-node"),
    ("percent-dot-dot", "%2e%2e"),
    ("dot", "."),
    ("space", "a b"),
    ("underscore", "a_b"),
]
assert len(".".join(["a" * 63] * 3 + ["a" * 62])) == 254


@dataclass
class Api:
    """HTTPS (HTTP/1.1) requests to the master as anonymous, its admin or a node."""

    master: MasterProcess
    admin: ssl.SSLContext
    anonymous: ssl.SSLContext

    def call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        ctx: ssl.SSLContext | None = None,
        content_type: str | None = "application/json",
    ) -> tuple[int, dict[str, Any]]:
        conn = http.client.HTTPSConnection(
            self.master.host, self.master.port, context=ctx or self.anonymous, timeout=30
        )
        try:
            headers = {"Content-Type": content_type} if content_type and body else {}
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        assert resp.getheader("Content-Type") == "application/json", (path, data[:200])
        answer = json.loads(data)
        if resp.status >= 400:  # always our error body
            assert answer["error"]["code"] == resp.status, answer
        return resp.status, answer


def context(
    master: MasterProcess, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(master.root / "pki" / "ca.crt"))
    if cert is not None and key is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


def admin_context(master: MasterProcess, directory: Path) -> ssl.SSLContext:
    conf = tomllib.loads(master.admin_conf.read_text())
    cert, key = directory / "admin.crt", directory / "admin.key"
    cert.write_text(conf["client_cert"])
    key.write_text(conf["client_key"])
    return context(master, cert, key)


def registration(name: str, csr_name: str) -> tuple[bytes, Any]:
    """A registration body for ``name`` whose CSR names ``csr_name`` (always a valid name: the
    name itself must be what the master refuses, before it looks at the CSR)."""
    key = generate_key()
    csr = build_csr(key, NODE_CN_PREFIX + csr_name, [NODES_GROUP], [csr_name]).decode()
    return json.dumps({"nodeName": name, "csr": csr}).encode(), key


def segment(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def refused(status: int, answer: dict[str, Any], where: str, *, empty: bool) -> None:
    """400 naming the name's field, quoted escaped (404 for an empty path segment): never 500,
    never the raw value."""
    message = answer["error"]["message"]
    if empty:
        assert status in (400, 404), (where, status, message)
    else:
        assert status == 400, (where, status, message)
        assert "DNS-1123 subdomain" in message or "longer than 52" in message, (where, message)
    assert message.isprintable() and len(message) < 1000, (where, message)


@pytest.fixture
def served(make_master: MakeMaster, tmp_path: Path) -> Api:
    master = make_master().start()
    return Api(master, admin_context(master, tmp_path), context(master))


def test_hostile_node_names_are_refused_at_every_edge(served: Api, tmp_path: Path) -> None:
    api, master = served, served.master
    # A node with a valid name registers (trust "open": admitted at once) and gets its
    # certificate, with which it then tries the hostile names on its own routes.
    body, key = registration(VALID, VALID)
    status, answer = api.call("POST", "/v1/registrations", body)
    assert (status, answer["status"]) == (200, "Approved"), answer
    cert, key_file = tmp_path / "node.crt", tmp_path / "node.key"
    cert.write_text(answer["certificate"])
    key_file.write_bytes(key_to_pem(key))
    node = context(master, cert, key_file)
    node.check_hostname = True

    for label, name in HOSTILE:
        empty = name == ""
        # Registration: the name in the body, with a CSR for a valid name.
        status, answer = api.call("POST", "/v1/registrations", registration(name, VALID)[0])
        refused(status, answer, f"{label}: registration", empty=False)
        assert "nodeName" in answer["error"]["message"]
        # The name in a path: lease (as the node), rotation, delete and get (as the admin).
        lease = f"/v1/nodes/{segment(name)}/lease"
        refused(*api.call("PUT", lease, b"{}", ctx=node), f"{label}: lease", empty=empty)
        rotation = f"/v1/nodes/{segment(name)}/certificate"
        refused(*api.call("POST", rotation, b"{}", ctx=node), f"{label}: rotate", empty=empty)
        for method in ("DELETE", "GET"):
            where = f"{label}: {method} node"
            refused(
                *api.call(method, f"/v1/nodes/{segment(name)}", ctx=api.admin), where, empty=empty
            )
        # nodectl with the name as its argument (argv cannot hold a NUL).
        if "\x00" not in name:
            done = master.nodectl("delete", "node", name)
            assert done.returncode != 0, (label, done.stdout)
            assert "Traceback" not in done.stderr, done.stderr
            assert "(InternalError)" not in done.stderr, done.stderr
            assert all(line.isprintable() for line in done.stderr.splitlines()), done.stderr
            if name.startswith("-"):  # an option to argparse: a usage error, nothing sent
                assert done.returncode == 2, done.stderr
            elif "/" in name:  # kubectl's TYPE/NAME form after a type: a usage error, nothing sent
                assert done.returncode == 2, done.stderr
                assert "no need to specify a resource type" in done.stderr, done.stderr
            else:
                assert len(done.stderr.splitlines()) == 1, done.stderr  # no forged line
                reason = "(NotFound)" if empty else "(BadRequest)"  # kubectl's shape
                assert reason in done.stderr, (label, done.stderr)

    # Nothing was stored: the table shows the one valid node, one row, nothing forged.
    for flags in ((), ("-o", "wide")):
        table = master.nodectl("get", "nodes", *flags)
        assert table.returncode == 0, table.stderr
        rows = table.stdout.splitlines()
        assert len(rows) == 2, table.stdout
        assert rows[1].startswith(VALID + " "), rows
    assert list(master.nodes()) == [VALID]
    # The node's own lease still works; then the valid node is deleted like any other.
    status, answer = api.call("PUT", f"/v1/nodes/{VALID}/lease", b"{}", ctx=node)
    assert status == 200, answer
    done = master.nodectl("delete", "node", VALID)
    assert done.returncode == 0, done.stderr
    assert master.nodes() == {}
    # And the master logged no traceback (the fixture checks its log as well).
    assert "Traceback" not in master.log_path.read_text(errors="replace")


def test_request_bodies_are_json_only_and_nested_within_the_bound(served: Api) -> None:
    api = served
    body, _ = registration("body-node", "body-node")
    # Even a valid registration body is not read as anything but application/json.
    for content_type in (
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/json; charset=latin-1",
        None,
    ):
        status, answer = api.call("POST", "/v1/registrations", body, content_type=content_type)
        assert status == 415, (content_type, answer)
        assert "application/json" in answer["error"]["message"]
    # Nested past the bound, whoever sends it: anonymous on the registration route, the admin
    # on apply, a node on its lease.
    deep = b'{"nodeName": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"  # ~200 KB, well-formed
    just_past = b'{"a": ' * (MAX_JSON_DEPTH + 1) + b"1" + b"}" * (MAX_JSON_DEPTH + 1)
    for payload in (deep, just_past, b"[" * 500_000):
        status, answer = api.call("POST", "/v1/registrations", payload)
        assert status == 400, answer
        assert f"more than {MAX_JSON_DEPTH} deep" in answer["error"]["message"]
    status, answer = api.call("POST", "/v1/pods", deep, ctx=api.admin)
    assert 400 <= status < 500, answer
    # With the right type and a sane body, the same registration goes through.
    status, answer = api.call("POST", "/v1/registrations", body)
    assert (status, answer["status"]) == (200, "Approved"), answer
