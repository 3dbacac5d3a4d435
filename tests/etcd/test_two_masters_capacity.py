"""Two real node-master processes on one etcd and prefix never overcommit a node (issue 19 item
2): a node with room for SLOTS pods, and a burst of applies sent to both masters at once, each
master answering its half concurrently. Exactly SLOTS pods are bound to the node, the others
stay Pending with the scheduler's "too many pods". Without the allocation record (``/alloc/``,
agent.master.pods) every apply listed the node empty and bound there."""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from agent.pki.core import build_csr, generate_key, key_to_pem
from agent.pki.names import NODE_CN_PREFIX, NODES_GROUP
from tests.etcd.replicas import Replica
from tests.etcd.server import EtcdServer
from tests.etcd.test_master_on_etcd import on_etcd
from tests.etcd.test_two_masters_node_cache import https
from tests.helpers import MasterProcess, pod_manifest, sleeper, wait_for

SLOTS = 3
PODS = 16  # half to each master
FULL = "0/1 nodes are available: 1 too many pods"


def admin_files(master: MasterProcess, directory: Path) -> tuple[Path, Path]:
    """The admin client certificate and key of ``master``'s admin.conf, as files."""
    conf = tomllib.loads(master.admin_conf.read_text())
    cert, key = directory / "admin.crt", directory / "admin.key"
    cert.write_text(conf["client_cert"])
    key.write_text(conf["client_key"])
    key.chmod(0o600)
    return cert, key


def apply_at_once(targets: list[MasterProcess], admin: tuple[Path, Path]) -> list[int]:
    """POST pod ``p<i>`` to ``targets[i]``, every request sent at the same moment: each on a
    connection of its own, TLS handshake done, released together by a barrier (so the masters
    handle them concurrently, not one connection set-up after the other)."""
    barrier = threading.Barrier(len(targets))

    def post(i: int) -> int:
        master = targets[i]
        ctx = ssl.create_default_context(cafile=str(master.root / "pki" / "ca.crt"))
        ctx.load_cert_chain(*admin)
        conn = http.client.HTTPSConnection(master.host, master.port, context=ctx, timeout=60)
        try:
            conn.connect()
            body = json.dumps(pod_manifest(f"p{i:02d}", [sleeper()]))
            barrier.wait(timeout=60)
            conn.request("POST", "/v1/pods", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            return int(resp.status)
        finally:
            conn.close()

    with ThreadPoolExecutor(len(targets)) as pool:
        return list(pool.map(post, range(len(targets))))


def test_two_masters_applying_a_burst_at_once_never_overcommit_a_node(
    etcd: EtcdServer, etcd_prefix: str, tmp_path: Path
) -> None:
    prefix = "/" + etcd_prefix.strip("/").replace("[", "-").replace("]", "-") + "/"
    first = MasterProcess(tmp_path / "a", lease_grace_s=60.0)
    on_etcd(first, etcd, prefix, [etcd.endpoint])
    second = Replica(first, tmp_path / "b")
    admin = admin_files(first, tmp_path)
    first.start()
    try:
        second.start()
        try:
            key = generate_key()
            csr = build_csr(key, NODE_CN_PREFIX + "n1", [NODES_GROUP], ["n1"]).decode()
            capacity = {"cpu": "4", "memory": "8Gi", "pods": str(SLOTS)}
            status, body = https(
                first,
                "POST",
                "/v1/registrations",
                {"nodeName": "n1", "csr": csr, "capacity": capacity},
            )
            assert status == 200, body
            cert = (tmp_path / "n1.crt", tmp_path / "n1.key")
            cert[0].write_text(str(body["certificate"]))
            cert[1].write_bytes(key_to_pem(key))
            # n1 Ready at both masters: each holds a renewal of its lease (current for the
            # 60 s grace given below, longer than the burst under any load).
            for master in (first, second):

                def renewed(master: MasterProcess = master) -> bool:
                    return https(master, "PUT", "/v1/nodes/n1/lease", {}, cert=cert)[0] == 200

                wait_for(renewed, what=f"n1's lease renewed at {master.url}")
            answers = apply_at_once([(first, second)[i % 2] for i in range(PODS)], admin)
            assert answers == [201] * PODS
            pods = first.pods()
            assert len(pods) == PODS
            bound = sorted(n for n, p in pods.items() if p["spec"].get("nodeName") == "n1")
            assert len(bound) == SLOTS, bound
            waiting = [p for p in pods.values() if not p["spec"].get("nodeName")]
            assert len(waiting) == PODS - SLOTS
            for pod in waiting:
                [scheduled] = pod["status"]["conditions"]
                assert scheduled["message"] == FULL, pod["status"]
        finally:
            second.stop()
    finally:
        first.stop()
