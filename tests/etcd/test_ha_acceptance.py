"""Issue 19's acceptance for several masters on etcd, with real processes on loopback: the test
etcd, master processes (replicas of one data dir: one CA), a real agent running a pod on the
machine's Docker Engine.

* The leader killed with SIGKILL: another master leads once the dead one's lease expires (the
  figure, from the kill, is printed against the lease's TTL), the agent on it moves to a
  survivor, and its pod's container is the same container with the same restart count.
* etcd stopped for ``ETCD_OUTAGE_S`` (30 s, the acceptance's own duration; the environment
  variable of that name changes it) and started again: every master answers 503 on /readyz
  throughout, the agent keeps its pod, and its pod watch resumes where it was: the changes made
  after the outage reach it through the watch (no relist), each once.
* One master partitioned from etcd (its road to etcd is a proxy the test cuts) but reachable by
  the agent: it stops leading, refuses the agent's renewals (the agent moves on), judges no node
  NotReady (its view of the node is Unknown, reason MasterOutOfTouch, where it used to say
  False) and evicts nothing, with an eviction time-out short enough that a wrong judgement
  would have evicted within the test.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from agent.node.masterlink.endpoints import preference
from tests.etcd.proxy import ThreadedProxy
from tests.etcd.server import EtcdServer
from tests.etcd.test_agent_failover import agent_log
from tests.etcd.test_master_on_etcd import on_etcd
from tests.helpers import (
    REPO_ROOT,
    AgentDied,
    AgentProcess,
    MasterProcess,
    ensure_test_image,
    node_containers,
    pod_manifest,
    remove_node_containers,
    sleeper,
    wait_for,
)

pytestmark = pytest.mark.docker

LEASE_TTL_S = 3  # the leader's lease in these tests (the default is 10)
MASTER_RUN = (sys.executable, "-m", "agent.cli.node_master", "run")
ETCD_OUTAGE_S = float(os.environ.get("ETCD_OUTAGE_S", "30"))


def prefix_of(etcd_prefix: str) -> str:
    return "/" + etcd_prefix.strip("/").replace("[", "-").replace("]", "-") + "/"


def make_masters(
    root: Path, etcd: EtcdServer, prefix: str, n: int, **settings: Any
) -> list[MasterProcess]:
    """``n`` masters from one data dir (the documented replica procedure: the first's pki/ and
    admin credentials copied, ``listen`` changed), each on the test etcd."""
    with concurrent.futures.ThreadPoolExecutor(n) as pool:  # each runs `node-master init`
        masters = list(pool.map(lambda i: MasterProcess(root / f"m{i}", **settings), range(n)))
    first = masters[0]
    for other in masters[1:]:
        shutil.rmtree(other.root / "pki")
        shutil.copytree(first.root / "pki", other.root / "pki")
        conf = first.admin_conf.read_text().replace(first.url, other.url)
        other.admin_conf.write_text(conf)
        other.admin_conf.chmod(0o600)
        other.pin = first.pin
    for master in masters:
        on_etcd(master, etcd, prefix, [etcd.endpoint])
        with master.config_path.open("a") as out:  # [store] is the file's last table
            out.write(f"leader_lease_ttl_s = {LEASE_TTL_S}\n")
    return masters


def admin_context(master: MasterProcess) -> ssl.SSLContext:
    """TLS as the administrator of admin.conf (its certificate written beside it once): the
    loops below ask often, a nodectl process a look costs seconds on a loaded machine."""
    cert, key = master.root / "admin-test.crt", master.root / "admin-test.key"
    if not cert.exists():
        conf = tomllib.loads(master.admin_conf.read_text())
        cert.write_text(conf["client_cert"])
        key.touch(mode=0o600)
        key.write_text(conf["client_key"])
    ctx = ssl.create_default_context(cafile=str(master.root / "pki" / "ca.crt"))
    ctx.load_cert_chain(cert, key)
    return ctx


def admin_get(master: MasterProcess, path: str, method: str = "GET", body: object = None) -> Any:
    """The JSON of an administrator's request (an error status raises)."""
    request = urllib.request.Request(
        master.url + path,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, context=admin_context(master), timeout=10) as r:
        return json.loads(r.read())


