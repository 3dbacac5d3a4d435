"""What the pod worker needs from probes: the ``Prober`` protocol and its values (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from agent.node.runtime.base import ContainerRecord
from agent.types import Pod, ProbeKind


@dataclass(frozen=True, slots=True)
class ProbeFailure:
    """A liveness or startup probe that reached its failure threshold: the container must be
    killed (and restarted per the pod's restartPolicy). ``grace_s`` None: the pod's period."""

    kind: ProbeKind
    message: str
    grace_s: int | None = None


@dataclass(frozen=True, slots=True)
class ProbeState:
    """One running container as its probes see it.

    ``started``: no startup probe, or it passed (Kubernetes' ``containerStatuses[].started``).
    ``ready``: started and, with a readiness probe, that probe's last verdict (False until it
    first passes). ``failure``: set once a liveness or startup probe has failed for good."""

    started: bool = True
    ready: bool = True
    failure: ProbeFailure | None = None


UNPROBED = ProbeState()


class Prober(Protocol):
    """The probes of every pod's running containers. The pod worker tells it, after each sync,
    which containers of its pod run now; it starts probe workers for new ones and cancels those
    of containers that stopped. Results wake the pod's worker through the callback the prober
    was built with."""

    def sync_pod(self, pod: Pod, running: Mapping[str, ContainerRecord], pod_ip: str) -> None:
        """``running``: container name → its running record (app containers only)."""
        ...

    def state(self, pod_uid: str, container_id: str) -> ProbeState:
        """The container's probe state (UNPROBED for one the prober does not know)."""
        ...

    def forget_pod(self, pod_uid: str) -> None:
        """Cancel every probe of the pod (it is being removed)."""
        ...


class NoProbes:
    """A prober that probes nothing: every container is started and ready while it runs."""

    def sync_pod(self, pod: Pod, running: Mapping[str, ContainerRecord], pod_ip: str) -> None:
        return None

    def state(self, pod_uid: str, container_id: str) -> ProbeState:
        return UNPROBED

    def forget_pod(self, pod_uid: str) -> None:
        return None


NO_PROBES = NoProbes()
