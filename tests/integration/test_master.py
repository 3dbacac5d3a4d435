"""The master, registration under each trust rule, and pods through the master — real master
and agent processes, real TLS/mTLS on loopback, the real Docker engine."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import pytest

from agent.pki.core import (
    PIN_PREFIX,
    cert_to_pem,
    create_ca,
    generate_key,
    issue,
    key_from_pem,
    key_to_pem,
    public_key_id,
)
from agent.pki.names import MASTERS_GROUP
from tests.helpers import (
    AgentProcess,
    MasterProcess,
    node_containers,
    node_ready,
    pod_manifest,
    sleeper,
    wait_for,
)

pytestmark = pytest.mark.docker

MakeAgent = Callable[..., AgentProcess]
MakeMaster = Callable[..., MasterProcess]


def join(
    make_agent: MakeAgent, master: MasterProcess, name: str | None = None, **config: Any
) -> AgentProcess:
    settings = {
        "master": master.url,
        "ca_cert_hash": [master.pin],
        "master_backoff_max_s": 1.0,
        **config,
    }
    return make_agent(name, **settings)


def https(
    master: MasterProcess,
    method: str,
    path: str,
    body: Any = None,
    cert: tuple[Path, Path] | None = None,
) -> tuple[int, Any]:
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


def health_says(agent: AgentProcess, text: str) -> bool:
    status, body = agent.get("/healthz")
    return status == 503 and text in body


def test_open_registration_and_pods_through_the_master(
    make_master: MakeMaster,
    make_agent: MakeAgent,
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    master = make_master().start()
    agent = join(make_agent, master).start()
    node = wait_for(lambda: node_ready(master, agent.node_name), what="node Ready")
    registration = node["status"]["registration"]
    assert registration["phase"] == "Approved" and registration["admittedBy"] == "open"
    assert node["status"]["capacity"]["pods"] == "110"
    assert (agent.state_dir / "pki" / "node.key").stat().st_mode & 0o777 == 0o600

    manifest = tmp_path / "pod.yaml"
    manifest.write_text(json.dumps(pod_manifest("via-master", [sleeper()])))
    done = master.nodectl("apply", "-f", str(manifest))
    assert done.returncode == 0, done.stderr

    def running() -> dict | None:
        pod = master.pods().get("via-master")
        return pod if pod and pod["status"].get("phase") == "Running" else None

    pod = wait_for(running, timeout_s=60, what="pod Running, reported to the master")
    assert pod["spec"]["nodeName"] == agent.node_name
    assert agent.pod("via-master") is not None
    table = master.nodectl("get", "pods", "-o", "wide").stdout
    assert "via-master" in table and agent.node_name in table

    assert master.nodectl("delete", "pod", "via-master").returncode == 0
    wait_for(
        lambda: not node_containers(docker_client, agent.node_name),
        timeout_s=60,
        what="pod removed from the node",
    )


def test_unschedulable_pod_stays_pending_with_reason(
    make_master: MakeMaster, make_agent: MakeAgent, tmp_path: Path
) -> None:
    master = make_master().start()
    agent = join(make_agent, master).start()
    wait_for(lambda: node_ready(master, agent.node_name), what="node Ready")
    huge = pod_manifest(
        "huge", [{"name": "c", "command": ["true"], "resources": {"requests": {"cpu": "500"}}}]
    )
    manifest = tmp_path / "huge.yaml"
    manifest.write_text(json.dumps(huge))
    assert master.nodectl("apply", "-f", str(manifest)).returncode == 0
    pod = master.pods()["huge"]
    assert pod["status"]["phase"] == "Pending"
    condition = pod["status"]["conditions"][0]
    assert condition["reason"] == "Unschedulable"
    assert "insufficient cpu" in condition["message"]


def test_approval_queue_approve_and_deny(make_master: MakeMaster, make_agent: MakeAgent) -> None:
    master = make_master()
    master.configure(trust=["approval"])
    master.start()
    waiting = join(make_agent, master).start(wait_ready=False)
    refused = join(make_agent, master).start(wait_ready=False)
    wait_for(
        lambda: (
            (master.node(waiting.node_name) or {})
            .get("status", {})
            .get("registration", {})
            .get("phase")
            == "Pending"
        ),
        what="pending",
    )
    wait_for(
        lambda: health_says(waiting, "pending approval"), what="agent says it waits for approval"
    )
    assert "Pending" in master.nodectl("get", "nodes").stdout

    assert master.nodectl("approve", waiting.node_name).returncode == 0
    node = wait_for(
        lambda: node_ready(master, waiting.node_name), timeout_s=40, what="approved node Ready"
    )
    assert node["status"]["registration"]["admittedBy"] == "approval"
    waiting.wait_healthy()

    wait_for(lambda: master.node(refused.node_name), what="second request queued")
    done = master.nodectl("deny", refused.node_name, "--reason", "not in the inventory")
    assert done.returncode == 0, done.stderr
    wait_for(
        lambda: health_says(refused, "not in the inventory"),
        timeout_s=40,
        what="denial reason on the node",
    )


def test_policy_switch_keeps_trusted_nodes(make_master: MakeMaster, make_agent: MakeAgent) -> None:
    master = make_master().start()
    old = join(make_agent, master).start()
    old.write_manifest("static.yaml", pod_manifest("static", [sleeper()]))
    wait_for(lambda: node_ready(master, old.node_name), what="node Ready under open")
    master.stop()
    master.configure(trust=["approval"])
    master.start()
    newcomer = join(make_agent, master).start(wait_ready=False)
    wait_for(
        lambda: (
            (master.node(newcomer.node_name) or {})
            .get("status", {})
            .get("registration", {})
            .get("phase")
            == "Pending"
        ),
        what="new node Pending",
    )
    node = wait_for(
        lambda: node_ready(master, old.node_name), timeout_s=30, what="old node still Ready"
    )
    assert node["status"]["registration"]["phase"] == "Approved"
    assert old.get("/healthz") == (200, "ok")


def test_sighup_reload_and_bad_policy_keeps_old(
    make_master: MakeMaster, make_agent: MakeAgent
) -> None:
    master = make_master()
    master.configure(trust=["ip-allowlist"], allowed_cidrs=["10.99.0.0/16"])
    master.start()
    outsider = join(make_agent, master).start(wait_ready=False)
    wait_for(
        lambda: health_says(outsider, "is not in an allowed CIDR"), what="refused by the allowlist"
    )
    master.config_path.write_text(master.config_path.read_text() + "bogus_key = 1\n")
    master.sighup()
    wait_for(
        lambda: "policy reload rejected" in master.log_path.read_text(), what="bad policy rejected"
    )
    master.configure(trust=["ip-allowlist"], allowed_cidrs=["127.0.0.0/8", "::1/128"])
    master.sighup()
    node = wait_for(
        lambda: node_ready(master, outsider.node_name), timeout_s=90, what="admitted after reload"
    )
    assert node["status"]["registration"]["admittedBy"] == "ip-allowlist"


def test_name_hijack_is_refused(make_master: MakeMaster, make_agent: MakeAgent) -> None:
    master = make_master().start()
    first = join(make_agent, master, "shared-name").start()
    wait_for(lambda: node_ready(master, "shared-name"), what="first node Ready")
    before = master.node("shared-name")
    thief = join(make_agent, master, "shared-name").start(wait_ready=False)  # its own key
    wait_for(lambda: health_says(thief, "409"), what="409 for a name bound to another key")
    after = master.node("shared-name")
    assert after is not None and before is not None
    # Nothing of the node changes (its key, certificate, phase); the request is remembered
    # beside it as evidence, the key only by its fingerprint (issue 14, item 4).
    registration = dict(after["status"]["registration"])
    waiting = registration.pop("replacement")
    assert registration == before["status"]["registration"]
    key = key_from_pem((thief.state_dir / "pki" / "node.key").read_bytes())
    fingerprint = PIN_PREFIX + public_key_id(key.public_key())
    assert waiting["fingerprint"] == fingerprint, waiting
    assert waiting["source"] == "127.0.0.1" and waiting["admittedBy"] == "open", waiting
    assert waiting["requestedAt"].endswith("Z"), waiting
    assert fingerprint != registration["keyFingerprint"]
    assert first.get("/healthz") == (200, "ok")
    described = master.nodectl("describe", "node", "shared-name")
    assert described.returncode == 0, described.stderr
    assert (
        f"key replacement waiting: {fingerprint} from 127.0.0.1 at {waiting['requestedAt']}"
        in described.stdout
    ), described.stdout
    assert "KeyReplacementRequested" in described.stdout
    # The administrator accepts the new key (a reinstalled machine), but only the key they saw.
    first.stop()
    done = master.nodectl("approve", "shared-name", "--force-replace")
    assert done.returncode == 2 and "needs --fingerprint" in done.stderr, done.stderr
    wrong = "sha256:" + "0" * 64
    done = master.nodectl("approve", "shared-name", "--force-replace", "--fingerprint", wrong)
    assert done.returncode != 0 and f"waits with key {fingerprint}" in done.stderr, done.stderr
    unchanged = master.node("shared-name")
    assert unchanged is not None
    assert unchanged["status"]["registration"] == after["status"]["registration"]
    done = master.nodectl("approve", "shared-name", "--force-replace", "--fingerprint", fingerprint)
    assert done.returncode == 0, done.stderr
    wait_for(lambda: thief.get("/healthz") == (200, "ok"), timeout_s=90, what="the new key joined")
    wait_for(lambda: node_ready(master, "shared-name"), what="node Ready with its new key")


def test_wrong_ca_pin_refuses_before_sending_anything(
    make_master: MakeMaster, make_agent: MakeAgent
) -> None:
    master = make_master().start()
    agent = make_agent(master=master.url, ca_cert_hash=["sha256:" + "0" * 64]).start(
        wait_ready=False
    )
    wait_for(
        lambda: health_says(agent, "does not match any pinned hash"), what="pin mismatch reported"
    )
    # The master admits every registration under its default open policy, so a registration
    # that had been sent would have created this node's record.
    assert agent.node_name not in master.nodes()
    assert not (agent.state_dir / "pki" / "node.crt").exists()


def test_node_restriction(make_master: MakeMaster, make_agent: MakeAgent, tmp_path: Path) -> None:
    master = make_master().start()
    a = join(make_agent, master).start()
    b = join(make_agent, master).start()
    wait_for(
        lambda: node_ready(master, a.node_name) and node_ready(master, b.node_name),
        what="both Ready",
    )
    manifest = tmp_path / "b.yaml"
    manifest.write_text(json.dumps(pod_manifest("on-b", [sleeper()], nodeName=b.node_name)))
    assert master.nodectl("apply", "-f", str(manifest)).returncode == 0
    cert_a = (a.state_dir / "pki" / "node.crt", a.state_dir / "pki" / "node.key")
    assert https(master, "GET", f"/v1/nodes/{a.node_name}/pods", cert=cert_a)[0] == 200
    status, body = https(master, "GET", f"/v1/nodes/{b.node_name}/pods", cert=cert_a)
    assert status == 403, body
    assert (
        https(
            master,
            "PUT",
            "/v1/namespaces/default/pods/on-b/status",
            {"phase": "Failed"},
            cert=cert_a,
        )[0]
        == 403
    )
    assert https(master, "GET", "/v1/nodes", cert=cert_a)[0] == 403
    assert https(master, "GET", "/v1/nodes")[0] == 401
    with urllib.request.urlopen(
        master.url + "/v1/ca",
        context=ssl.create_default_context(cafile=str(master.root / "pki" / "ca.crt")),
    ) as resp:
        assert resp.read().startswith(b"-----BEGIN CERTIFICATE-----")


def test_client_cert_rule_with_an_external_fleet_ca(
    make_master: MakeMaster, make_agent: MakeAgent, tmp_path: Path
) -> None:
    fleet_key, fleet_ca = create_ca("fleet provisioning CA")
    bundle = tmp_path / "fleet-ca.pem"
    bundle.write_bytes(cert_to_pem(fleet_ca))
    master = make_master()
    master.configure(
        trust=["client-cert"], client_ca_file=str(bundle), client_cert_name_must_match=True
    )
    master.start()
    from agent.pki.core import build_csr
    from agent.pki.names import NODE_CN_PREFIX, NODES_GROUP

    def credential(name: str, ca_key: Any, ca: Any) -> tuple[Path, Path]:
        key = generate_key()
        cert = issue(ca_key, ca, key.public_key(), common_name=name, groups=[], lifetime_s=3600)
        paths = (tmp_path / f"{name}.crt", tmp_path / f"{name}.key")
        paths[0].write_bytes(cert_to_pem(cert))
        paths[1].write_bytes(key_to_pem(key))
        return paths

    def register(name: str, cert: tuple[Path, Path] | None) -> tuple[int, Any]:
        csr = build_csr(generate_key(), NODE_CN_PREFIX + name, [NODES_GROUP], [])
        return https(
            master, "POST", "/v1/registrations", {"nodeName": name, "csr": csr.decode()}, cert=cert
        )

    # A real agent with a machine identity from the fleet CA joins through the rule.
    cert, key = credential("edge-agent", fleet_key, fleet_ca)
    agent = join(
        make_agent, master, "edge-agent", bootstrap_cert=str(cert), bootstrap_key=str(key)
    ).start()
    node = wait_for(lambda: node_ready(master, "edge-agent"), what="agent admitted by client-cert")
    assert node["status"]["registration"]["admittedBy"] == "client-cert"
    assert agent.get("/healthz") == (200, "ok")

    status, body = register("edge-1", credential("edge-1", fleet_key, fleet_ca))
    assert status == 200, body
    assert body["admittedBy"] == "client-cert"
    status, body = register("edge-2", None)
    assert status == 403 and "no client certificate" in body["error"]["message"]
    status, body = register("edge-3", credential("someone-else", fleet_key, fleet_ca))
    assert status == 403 and "not for node 'edge-3'" in body["error"]["message"]
    rogue_key, rogue_ca = create_ca("rogue")
    try:
        status, body = register("edge-4", credential("edge-4", rogue_key, rogue_ca))
    except (urllib.error.URLError, ConnectionError, ssl.SSLError):
        # Refused in the TLS handshake (not signed by a trusted CA); with TLS 1.3 the client
        # learns it on its first read, as a reset or an alert.
        status = 403
    assert status == 403
    # A fleet certificate never grants more than registration, whatever its subject says.
    admin_like = tmp_path / "admin-like"
    key = generate_key()
    cert = issue(
        fleet_key,
        fleet_ca,
        key.public_key(),
        common_name="admin",
        groups=[MASTERS_GROUP],
        lifetime_s=3600,
    )
    admin_like.with_suffix(".crt").write_bytes(cert_to_pem(cert))
    admin_like.with_suffix(".key").write_bytes(key_to_pem(key))
    status, _ = https(
        master,
        "GET",
        "/v1/nodes",
        cert=(admin_like.with_suffix(".crt"), admin_like.with_suffix(".key")),
    )
    assert status == 403


def test_certificate_rotation_keeps_heartbeats(
    make_master: MakeMaster, make_agent: MakeAgent
) -> None:
    master = make_master(node_cert_lifetime_s=8.0)
    master.start()
    agent = join(make_agent, master).start()
    wait_for(lambda: node_ready(master, agent.node_name), what="node Ready")
    cert_path = agent.state_dir / "pki" / "node.crt"
    first = cert_path.read_bytes()
    wait_for(lambda: cert_path.read_bytes() != first, timeout_s=30, what="certificate rotated")
    second = cert_path.read_bytes()
    wait_for(lambda: cert_path.read_bytes() != second, timeout_s=30, what="rotated again")
    assert node_ready(master, agent.node_name) is not None
    assert "node certificate rotated" in agent.log_tail(400)


def test_master_restart_does_not_mark_nodes_not_ready(
    make_master: MakeMaster, make_agent: MakeAgent
) -> None:
    master = make_master(lease_grace_s=6.0).start()
    agent = join(make_agent, master).start()
    wait_for(lambda: node_ready(master, agent.node_name), what="node Ready")
    master.stop()
    master.start()
    node = master.node(agent.node_name)
    assert node is not None
    status = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")["status"]
    assert status in ("True", "Unknown"), node
    wait_for(
        lambda: node_ready(master, agent.node_name),
        timeout_s=30,
        what="Ready again after the restart",
    )


def test_pod_watch_resumes_across_a_master_restart(
    make_master: MakeMaster,
    make_agent: MakeAgent,
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    master = make_master().start()
    agent = join(make_agent, master).start()
    wait_for(lambda: node_ready(master, agent.node_name), what="node Ready")

    def apply(name: str) -> None:
        path = tmp_path / f"{name}.yaml"
        path.write_text(json.dumps(pod_manifest(name, [sleeper()], nodeName=agent.node_name)))
        done = master.nodectl("apply", "-f", str(path))
        assert done.returncode == 0, done.stderr

    for i in range(5):
        apply(f"w{i}")

    def on_node() -> set[str]:
        return {
            c.labels["io.node-agent.pod.name"]
            for c in node_containers(docker_client, agent.node_name)
            if c.status == "running"
        }

    wait_for(
        lambda: on_node() == {f"w{i}" for i in range(5)},
        timeout_s=60,
        what="first five pods running",
    )
    master.stop()
    master.start()
    for name in ("w0", "w1"):
        assert master.nodectl("delete", "pod", name).returncode == 0
    for name in ("w5", "w6"):
        apply(name)
    desired = {"w2", "w3", "w4", "w5", "w6"}

    def exact() -> bool:
        containers = node_containers(docker_client, agent.node_name)
        pods = [c.labels["io.node-agent.pod.name"] for c in containers]
        return (
            set(pods) == desired
            and len(pods) == 2 * len(desired)
            and all(c.status == "running" for c in containers)
        )

    wait_for(exact, timeout_s=90, what="exactly the desired pods after the master restart")
    attempts = {
        c.labels["io.node-agent.attempt"] for c in node_containers(docker_client, agent.node_name)
    }
    assert attempts == {"0"}, "no container was started twice"


def test_scheduler_picks_the_node_that_fits(
    make_master: MakeMaster, make_agent: MakeAgent, tmp_path: Path
) -> None:
    master = make_master().start()
    small = join(make_agent, master, max_pods=1).start()
    large = join(make_agent, master).start()
    wait_for(
        lambda: node_ready(master, small.node_name) and node_ready(master, large.node_name),
        what="both Ready",
    )

    def apply(name: str, **spec: Any) -> None:
        path = tmp_path / f"{name}.yaml"
        path.write_text(json.dumps(pod_manifest(name, [sleeper()], **spec)))
        assert master.nodectl("apply", "-f", str(path)).returncode == 0

    apply("fills-small", nodeName=small.node_name)
    for i in range(3):
        apply(f"free-{i}")
    pods = master.pods()
    assert pods["fills-small"]["spec"]["nodeName"] == small.node_name
    assert {pods[f"free-{i}"]["spec"]["nodeName"] for i in range(3)} == {large.node_name}
    assert master.nodectl("cordon", large.node_name).returncode == 0
    apply("nowhere")
    message = master.pods()["nowhere"]["status"]["conditions"][0]["message"]
    assert "cordoned" in message and "too many pods" in message
    assert master.nodectl("uncordon", large.node_name).returncode == 0
    wait_for(
        lambda: master.pods()["nowhere"]["spec"].get("nodeName") == large.node_name,
        what="scheduled after uncordon",
    )
    wait_for(lambda: large.pod("nowhere") is not None, what="the node runs it")


def test_ip_allowlist_from_distinct_source_addresses(
    make_master: MakeMaster, make_agent: MakeAgent
) -> None:
    """Two agents on one host, connecting from different loopback source addresses: only the
    allowed one is admitted (the TCP peer address decides, not anything the node says)."""
    master = make_master()
    master.configure(trust=["ip-allowlist"], allowed_cidrs=["127.0.0.2/32"])
    master.start()
    allowed = join(make_agent, master, bind_source="127.0.0.2").start()
    refused = join(make_agent, master, bind_source="127.0.0.3").start(wait_ready=False)
    node = wait_for(lambda: node_ready(master, allowed.node_name), what="allowed source admitted")
    assert node["status"]["registration"]["admittedBy"] == "ip-allowlist"
    wait_for(
        lambda: health_says(refused, "source 127.0.0.3 is not in an allowed CIDR"),
        what="other source refused",
    )
    assert refused.node_name not in master.nodes()


def test_node_status_follows_the_node(make_master: MakeMaster, make_agent: MakeAgent) -> None:
    master = make_master().start()
    agent = join(make_agent, master).start()
    wait_for(lambda: node_ready(master, agent.node_name), what="node Ready")
    assert master.node(agent.node_name)["status"]["capacity"]["pods"] == "110"
    agent.stop()
    text = agent.config_path.read_text().replace("\\nmax_pods = 110", "")
    agent.config_path.write_text(text + "max_pods = 7\n")
    agent.start()
    wait_for(
        lambda: master.node(agent.node_name)["status"]["capacity"]["pods"] == "7",
        what="new capacity reported",
    )
    node = master.node(agent.node_name)
    assert node is not None
    assert node["status"]["registration"]["phase"] == "Approved"
    image_fs = node["status"]["imageFs"]
    assert 0 < image_fs["availableBytes"] < image_fs["capacityBytes"]


def test_static_pods_are_mirrored_read_only(
    make_master: MakeMaster, make_agent: MakeAgent, tmp_path: Path
) -> None:
    """Mirror pods are named ``<name>-<node>``, cannot block an administrator's pod of that
    name, and go with their node (issue 14, item 7)."""
    master = make_master().start()
    agent = join(make_agent, master)
    web_file = agent.write_manifest("static.yaml", pod_manifest("static-web", [sleeper()]))
    agent.write_manifest("keep.yaml", pod_manifest("static-keep", [sleeper()]))
    agent.start()
    web, keep = (f"{name}-{agent.node_name}" for name in ("static-web", "static-keep"))

    def running(name: str) -> dict[str, Any] | None:
        pod = master.pods().get(name)
        return pod if pod and pod["status"].get("phase") == "Running" else None

    pod = wait_for(lambda: running(web), timeout_s=60, what="mirror pod Running on the master")
    wait_for(lambda: running(keep), timeout_s=60, what="second mirror pod Running")
    assert pod["metadata"]["annotations"]["node-agent.io/mirror"] == "true"
    assert pod["spec"]["nodeName"] == agent.node_name
    assert "static-web" not in master.pods()  # only under its mirror name
    done = master.nodectl("delete", "pod", web)
    assert done.returncode != 0 and "mirrors a static pod" in done.stderr

    # The API's name comes first: an administrator's pod of the mirror's name replaces it.
    clash = tmp_path / "clash.yaml"
    clash.write_text(json.dumps(pod_manifest(web, [sleeper()])))
    done = master.nodectl("apply", "-f", str(clash))
    assert done.returncode == 0, done.stderr
    applied = wait_for(lambda: running(web), timeout_s=60, what="the applied pod Running")
    assert "node-agent.io/mirror" not in (applied["metadata"].get("annotations") or {})
    described = master.nodectl("describe", "pod", web)
    assert "MirrorReplaced" in described.stdout, described.stdout
    static = agent.pod("static-web")
    assert static is not None and static["status"]["phase"] == "Running"  # untouched

    # The node drops its static pod: its mirror delete cannot take the applied pod with it.
    web_file.unlink()

    def refused_delete() -> bool:
        lines = [json.loads(line) for line in agent.log_path.read_text().splitlines() if line]
        return any(
            e.get("msg") == "mirror pod refused by the master" and e.get("call") == "DELETE"
            for e in lines
        )

    wait_for(refused_delete, timeout_s=60, what="the node's mirror delete refused")
    survivor = master.pods().get(web)
    assert survivor is not None and survivor["metadata"]["uid"] == applied["metadata"]["uid"]

    # Deleting the node removes its mirrors.
    agent.stop()
    done = master.nodectl("delete", "node", agent.node_name)
    assert done.returncode == 0, done.stderr
    assert keep not in master.pods()


def test_node_api_serves_admins_only(
    make_master: MakeMaster, make_agent: MakeAgent, tmp_path: Path
) -> None:
    import tomllib

    master = make_master().start()
    a = join(make_agent, master).start()
    b = join(make_agent, master).start()
    wait_for(
        lambda: node_ready(master, a.node_name) and node_ready(master, b.node_name),
        what="both Ready",
    )
    admin = tomllib.loads(master.admin_conf.read_text())
    admin_cert, admin_key = tmp_path / "admin.crt", tmp_path / "admin.key"
    admin_cert.write_text(admin["client_cert"])
    admin_key.write_text(admin["client_key"])
    api_addr = json.loads(
        next(
            line.split("=", 1)[1]
            for line in a.config_path.read_text().splitlines()
            if line.startswith("api_addr")
        )
    )

    def get(cert: tuple[Path, Path] | None) -> tuple[int, str, str]:
        ctx = ssl.create_default_context(cafile=str(master.root / "pki" / "ca.crt"))
        ctx.check_hostname = False  # the node certificate names the node's addresses, not 127.0.0.1
        if cert is not None:
            ctx.load_cert_chain(*cert)
        with urllib.request.urlopen(f"https://{api_addr}/v1/pods", context=ctx, timeout=10) as resp:
            peer = resp.fp.raw._sock.getpeercert()  # type: ignore[attr-defined]
            subject = dict(item[0] for item in peer["subject"])
            return resp.status, resp.read().decode(), subject["commonName"]

    status, body, served_by = wait_for(
        lambda: get((admin_cert, admin_key)), what="node API answers the admin"
    )
    assert status == 200 and json.loads(body)["kind"] == "PodList"
    assert served_by == f"system:node:{a.node_name}"
    with pytest.raises(urllib.error.HTTPError) as info:
        get((b.state_dir / "pki" / "node.crt", b.state_dir / "pki" / "node.key"))
    assert info.value.code == 403
    with pytest.raises((urllib.error.URLError, ConnectionError, ssl.SSLError)):
        get(None)  # no client certificate: refused in the handshake


def test_describe_shows_recent_events(
    make_master: MakeMaster, make_agent: MakeAgent, tmp_path: Path
) -> None:
    master = make_master()
    master.configure(trust=["approval"])
    master.start()
    agent = join(make_agent, master).start(wait_ready=False)
    wait_for(lambda: master.node(agent.node_name), what="request queued")
    assert master.nodectl("approve", agent.node_name).returncode == 0
    out = master.nodectl("describe", "node", agent.node_name).stdout
    assert "RegistrationQueued" in out and "Approved" in out
    manifest = tmp_path / "big.yaml"
    manifest.write_text(
        json.dumps(
            pod_manifest(
                "big",
                [
                    {
                        "name": "c",
                        "command": ["true"],
                        "resources": {"requests": {"memory": "100Ti"}},
                    }
                ],
            )
        )
    )
    assert master.nodectl("apply", "-f", str(manifest)).returncode == 0
    out = master.nodectl("describe", "pod", "big").stdout
    assert "FailedScheduling" in out and "nodes are available" in out
