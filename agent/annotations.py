"""Our pod annotations (``node-agent.io/…``): their names, what they say, parsed (pure).

Annotations are where a Kubernetes manifest carries an extension without inventing fields (an
unknown field is refused, docs/manifests.md). The parser (:mod:`agent.manifest`) checks them
with the rest of the pod, so a bad one is a :class:`ManifestError` naming it, at apply time; the
node reads them with the same functions.

* ``node-agent.io/notify: "web,worker"`` — sd_notify readiness for the named app containers
  (docs/manifests.md, "sd_notify readiness"): each gets its own notify socket and
  ``$NOTIFY_SOCKET``; ``READY=1`` makes it ready.
* ``node-agent.io/notify-watchdog-seconds: "30"`` — those containers must send ``WATCHDOG=1`` at
  least every 30 s once they sent ``READY=1`` or a first ``WATCHDOG=1``, or they are restarted.
"""

from __future__ import annotations

import posixpath
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from agent.errors import ManifestError
from agent.manifest_loader import shown

NOTIFY = "node-agent.io/notify"
NOTIFY_WATCHDOG_SECONDS = "node-agent.io/notify-watchdog-seconds"
WATCHDOG_MAX_S = 24 * 3600  # a day; a longer watchdog watches nothing
NOTIFY_CONTAINER_DIR = "/run/node-agent/notify"  # where a notify container has its socket
_MAX_DIGITS = 6


@dataclass(frozen=True, slots=True)
class NotifySettings:
    """Which containers use sd_notify, and their watchdog interval (None: no watchdog)."""

    containers: frozenset[str] = frozenset()
    watchdog_s: int | None = None

    def wants(self, container: str) -> bool:
        return container in self.containers


NO_NOTIFY = NotifySettings()


def _where(key: str) -> str:
    # The path the parser gives an annotation (agent.manifest._annotations).
    return f"metadata.annotations[{shown(key)}]"


def notify_settings(annotations: Mapping[str, str], containers: Collection[str]) -> NotifySettings:
    """The notify settings of a pod with these annotations and app containers.

    Raises :class:`ManifestError` for a name that is not an app container of the pod, a
    watchdog interval that is not a whole number of seconds in 1 … 86400, or a watchdog without
    notify containers.
    """
    listed = annotations.get(NOTIFY)
    watchdog_text = annotations.get(NOTIFY_WATCHDOG_SECONDS)
    if listed is None and watchdog_text is None:
        return NO_NOTIFY
    names: set[str] = set()
    for name in (part.strip() for part in (listed or "").split(",")):
        if not name:
            continue
        if name not in containers:
            raise ManifestError(
                _where(NOTIFY), f"{shown(name)} is not an app container of this pod"
            )
        names.add(name)
    watchdog_s = None
    if watchdog_text is not None:
        where = _where(NOTIFY_WATCHDOG_SECONDS)
        text = watchdog_text.strip()
        if not text.isascii() or not text.isdigit() or len(text) > _MAX_DIGITS:
            raise ManifestError(where, f"{shown(watchdog_text)} is not a whole number of seconds")
        watchdog_s = int(text)
        if not 1 <= watchdog_s <= WATCHDOG_MAX_S:
            raise ManifestError(
                where, f"{watchdog_s} is out of range (must be between 1 and {WATCHDOG_MAX_S})"
            )
        if not names:
            raise ManifestError(where, f"needs containers in {shown(NOTIFY)} to watch")
    return NotifySettings(frozenset(names), watchdog_s)


def check_notify_mounts(
    settings: NotifySettings, containers: Iterable[tuple[str, Sequence[str]]]
) -> None:
    """No notify container mounts a volume at :data:`NOTIFY_CONTAINER_DIR` or under it (the
    runtime would refuse the duplicate mount point, or hide the socket). ``containers``: each
    app container's name and mount paths, in the pod's order."""
    for i, (name, paths) in enumerate(containers):
        if not settings.wants(name):
            continue
        for j, path in enumerate(paths):
            normal = "/" + posixpath.normpath(path).lstrip("/")
            if normal == NOTIFY_CONTAINER_DIR or normal.startswith(NOTIFY_CONTAINER_DIR + "/"):
                raise ManifestError(
                    f"spec.containers[{i}].volumeMounts[{j}].mountPath",
                    f"{shown(path)} is where the notify socket of {shown(name)} is mounted "
                    f"({shown(NOTIFY)}): mount elsewhere than {NOTIFY_CONTAINER_DIR}",
                )
