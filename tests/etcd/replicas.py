"""Replicas of a test master made the documented way (docs/operations.md, "Several masters"):
a copy of the first master's data dir with only ``listen`` changed in its master.toml; and a
nodectl config that lists several masters."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from tests.helpers import MasterProcess, free_port


class Replica(MasterProcess):
    """A copy of ``first``'s data dir (its CA, serving certificate, admin credentials and
    master.toml), on a port of its own: only ``listen`` differs. Its admin.conf names it (a
    nodectl config, not the master's)."""

    def __init__(self, first: MasterProcess, root: Path) -> None:
        shutil.copytree(first.root, root, ignore=shutil.ignore_patterns("*.log", "admin-test.*"))
        self.root = root
        self.host = first.host
        self.netns = first.netns
        self.port = free_port()
        self.log_path = root / "master.log"
        self.pin = first.pin
        self.url = f"https://{self.host}:{self.port}"
        self.admin_conf = root / "admin.conf"
        self.config_path = root / "master.toml"
        self.master_settings = dict(first.master_settings)
        self.proc = None
        listen = re.compile(r'(?m)^listen = ".*"$')
        text = self.config_path.read_text()
        assert len(listen.findall(text)) == 1, text
        self.config_path.write_text(listen.sub(f'listen = "{self.host}:{self.port}"', text))
        self.admin_conf.write_text(first.admin_conf.read_text().replace(first.url, self.url))

    def configure(self, **registration: object) -> None:
        raise AssertionError("a replica's master.toml is its first's, listen changed")


def servers_conf(first: MasterProcess, urls: list[str], path: Path) -> Path:
    """``first``'s admin.conf with ``server`` the list ``urls`` (tried in that order)."""
    listed = "[" + ", ".join(f'"{u}"' for u in urls) + "]"
    text = re.sub(r'(?m)^server = ".*"$', f"server = {listed}", first.admin_conf.read_text())
    path.write_text(text)
    path.chmod(0o600)
    return path
