"""Two real node-master processes on one etcd and prefix (issue 19 item 2, the audit's item 1):
each master's cache of node records follows the store's watch, so a node registered on master A
is listed by master B, and a node deleted with `nodectl delete node` on master B is refused by
master A on its next request with its certificate (before, A kept authorizing it from its
cache until A itself wrote the record)."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path

from agent.pki.core import build_csr, generate_key, key_to_pem
from agent.pki.names import NODE_CN_PREFIX, NODES_GROUP
from tests.etcd.replicas import Replica
from tests.etcd.server import EtcdServer
from tests.etcd.test_master_on_etcd import on_etcd
from tests.helpers import MasterProcess, wait_for


def https(
    master: MasterProcess,
    method: str,
    path: str,
    body: object = None,
    cert: tuple[Path, Path] | None = None,
) -> tuple[int, dict[str, object]]:
    ctx = ssl.create_default_context(cafile=str(master.root / "pki" / "ca.crt"))
    if cert is not None:
        ctx.load_cert_chain(*cert)
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        master.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, context=ctx, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_a_node_deleted_on_master_b_is_refused_by_master_a(
    etcd: EtcdServer, etcd_prefix: str, tmp_path: Path
) -> None:
    prefix = "/" + etcd_prefix.strip("/").replace("[", "-").replace("]", "-") + "/"
    first = MasterProcess(tmp_path / "a")
    on_etcd(first, etcd, prefix, [etcd.endpoint])
    second = Replica(first, tmp_path / "b")  # the first's CA: a replica (cluster_ca.py)
    first.start()
    try:
        second.start()
        try:
            # A node joins on master A (open registration) with a key of its own.
            key = generate_key()
            csr = build_csr(key, NODE_CN_PREFIX + "n1", [NODES_GROUP], ["n1"]).decode()
            status, body = https(first, "POST", "/v1/registrations", {"nodeName": "n1", "csr": csr})
            assert status == 200, body
            cert = (tmp_path / "n1.crt", tmp_path / "n1.key")
            cert[0].write_text(str(body["certificate"]))
            cert[1].write_bytes(key_to_pem(key))
            status, body = https(first, "GET", "/v1/nodes/n1/pods", cert=cert)
            assert status == 200, body

            # Master B learns of it from the watch (it started before the node joined).
            wait_for(lambda: second.node("n1"), what="master B lists n1")

            deleted = second.nodectl("delete", "node", "n1")
            assert deleted.returncode == 0, deleted.stderr

            # Master A refuses the node's certificate once its watch delivers the delete.
            wait_for(
                lambda: https(first, "GET", "/v1/nodes/n1/pods", cert=cert)[0] in (401, 403),
                timeout_s=30.0,
                what="master A refusing the deleted node's certificate",
            )
            assert first.node("n1") is None
        finally:
            second.stop()
    finally:
        first.stop()
