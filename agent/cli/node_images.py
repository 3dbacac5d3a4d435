"""``node-agent images``: the local images with size, last use and why image GC would or would
not delete each; ``node-agent images gc [--dry-run]``: a GC run now (or its plan).

Both ask the running agent over its local API socket (``<state_dir>/api.sock``, root only):
the agent holds the pods' image reservations and the last-used record, so only it can decide
without racing an admission. With the agent down nothing is admitted; ``docker image prune``
is then the tool (docs/images.md).
"""

from __future__ import annotations

import http.client
import json
import socket
import sys
from pathlib import Path
from typing import Any, TextIO

EXIT_FAILED = 1
EXIT_UNAVAILABLE = 3
TIMEOUT_S = 600.0  # a GC run deletes images one by one; the agent bounds each call itself
MAX_ANSWER_BYTES = 64 * 1024 * 1024


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("local", timeout=TIMEOUT_S)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(TIMEOUT_S)
        try:
            sock.connect(str(self._path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


class AgentUnreachable(Exception):
    pass


def ask(socket_path: Path, method: str, target: str) -> tuple[int, dict[str, Any]]:
    conn = _UnixConnection(socket_path)
    try:
        try:
            conn.request(method, target)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise AgentUnreachable(
                f"the agent is not running (nothing serves {socket_path}: {exc.strerror}); "
                "start it, or use docker image prune while it is down"
            ) from None
        except PermissionError:
            raise AgentUnreachable(f"{socket_path}: permission denied (run as root)") from None
        response = conn.getresponse()
        body = response.read(MAX_ANSWER_BYTES)
    finally:
        conn.close()
    try:
        data = json.loads(body)
    except ValueError:
        data = {"error": body.decode(errors="replace")[:500]}
    if not isinstance(data, dict):
        data = {"error": f"unexpected answer {str(data)[:200]}"}
    return response.status, data


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1000
    return f"{n}B"


def _fs(usage: dict[str, Any] | None) -> str:
    if not usage:
        return "?"
    return (
        f"{usage['percent']:.1f}% ({_size(usage['usedBytes'])} of {_size(usage['capacityBytes'])})"
    )


def render(report: dict[str, Any], *, ran: bool, out: TextIO) -> None:
    rows = [("IMAGE", "ID", "SIZE", "LAST USED", "GC", "WHY")]
    for image in report.get("images", []):
        name = image["tags"][0] if image["tags"] else "<none>"
        action = "delete" if image["delete"] else "keep"
        why = f"{image['reason']}: {image['detail']}" if image["detail"] else image["reason"]
        if ran and image.get("result"):
            action = image["result"].split(":", 1)[0]
            if image["result"] != "deleted":
                why = image["result"]
        rows.append(
            (
                name,
                image["id"].removeprefix("sha256:")[:12],
                _size(image["sizeBytes"]),
                image["lastUsed"],
                action,
                why,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for row in rows:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[5])
        out.write("\n")
    line = f"image fs: {_fs(report.get('usageBefore'))}"
    if ran:
        line += f" -> {_fs(report.get('usageAfter'))}, freed {_size(report.get('freedBytes', 0))}"
    out.write(line + "\n")


def main(socket_path: Path, command: str, *, dry_run: bool, output: str) -> int:
    if command == "list":
        method, target = "GET", "/v1/images"
    else:
        method, target = "POST", "/v1/images/gc" + ("?dryRun=true" if dry_run else "")
    try:
        status, data = ask(socket_path, method, target)
    except AgentUnreachable as exc:
        print(f"node-agent images: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except OSError as exc:
        print(f"node-agent images: {socket_path}: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if status != 200:
        print(
            f"node-agent images: the agent answered {status}: {data.get('error')}", file=sys.stderr
        )
        return EXIT_FAILED
    if output == "json":
        json.dump(data, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        render(data, ran=command == "gc" and not dry_run, out=sys.stdout)
    return 0
