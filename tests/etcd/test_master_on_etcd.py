"""Real node-master processes with ``[store] backend = "etcd"`` on the test etcd (TLS, client
certificate): the cluster's state is in etcd, not in the data dir, survives a master restart,
and a second master on the same etcd and prefix serves the same objects. A master whose etcd
does not answer does not start, and says which endpoint."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.etcd.replicas import Replica
from tests.etcd.server import EtcdServer
from tests.helpers import REPO_ROOT, MasterProcess, free_port, pod_manifest, sleeper


def on_etcd(master: MasterProcess, server: EtcdServer, prefix: str, endpoints: list[str]) -> None:
    """Append the ``[store]`` table to the master's config."""
    assert server.tls is not None
    tls = server.tls
    with master.config_path.open("a") as out:
        out.write(
            "\n[store]\n"
            'backend = "etcd"\n'
            f"endpoints = {json.dumps(endpoints)}\n"
            f'ca_file = "{tls.ca_file}"\n'
            f'cert_file = "{tls.cert_file}"\n'
            f'key_file = "{tls.key_file}"\n'
            f'prefix = "{prefix}"\n'
        )


def pods_in_sqlite(path: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return [r[0] for r in db.execute("SELECT key FROM kv WHERE key LIKE '/pods/%'")]


def test_masters_on_one_etcd_share_the_cluster_state(
    etcd: EtcdServer, etcd_prefix: str, tmp_path: Path
) -> None:
    prefix = "/" + etcd_prefix.strip("/").replace("[", "-").replace("]", "-") + "/"
    first = MasterProcess(tmp_path / "a")
    on_etcd(first, etcd, prefix, [etcd.endpoint])
    second = Replica(first, tmp_path / "b")  # the first's CA: a replica (cluster_ca.py)
    dead = f"https://127.0.0.1:{free_port()}"
    # The replica's [store] lists a dead endpoint first: it is skipped.
    conf = second.config_path.read_text()
    endpoints = f"endpoints = {json.dumps([etcd.endpoint])}"
    assert endpoints in conf
    second.config_path.write_text(
        conf.replace(endpoints, f"endpoints = {json.dumps([dead, etcd.endpoint])}")
    )
    manifest = tmp_path / "web.json"
    manifest.write_text(json.dumps(pod_manifest("web", [sleeper()])))
    first.start()
    try:
        applied = first.nodectl("apply", "-f", str(manifest))
        assert applied.returncode == 0, applied.stderr
        assert "web" in first.pods()
        assert pods_in_sqlite(tmp_path / "a" / "store.db") == []  # (init made it: unused)
        second.start()
        try:
            assert second.pods()["web"]["metadata"]["uid"] == first.pods()["web"]["metadata"]["uid"]
            deleted = second.nodectl("delete", "pod", "web")
            assert deleted.returncode == 0, deleted.stderr
            assert "web" not in first.pods()
        finally:
            second.stop()
        first.stop()
        first.start()  # state from etcd again
        applied = first.nodectl("apply", "-f", str(manifest))
        assert applied.returncode == 0, applied.stderr
        assert "web" in first.pods()
    finally:
        first.stop()


def test_a_master_whose_etcd_does_not_answer_does_not_start(
    etcd: EtcdServer, tmp_path: Path
) -> None:
    master = MasterProcess(tmp_path / "m")
    dead = f"https://127.0.0.1:{free_port()}"
    on_etcd(master, etcd, "/dead/", [dead])
    done = subprocess.run(
        [sys.executable, "-m", "agent.cli.node_master", "run", "--config", str(master.config_path)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "no etcd endpoint answers" in done.stderr + done.stdout
    assert dead.removeprefix("https://") in done.stderr + done.stdout
    assert "Traceback" not in done.stderr
