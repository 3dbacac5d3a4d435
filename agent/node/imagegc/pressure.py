"""The ``DiskPressure`` node condition: free space on the image filesystem (the engine's data
root) and the node filesystem (the state dir), against hard thresholds with hysteresis.

Set when ``imagefs.available`` < ``imagefs_available_min_percent`` (kubelet's default 15 %) or
``nodefs.available`` < ``nodefs_available_min_percent`` (10 %); cleared only once both are at
least ``disk_pressure_margin_percent`` points above their thresholds, so a filesystem hovering
at the threshold does not make the condition flap. The master schedules no new pod onto a node
under pressure; pods already there are not evicted (out of scope: docs/images.md).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PressurePolicy:
    imagefs_min_percent: float = 15.0
    nodefs_min_percent: float = 10.0
    margin_percent: float = 5.0


@dataclass(frozen=True, slots=True)
class PressureState:
    pressure: bool
    reason: str
    message: str

    def condition(self) -> dict[str, str]:
        return {
            "type": "DiskPressure",
            "status": "True" if self.pressure else "False",
            "reason": self.reason,
            "message": self.message,
        }


NO_PRESSURE = PressureState(False, "KubeletHasNoDiskPressure", "")


def judge(
    current: bool, imagefs_available: float, nodefs_available: float, policy: PressurePolicy
) -> PressureState:
    """The next state from the available percentages (100 * free / size) of both filesystems."""
    image_limit = policy.imagefs_min_percent + (policy.margin_percent if current else 0.0)
    node_limit = policy.nodefs_min_percent + (policy.margin_percent if current else 0.0)
    short = []
    if imagefs_available < image_limit:
        short.append(
            f"imagefs.available {imagefs_available:.1f}% < {image_limit:g}%"
            + (" (clears above)" if current else "")
        )
    if nodefs_available < node_limit:
        short.append(
            f"nodefs.available {nodefs_available:.1f}% < {node_limit:g}%"
            + (" (clears above)" if current else "")
        )
    if short:
        return PressureState(True, "KubeletHasDiskPressure", "; ".join(short))
    return NO_PRESSURE
