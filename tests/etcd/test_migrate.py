"""``node-master migrate --from sqlite:PATH --to etcd:ENDPOINTS`` (issue 19 item 6) with real
processes: a master's pods and join tokens (its init token among them) copied from its
store.db into the test etcd; the same master, its config given the ``[store]`` table, serves
them from etcd (same uids, same token ids); a second migration into the same prefix is refused.
(Bad arguments: tests/unit/cli/test_node_master_migrate.py.)"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.etcd.server import EtcdServer
from tests.etcd.test_master_on_etcd import on_etcd
from tests.helpers import REPO_ROOT, MasterProcess, pod_manifest, sleeper


def node_master(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli.node_master", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
        check=False,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
    )


def token_ids(master: MasterProcess) -> list[str]:
    done = node_master("token", "list", "-o", "json", "--data-dir", str(master.root))
    assert done.returncode == 0, done.stderr
    return sorted(item["id"] for item in json.loads(done.stdout))


def test_a_stopped_masters_state_moves_to_etcd(etcd: EtcdServer, tmp_path: Path) -> None:
    assert etcd.tls is not None
    master = MasterProcess(tmp_path / "m")
    manifest = tmp_path / "web.json"
    manifest.write_text(json.dumps(pod_manifest("web", [sleeper()])))
    master.start()
    try:
        assert master.nodectl("apply", "-f", str(manifest)).returncode == 0
        before_pods = {name: p["metadata"]["uid"] for name, p in master.pods().items()}
        before_tokens = token_ids(master)
    finally:
        master.stop()
    assert before_pods and before_tokens  # the pod, and init's join token
    tls = [
        *("--ca-file", str(etcd.tls.ca_file)),
        *("--cert-file", str(etcd.tls.cert_file)),
        *("--key-file", str(etcd.tls.key_file)),
    ]
    migrate = [
        "migrate",
        "--from",
        f"sqlite:{master.root / 'store.db'}",
        "--to",
        f"etcd:{etcd.endpoint}",
        *tls,
        "--prefix",
        "/migrated/",
    ]
    done = node_master(*migrate)
    assert done.returncode == 0, done.stderr
    # the pod, the init token and the cluster CA record (agent.master.cluster_ca)
    assert "copied 3 keys (1 cluster, 1 pods, 1 tokens)" in done.stdout, done.stdout
    assert 'backend = "etcd"' in done.stdout and 'prefix = "/migrated/"' in done.stdout
    on_etcd(master, etcd, "/migrated/", [etcd.endpoint])
    (master.root / "store.db").rename(master.root / "store.db.migrated")  # etcd's state only
    master.start()
    try:
        assert {name: p["metadata"]["uid"] for name, p in master.pods().items()} == before_pods
        assert token_ids(master) == before_tokens
    finally:
        master.stop()
    (master.root / "store.db.migrated").rename(master.root / "store.db")
    again = node_master(*migrate)
    assert again.returncode == 1
    # (3 copied, and whatever the master wrote since: its records of its own run)
    assert re.search(r"already holds \d+ keys", again.stderr), again.stderr
    assert "nothing copied" in again.stderr
    assert "Traceback" not in again.stderr