def start_all(masters: list[MasterProcess]) -> None:
    """Start the masters together and wait until each answers /healthz (MasterProcess.start
    one by one waits on a nodectl process per look: seconds each on a loaded machine)."""
    for master in masters:
        with master.log_path.open("ab") as log:
            master.proc = subprocess.Popen(
                [*MASTER_RUN, "--config", str(master.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
                env=dict(os.environ, PYTHONPATH=str(REPO_ROOT), NODE_AGENT_BLOCKBUSTER="1"),
            )

    def serving() -> bool:
        for master in masters:
            assert master.proc is not None
            if master.proc.poll() is not None:
                raise AgentDied(f"master exited: {master.log_path.read_text()[-3000:]}")
        return all(anonymous_get(m, "/healthz")[0] == 200 for m in masters)

    wait_for(serving, what="masters serving")


def anonymous_get(master: MasterProcess, path: str) -> tuple[int, str]:
    """(status, body) of an anonymous GET; (0, '') when the master does not answer."""
    ctx = ssl.create_default_context(cafile=str(master.root / "pki" / "ca.crt"))
    try:
        with urllib.request.urlopen(master.url + path, context=ctx, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def leads(master: MasterProcess) -> bool:
    status, body = anonymous_get(master, "/metrics")
    return status == 200 and "\nnode_master_leader 1" in "\n" + body


def ready(master: MasterProcess) -> tuple[int, str]:
    return anonymous_get(master, "/readyz")


def node_named_for(first: MasterProcess, masters: list[MasterProcess], stem: str) -> str:
    """A node name whose rendezvous ranking puts ``first`` first."""
    urls = tuple(m.url for m in masters)
    for i in range(1000):
        name = f"{stem}-{uuid.uuid4().hex[:6]}-{i}"
        if preference(urls, name)[0] == first.url:
            return name
    raise AssertionError("no name ranks the first master first")


def node_of(master: MasterProcess, node: str) -> dict[str, Any]:
    got: dict[str, Any] = admin_get(master, f"/v1/nodes/{node}")
    return got


def readiness(master: MasterProcess, node: str) -> tuple[str, str]:
    cond = next(c for c in node_of(master, node)["status"]["conditions"] if c["type"] == "Ready")
    return cond["status"], cond["reason"]


def renewing_at(master: MasterProcess, node: str) -> bool:
    """The node Ready in ``master``'s view and talking to it."""
    got = node_of(master, node)
    return readiness(master, node)[0] == "True" and got["status"]["master"] == master.url


def pod_of(master: MasterProcess, name: str) -> dict[str, Any]:
    got: dict[str, Any] = admin_get(master, f"/v1/namespaces/default/pods/{name}")
    return got


def container(master: MasterProcess, name: str) -> tuple[str, int] | None:
    """The pod's container ID and restart count (None until it runs)."""
    statuses = pod_of(master, name).get("status", {}).get("containerStatuses", [])
    if not statuses or "running" not in statuses[0].get("state", {}):
        return None
    return statuses[0]["containerID"], statuses[0]["restartCount"]


def running_pod(master: MasterProcess, name: str) -> tuple[str, int]:
    admin_get(master, "/v1/pods", "POST", pod_manifest(name, [sleeper()], hostNetwork=True))
    return wait_for(lambda: container(master, name), what=f"{name} running", timeout_s=60)


@pytest.fixture
def engine() -> Iterator[docker.DockerClient]:
    client = docker.from_env()
    ensure_test_image(client)
    yield client
    client.close()


def stop_all(agent: AgentProcess | None, masters: list[MasterProcess]) -> None:
    if agent is not None and agent.proc is not None and agent.proc.poll() is None:
        agent.stop()
    running = [m.proc for m in masters if m.proc is not None and m.proc.poll() is None]
    for proc in running:  # together: each takes its shutdown grace
        proc.send_signal(signal.SIGTERM)
    for proc in running:
        proc.wait(timeout=20)


def assert_clean(agent: AgentProcess, masters: list[MasterProcess]) -> None:
    for path in [agent.log_path, *(m.log_path for m in masters)]:
        text = path.read_text()
        for marker in ("BlockingError", "task died unexpectedly", "Traceback"):
            assert marker not in text, f"{path}: {text[-3000:]}"


def test_the_leader_killed_another_leads_and_its_agent_fails_over(
    etcd: EtcdServer, etcd_prefix: str, tmp_path: Path, engine: docker.DockerClient
) -> None:
    masters = make_masters(tmp_path, etcd, prefix_of(etcd_prefix), 3)
    agent: AgentProcess | None = None
    try:
        start_all(masters)
        leader = wait_for(
            lambda: next((m for m in masters if leads(m)), None), what="a master leading"
        )
        wait_for(lambda: all(ready(m)[0] == 200 for m in masters), what="masters ready")
        assert [leads(m) for m in masters].count(True) <= 1  # never two at once
        survivors = [m for m in masters if m is not leader]
        node = node_named_for(leader, masters, "ha-kill")  # the agent starts on the leader
        agent = AgentProcess(
            tmp_path / "node", node, master=[m.url for m in masters], ca_cert_hash=[leader.pin]
        )
        agent.start()
        wait_for(lambda: renewing_at(leader, node), what="node Ready on the leader")
        running = running_pod(leader, "web")

        assert leader.proc is not None
        leader.proc.send_signal(signal.SIGKILL)
        leader.proc.wait(timeout=20)
        killed_at = time.monotonic()
        new = wait_for(
            lambda: next((m for m in survivors if leads(m)), None),
            what="a survivor leading",
            timeout_s=60,
        )
        took = time.monotonic() - killed_at
        print(f"leader killed: another led after {took:.1f} s (lease TTL {LEASE_TTL_S} s)")
        assert [leads(m) for m in survivors].count(True) <= 1  # never two at once

        def on_a_survivor() -> bool:
            return any(renewing_at(m, node) for m in survivors)

        wait_for(on_a_survivor, what="the node renewing on a survivor", timeout_s=60)
        print(
            f"leader killed: the node renewed on a survivor {time.monotonic() - killed_at:.1f} s after"
        )
        wait_for(lambda: container(new, "web"), what="web's status on the new leader")
        assert container(new, "web") == running  # same container, same restart count
        assert readiness(new, node) == ("True", "NodeLeaseCurrent")
        registered = [r for r in agent_log(agent) if r.get("msg") == "registered with the master"]
        assert len(registered) == 1
        stop_all(agent, survivors)
        assert_clean(agent, survivors)
    finally:
        stop_all(agent, masters)
        if agent is not None:
            remove_node_containers(engine, agent.node_name)


def test_an_etcd_outage_makes_masters_unready_and_agents_keep_their_pods_and_watch(
    etcd: EtcdServer, etcd_prefix: str, tmp_path: Path, engine: docker.DockerClient
) -> None:
    masters = make_masters(tmp_path, etcd, prefix_of(etcd_prefix), 2)
    node = node_named_for(masters[0], masters, "ha-outage")
    agent = AgentProcess(
        tmp_path / "node",
        node,
        master=[m.url for m in masters],
        ca_cert_hash=[masters[0].pin],
        master_backoff_max_s=3.0,  # back within seconds of etcd (default: 30 s at most)
    )
    try:
        start_all(masters)
        agent.start()
        wait_for(lambda: renewing_at(masters[0], node), what="node Ready")
        running = running_pod(masters[0], "web")

        etcd.stop()
        stopped_at = time.monotonic()
        try:
            seen_unready: set[int] = set()
            # The outage lasts ETCD_OUTAGE_S; all along, the masters live, the pod's container
            # stays, and every master comes to answer 503 (and then keeps answering it).
            while time.monotonic() - stopped_at < ETCD_OUTAGE_S:
                for i, master in enumerate(masters):
                    assert master.proc is not None and master.proc.poll() is None
                    status, body = ready(master)
                    if i in seen_unready:
                        assert status == 503, (status, body)
                    elif status == 503:
                        assert body.startswith("not ready: "), body
                        seen_unready.add(i)
                        print(
                            f"outage: master {i} not ready after "
                            f"{time.monotonic() - stopped_at:.1f} s: {body.strip()}"
                        )
                assert [c.id for c in node_containers(engine, node) if c.status == "running"]
                time.sleep(1.0)  # the outage's own pace: one look a second
            assert seen_unready == {0, 1}, "a master stayed ready without etcd"
            containers = {c.id for c in node_containers(engine, node)}
        finally:
            etcd.start()
        wait_for(lambda: all(ready(m)[0] == 200 for m in masters), what="ready again", timeout_s=60)
        print(f"outage: ready again {time.monotonic() - stopped_at:.1f} s after etcd stopped")
        assert containers == {c.id for c in node_containers(engine, node)}

        # The watch resumes where it was: two changes made now reach the agent through it.
        two = running_pod(masters[1], "two")
        admin_get(masters[1], "/v1/namespaces/default/pods/web", "DELETE")
        wait_for(
            lambda: (
                not any(
                    c.status == "running" and c.id == running[0].split("//")[-1]
                    for c in node_containers(engine, node)
                )
            ),
            what="web stopped",
        )
        assert container(masters[1], "two") == two and two[1] == 0
        names = [c.name for c in node_containers(engine, node) if c.name.startswith("main_two")]
        assert len(names) == 1, names  # created once: not re-applied by a duplicate event
        log = agent_log(agent)
        assert not [r for r in log if "relisting" in r.get("msg", "")]
        resumed = [r for r in log if r.get("msg") == "resuming the pod watch"]
        assert resumed, "the pod watch never resumed"
        stop_all(agent, masters)
        assert_clean(agent, masters)
    finally:
        stop_all(agent, masters)
        remove_node_containers(engine, node)


def test_a_master_partitioned_from_etcd_judges_no_node_not_ready_and_evicts_nothing(
    etcd: EtcdServer, etcd_prefix: str, tmp_path: Path, engine: docker.DockerClient
) -> None:
    # An eviction time-out of 2 s: a NotReady judgement anywhere would evict within the test.
    masters = make_masters(
        tmp_path,
        etcd,
        prefix_of(etcd_prefix),
        2,
        lease_grace_s=6.0,
        pod_eviction_timeout_s=2.0,
    )
    cut, other = masters
    proxy = ThreadedProxy(etcd.client_port).start()
    text = cut.config_path.read_text().replace(etcd.endpoint, f"https://127.0.0.1:{proxy.port}")
    cut.config_path.write_text(text)
    node = node_named_for(cut, masters, "ha-cut")
    agent = AgentProcess(
        tmp_path / "node", node, master=[m.url for m in masters], ca_cert_hash=[cut.pin]
    )
    try:
        start_all([cut])
        wait_for(lambda: leads(cut), what="the master behind the proxy leading")
        start_all([other])
        agent.start()
        wait_for(lambda: renewing_at(cut, node), what="node Ready on the master behind the proxy")
        running = running_pod(cut, "web")
        bound = pod_of(other, "web")["spec"]["nodeName"]
        assert bound == node

        proxy.cut()
        cut_at = time.monotonic()
        wait_for(lambda: leads(other), what="the other master leading", timeout_s=60)
        print(f"partition: the other master led {time.monotonic() - cut_at:.1f} s after the cut")
        assert not leads(cut)
        assert ready(cut)[0] == 503

        views: list[tuple[str, str]] = []

        others: list[tuple[str, str]] = []

        def cut_sees_out_of_touch() -> bool:
            views.append(readiness(cut, node))
            others.append(readiness(other, node))
            return views[-1] == ("Unknown", "MasterOutOfTouch")

        # Past the grace since the node's last renewal there: where it would have said False.
        wait_for(cut_sees_out_of_touch, what="the cut master's view of the node", timeout_s=60)
        print(f"partition: the cut master's view of the node went {sorted(set(views))}")
        assert all(status != "False" for status, _ in views), views
        assert all(status != "False" for status, _ in others), others  # nor did the other
        wait_for(
            lambda: renewing_at(other, node),
            what="the node renewing on the other master",
            timeout_s=60,
        )
        # Eviction (time-out 2 s, checked every second) of a node judged NotReady anywhere
        # would move the pod within 3 s: look for 4.
        until = time.monotonic() + 4.0
        while time.monotonic() < until:
            view = readiness(cut, node)
            assert view is not None and view[0] != "False", view
            pod = pod_of(other, "web")
            assert pod["spec"]["nodeName"] == node, pod
            time.sleep(0.5)  # an observation window with a look every half second
        assert container(other, "web") == running

        proxy.mend()
        wait_for(lambda: ready(cut)[0] == 200, what="the cut master ready again", timeout_s=60)
        assert not leads(cut)  # back in touch, it follows the leader of meanwhile
        assert container(cut, "web") == running
        stop_all(agent, masters)
        assert_clean(agent, masters)
    finally:
        stop_all(agent, masters)
        proxy.close()
        remove_node_containers(engine, node)
