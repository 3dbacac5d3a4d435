"""The harness itself: the bookworm image boots systemd as PID 1 to `running`, and a plain
Type=notify unit with a watchdog behaves as systemd promises (a frozen main process is
restarted and NRestarts counts it) — the mechanism the agent's watchdog test relies on."""

from __future__ import annotations

from tests.helpers import wait_for
from tests.system.pkg.conftest import HostFactory

# A notify service in 15 lines of Python: READY=1, then WATCHDOG=1 every half second.
PINGER = """\
import os, socket, time
addr = os.environ["NOTIFY_SOCKET"]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.connect("\\0" + addr[1:] if addr.startswith("@") else addr)
s.send(b"READY=1")
while True:
    s.send(b"WATCHDOG=1")
    time.sleep(0.5)
"""

UNIT = """\
[Service]
Type=notify
ExecStart=/usr/bin/python3 /usr/local/bin/pinger.py
WatchdogSec=3
Restart=always
RestartSec=1
"""


def test_boots_systemd_and_restarts_a_frozen_notify_unit(boot_host: HostFactory) -> None:
    host = boot_host("harness")
    assert host.run("cat", "/proc/1/comm").stdout.strip() == "systemd"
    assert host.run("systemctl", "is-system-running").stdout.strip() == "running"

    host.write("/usr/local/bin/pinger.py", PINGER)
    host.write("/etc/systemd/system/pinger.service", UNIT)
    host.run("systemctl", "daemon-reload")
    host.run("systemctl", "start", "pinger.service")
    props = host.show("pinger.service", "ActiveState", "SubState", "NRestarts", "MainPID")
    assert (props["ActiveState"], props["SubState"], props["NRestarts"]) == (
        "active",
        "running",
        "0",
    )
    frozen = int(props["MainPID"])

    host.run("kill", "-STOP", str(frozen))

    def restarted_once() -> dict[str, str] | None:
        p = host.show("pinger.service", "NRestarts", "MainPID", "SubState")
        return p if p["NRestarts"] == "1" and p["SubState"] == "running" else None

    restarted = wait_for(restarted_once, timeout_s=60, what="pinger restarted by the watchdog")
    assert int(restarted["MainPID"]) != frozen
    assert "Watchdog timeout" in host.journal("pinger.service")
