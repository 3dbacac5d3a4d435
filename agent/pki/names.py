"""The identity names of the cluster's certificates (Kubernetes' conventions): who a subject
commonName or organization says a peer is, and the master's mark and its check. No
cryptography import, so clients that only compare names (nodectl) start without it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from agent.errors import NotTheMasterError

NODE_CN_PREFIX = "system:node:"
NODES_GROUP = "system:nodes"
MASTERS_GROUP = "system:masters"
PROXIES_GROUP = "system:node-proxies"  # the master's streaming proxy, acting for a user
VIEWERS_GROUP = "system:viewers"  # read-only users: nodes, pods, events, logs; no exec
USER_GROUPS = (MASTERS_GROUP, VIEWERS_GROUP)  # what `node-master issue-user` may grant
# The master's mark: a URI SAN on its serving certificate, which no other certificate the
# cluster CA signs may carry (``agent.pki.core.issue`` refuses URI SANs unless asked for the
# master's). Agents and nodectl refuse a server without it (``agent.aio.tls``), so a node's
# certificate, valid for server use under the same CA, cannot pass for the master.
MASTER_URI = "urn:node-agent:master"


def not_the_master(server: str) -> str:
    """What is wrong when the server at ``server`` (a URL) lacks the master's mark."""
    return (
        f"the server at {server} presents a certificate without the master mark "
        f"({MASTER_URI}): it is not the master (a node certificate?); nothing was sent to it"
    )


def master_mark_check(server: str) -> Callable[[Mapping[str, Any]], None]:
    """The check (``agent.aio.tls.with_peer_check``) every agent and nodectl connection to the
    master passes: the server's verified certificate carries ``MASTER_URI``, else
    :class:`NotTheMasterError` naming ``server``."""

    def check(peer: Mapping[str, Any]) -> None:
        if ("URI", MASTER_URI) not in peer.get("subjectAltName", ()):
            raise NotTheMasterError(not_the_master(server))

    return check
