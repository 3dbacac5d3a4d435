"""Issue 19 item 5 with real processes on the test etcd: a replica made by the documented
procedure (a copy of the first master's data dir, only ``listen`` changed) starts and serves
the cluster's state; a master with a CA of its own (its own ``node-master init``) on the same
store refuses to start, naming both CAs' fingerprints, with a non-zero exit and no traceback.
(The record and the comparison: tests/unit/master/test_cluster_ca.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from agent.master.cluster_ca import fingerprint
from agent.pki.core import certs_from_pem
from tests.etcd.replicas import Replica
from tests.etcd.server import EtcdServer
from tests.etcd.test_master_on_etcd import on_etcd
from tests.helpers import REPO_ROOT, MasterProcess, pod_manifest, sleeper

EXIT_CONFIG = 2  # node-master's status for a configuration it cannot start with


def ca_fingerprint(master: MasterProcess) -> str:
    return fingerprint(certs_from_pem((master.root / "pki" / "ca.crt").read_bytes())[0])


def test_a_replica_from_a_copy_serves_and_a_master_with_its_own_ca_is_refused(
    etcd: EtcdServer, etcd_prefix: str, tmp_path: Path
) -> None:
    prefix = "/" + etcd_prefix.strip("/").replace("[", "-").replace("]", "-") + "/"
    first = MasterProcess(tmp_path / "a")
    on_etcd(first, etcd, prefix, [etcd.endpoint])
    replica = Replica(first, tmp_path / "b")
    stranger = MasterProcess(tmp_path / "c")  # `node-master init` of its own: another CA
    on_etcd(stranger, etcd, prefix, [etcd.endpoint])
    manifest = tmp_path / "web.json"
    manifest.write_text(json.dumps(pod_manifest("web", [sleeper()])))
    first.start()  # the first on this store: records its CA
    try:
        applied = first.nodectl("apply", "-f", str(manifest))
        assert applied.returncode == 0, applied.stderr
        replica.start()
        try:
            assert (
                replica.pods()["web"]["metadata"]["uid"] == first.pods()["web"]["metadata"]["uid"]
            )
        finally:
            replica.stop()
        refused = subprocess.run(
            [sys.executable, "-m", "agent.cli.node_master", "run", "--config",
             str(stranger.config_path)],
            capture_output=True, text=True, cwd=REPO_ROOT, timeout=60, check=False,
        )  # fmt: skip
    finally:
        first.stop()
    output = refused.stdout + refused.stderr
    assert refused.returncode == EXIT_CONFIG, output
    assert "master cannot start" in output, output
    assert f"this master's CA ({ca_fingerprint(stranger)}) is not the cluster's" in output
    assert f"the store records {ca_fingerprint(first)}" in output
    assert "Traceback" not in output and "node master serving" not in output
