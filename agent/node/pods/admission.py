"""Node-side admission: what this node's configuration lets its pods use of the host.

The agent's config may narrow what the manifest subset allows (Nomad's docker driver has such
a policy; kubelet leaves it to the API server): hostPath volumes only under
``allowed_host_paths``, ``hostNetwork`` only with ``allow_host_network``, ``hostPort`` only
with ``allow_host_ports``. The pod manager asks :class:`AdmissionPolicy` about every pod from
every source (the master, static files, the checkpoint at start) before it runs it; a refused
pod is not started and shows ``phase: Failed, reason: Forbidden`` with a message naming the
rule. The default admits everything the subset allows.

Prefixes match whole path segments of the normalised path: ``/srv`` admits ``/srv`` and
``/srv/data``, not ``/srv-evil``, and ``/srv/../etc`` is ``/etc``. The match is lexical:
symbolic links are resolved by Docker when it mounts, so a link under an allowed prefix that
points elsewhere is trusted to whoever can write that directory.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Protocol

from agent.types import Pod

REASON_FORBIDDEN = "Forbidden"
# A rejection message quotes a path at most this long (the manifest's own limits are larger).
QUOTED_PATH_MAX_CHARS = 100


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a pod may not run on this node: ``rule`` is the config key that refuses it."""

    rule: str
    message: str
    reason: str = REASON_FORBIDDEN


class Admission(Protocol):
    def check(self, pod: Pod) -> Rejection | None:
        """None when the pod may run here; otherwise the first rule that refuses it."""
        ...


def normalise_host_path(path: str) -> str:
    """``path`` as an absolute path with ``.``, ``..`` and repeated slashes resolved (a
    leading ``//``, which ``posixpath.normpath`` keeps, included)."""
    return "/" + posixpath.normpath("/" + path).lstrip("/")


def _under(path: str, prefix: str) -> bool:
    return prefix in ("/", path) or path.startswith(prefix + "/")


def _quote(path: str) -> str:
    if len(path) <= QUOTED_PATH_MAX_CHARS:
        return path
    return path[:QUOTED_PATH_MAX_CHARS] + "…"


@dataclass(frozen=True, slots=True)
class AdmissionPolicy:
    """The node's policy; ``allowed_host_paths`` None admits any hostPath."""

    allowed_host_paths: tuple[str, ...] | None = None
    allow_host_network: bool = True
    allow_host_ports: bool = True

    def __post_init__(self) -> None:
        if self.allowed_host_paths is not None:
            normalised = tuple(normalise_host_path(p) for p in self.allowed_host_paths)
            object.__setattr__(self, "allowed_host_paths", normalised)

    def check(self, pod: Pod) -> Rejection | None:
        spec = pod.spec
        if spec.host_network and not self.allow_host_network:
            return Rejection(
                "allow_host_network", "hostNetwork is not allowed on this node (allow_host_network)"
            )
        if not self.allow_host_ports:
            for container in spec.containers:
                for port in container.ports:
                    if port.host_port is not None:
                        return Rejection(
                            "allow_host_ports",
                            f"hostPort {port.host_port} of container {container.name} is not "
                            "allowed on this node (allow_host_ports)",
                        )
        allowed = self.allowed_host_paths
        if allowed is not None:
            for volume in spec.volumes:
                if volume.host_path is None:
                    continue
                path = normalise_host_path(volume.host_path.path)
                if not any(_under(path, prefix) for prefix in allowed):
                    listed = ", ".join(allowed)
                    return Rejection(
                        "allowed_host_paths",
                        f"hostPath {_quote(volume.host_path.path)} of volume {volume.name} is "
                        f"outside allowed_host_paths [{listed}]",
                    )
        return None


ADMIT_ALL = AdmissionPolicy()
