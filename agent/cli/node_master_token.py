"""``node-master token create | list | delete``: join tokens, through the running master's API.

The CLI does not open the store itself: the master is its store's only writer (its revision
counter and caches assume so, and an etcd store is not a file at all), so tokens are made,
listed and deleted with the admin credentials over the ``tokens.*`` routes, which the
authorization table gives to administrators only. The credentials are ``admin.conf`` (``--data-dir
DIR`` for DIR/admin.conf, or ``--config FILE``, or nodectl's ``$NODECTL_CONFIG``).
``token create`` prints the token once, then the whole join line (master URL, CA pin, token),
as ``kubeadm token create --print-join-command`` does; nothing shows the secret again.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
from pathlib import Path
from typing import Any

from agent.errors import CliError

EXIT_USAGE = 2
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``90s``, ``30m``, ``24h``, ``7d`` or plain seconds; ``0``: never expires."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: a number and s, m, h or d (24h; 0: never expires)"
        )
    return float(match[1]) * _UNIT_S[match[2]]


def parse_labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"label {item!r} is not KEY=VALUE")
        labels[key] = value
    return labels


def add_parser(sub: Any) -> None:
    token = sub.add_parser("token", help="join tokens: create, list, delete (the master must run)")
    verbs = token.add_subparsers(dest="token_command", required=True, metavar="VERB")
    create = verbs.add_parser("create", help="make a join token and print the join line")
    create.add_argument(
        "--ttl",
        type=parse_duration,
        default=24 * 3600.0,
        metavar="DURATION",
        help="lifetime: 90s, 30m, 24h (default), 7d; 0 = never expires",
    )
    create.add_argument(
        "--usages", type=int, metavar="N", help="how many nodes may join with it (default: any)"
    )
    create.add_argument(
        "--labels",
        type=parse_labels,
        default={},
        metavar="K=V,...",
        help="labels put on every node that joins with it",
    )
    create.add_argument("--description", default="", metavar="TEXT")
    listing = verbs.add_parser("list", help="the tokens (never their secrets)")
    listing.add_argument("-o", "--output", choices=("table", "json"), default="table")
    delete = verbs.add_parser("delete", help="delete a token (nodes that joined stay)")
    delete.add_argument("id", help="the token's id (the part before the dot)")
    for parser in (create, listing, delete):
        parser.add_argument("--data-dir", type=Path, metavar="DIR", help="use DIR/admin.conf")
        parser.add_argument("--config", metavar="FILE", help="an admin nodectl config")


def join_line(server: str, pin: str, token: str) -> str:
    """One shell line an operator pastes: every part quoted (the token comes from the master's
    answer; a valid one is unchanged by quoting, anything else cannot run a command)."""
    master, pin, token = (shlex.quote(part) for part in (server, pin, token))
    return f"node-agent run --master {master} --ca-cert-hash {pin} --token {token}"


def _cell(value: object) -> str:
    from agent.names import escape

    return escape(str(value))


def run(args: argparse.Namespace) -> int:
    from agent.cli.nodectl import Client, _table, load_config
    from agent.jointoken import is_token_id
    from agent.pki.core import certs_from_pem, spki_pin

    # Checked before the master is asked (or its credentials read).
    if args.token_command == "create" and args.usages is not None and args.usages < 1:
        raise CliError("--usages must be at least 1 (leave it out for any number)", EXIT_USAGE)
    if args.token_command == "delete" and not is_token_id(args.id):
        raise CliError(f"{_cell(args.id)} is not a token id (6 of a-z and 0-9)", EXIT_USAGE)
    explicit = args.config or (str(args.data_dir / "admin.conf") if args.data_dir else None)
    config = load_config(explicit)
    client = Client(config)
    if args.token_command == "create":
        made = client.call(
            "POST",
            "/v1/tokens",
            {
                "ttlSeconds": args.ttl,
                "usages": args.usages,
                "labels": args.labels,
                "description": args.description,
            },
        )
        token = str(made["token"])
        pin = spki_pin(certs_from_pem(config.ca.encode())[0])
        expires = made.get("expiresAt") or "never"
        print(f"token:   {_cell(token)}  (shown this once; expires: {_cell(expires)})")
        print("join a node with:")
        print(f"  {join_line(config.server, pin, token)}")
        return 0
    if args.token_command == "list":
        items: list[dict[str, Any]] = client.call("GET", "/v1/tokens")["items"]
        if args.output == "json":
            print(json.dumps(items, indent=2))
            return 0
        rows = [["ID", "EXPIRES", "USES LEFT", "LABELS", "DESCRIPTION"]]
        for item in items:
            expires = item.get("expiresAt") or "never"
            if item.get("expired"):
                expires += " (expired)"
            left = item.get("usesLeft")
            labels = ",".join(f"{k}={v}" for k, v in sorted(item.get("labels", {}).items()))
            rows.append(
                [
                    _cell(item.get("id", "")),
                    _cell(expires),
                    "unlimited" if left is None else _cell(left),
                    _cell(labels or "<none>"),
                    _cell(item.get("description", "")),
                ]
            )
        print(_table(rows) if items else "No join tokens.")
        return 0
    client.call("DELETE", f"/v1/tokens/{args.id}")
    print(f"token {args.id} deleted")
    return 0


def first_token(data_dir: Path, store_file: Path) -> str | None:
    """``node-master init``'s join token, written straight into a store that did not exist
    before this init (so no master runs on it: the master is the store's only writer once it
    runs). None when the store exists: then ``token create`` asks the running master."""
    import asyncio

    if store_file.exists():
        return None

    async def make() -> str:
        from agent.aio.bridge import ThreadBridge
        from agent.aio.clock import SystemClock
        from agent.master.store.sqlite import SqliteStore
        from agent.master.tokens import JoinTokens

        bridge = ThreadBridge(1, name="init-store")
        try:
            store = await SqliteStore.open(store_file, bridge)
            try:
                token, _ = await JoinTokens(store, SystemClock()).create(
                    description="made by node-master init"
                )
            finally:
                await store.close()
        finally:
            bridge.close()
        return str(token)

    return asyncio.run(make())
