"""The version object of ``GET /version`` and ``nodectl version``: Kubernetes' ``version.Info``
shape (``major``, ``minor``, ``gitVersion``, ``platform``), with ``pythonVersion`` where
Kubernetes has ``goVersion``. Stdlib only: nodectl imports it."""

from __future__ import annotations

import platform
import sys

from agent import __version__

# Go's GOARCH names, which kubectl prints in ``platform``; others as the kernel names them.
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386", "i386": "386"}


def version_info() -> dict[str, str]:
    major, _, rest = __version__.partition(".")
    minor = rest.partition(".")[0]
    machine = platform.machine().lower()
    return {
        "major": major,
        "minor": minor,
        "gitVersion": f"v{__version__}",
        "pythonVersion": platform.python_version(),
        "platform": f"{sys.platform}/{_ARCH.get(machine, machine)}",
    }
