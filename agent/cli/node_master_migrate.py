"""``node-master migrate --from sqlite:PATH --to etcd:URL[,URL...]``: copy a stopped master's
state (nodes with their certificates and approvals, pods, join tokens, waiting registrations:
every key of the store) from its SQLite file into etcd, for a master that then runs with
``[store] backend = "etcd"`` and the same data dir (its CA).

Keys and values are copied as they are; revisions are etcd's (a migrated key's revision is its
copy's), and the etcd store's history floor is set to the end of the copy, so a client
resuming a watch from a revision of the old store gets 410 and relists (agents do, without
registering again: their node records and certificates are what they were). The destination
prefix must be empty: a migration is refused rather than mixed into another cluster's keys,
or run twice. The master must be stopped: what it writes during the copy is not copied.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from agent.aio.bridge import ThreadBridge
from agent.config import coerce_value
from agent.errors import ConfigError, StoreError
from agent.master.config import (
    DEFAULT_STORE_PREFIX,
    STORE_KEYS,
    StoreConfig,
    validate_store,
)
from agent.master.store.etcd import EtcdStore, tls_context
from agent.master.store.sqlite import SqliteStore

EXIT_USAGE = 2
EXIT_FAILED = 1


def add_parser(sub: Any) -> None:
    migrate = sub.add_parser("migrate", help="copy a stopped master's state from SQLite into etcd")
    migrate.add_argument("--from", dest="source", required=True, metavar="sqlite:PATH")
    migrate.add_argument("--to", dest="target", required=True, metavar="etcd:URL[,URL...]")
    migrate.add_argument("--ca-file", type=Path, metavar="FILE", help="[store] ca_file")
    migrate.add_argument("--cert-file", type=Path, metavar="FILE", help="[store] cert_file")
    migrate.add_argument("--key-file", type=Path, metavar="FILE", help="[store] key_file")
    migrate.add_argument(
        "--prefix", default=DEFAULT_STORE_PREFIX, help=f"[store] prefix ({DEFAULT_STORE_PREFIX})"
    )


def _target(args: argparse.Namespace) -> StoreConfig:
    scheme, sep, rest = str(args.target).partition(":")
    if scheme != "etcd" or not sep or not rest:
        raise ConfigError(f"--to {args.target!r}: expected etcd:URL[,URL...]")
    keys = {k.name: k for k in STORE_KEYS}
    endpoints = coerce_value(keys["endpoints"], rest, "--to")
    prefix = coerce_value(keys["prefix"], args.prefix, "--prefix")
    assert isinstance(endpoints, tuple) and isinstance(prefix, str)
    store = StoreConfig(
        backend="etcd",
        endpoints=endpoints,
        ca_file=args.ca_file,
        cert_file=args.cert_file,
        key_file=args.key_file,
        prefix=prefix,
    )
    validate_store(store, "migrate")
    return store


def _source(args: argparse.Namespace) -> Path:
    scheme, sep, rest = str(args.source).partition(":")
    if scheme != "sqlite" or not sep or not rest:
        raise ConfigError(f"--from {args.source!r}: expected sqlite:PATH")
    path = Path(rest)
    if not path.is_file():
        raise ConfigError(f"--from: {path} does not exist (the master's data_dir/store.db)")
    return path


async def _copy(source: Path, target: StoreConfig) -> int:
    bridge = ThreadBridge(2, name="migrate")
    sqlite: SqliteStore | None = None
    etcd: EtcdStore | None = None
    try:
        tls = None
        if target.endpoints[0].startswith("https://"):
            tls = await bridge.run(tls_context, target.ca_file, target.cert_file, target.key_file)
        sqlite = await SqliteStore.open(source, bridge)
        etcd = await EtcdStore.open(target.endpoints, prefix=target.prefix, tls=tls, history=None)
        there, _ = await etcd.list_prefix("")
        if there:
            print(
                f"node-master: etcd prefix {target.prefix!r} already holds {len(there)} keys "
                "(another cluster's, or a migration done before): nothing copied; choose "
                "another --prefix or delete them",
                file=sys.stderr,
            )
            return EXIT_FAILED
        items, revision = await sqlite.list_prefix("")
        kinds: Counter[str] = Counter()
        for item in items:
            if await etcd.compare_and_swap(item.key, item.value, 0) is None:
                print(
                    f"node-master: {item.key!r} appeared in etcd during the copy: another "
                    "writer uses this prefix; stopped",
                    file=sys.stderr,
                )
                return EXIT_FAILED
            kinds[item.key.split("/")[1] if item.key.count("/") >= 2 else "other"] += 1
        copied, _ = await etcd.list_prefix("")
        if [(kv.key, kv.value) for kv in copied] != [(kv.key, kv.value) for kv in items]:
            print("node-master: etcd does not hold what was copied; stopped", file=sys.stderr)
            return EXIT_FAILED
        floor = await etcd.set_history_floor()
        summary = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items())) or "nothing"
        print(
            f"copied {len(items)} keys ({summary}) of {source} (revision {revision}) to etcd "
            f"{','.join(target.endpoints)} under {target.prefix!r}; watches from before etcd "
            f"revision {floor} relist"
        )
        print("the master's master.toml, with the same data_dir:")
        print("[store]")
        print('backend = "etcd"')
        print("endpoints = [" + ", ".join(f'"{e}"' for e in target.endpoints) + "]")
        for key in ("ca_file", "cert_file", "key_file"):
            value = getattr(target, key)
            if value is not None:
                print(f'{key} = "{value}"')
        print(f'prefix = "{target.prefix}"')
        return 0
    finally:
        if etcd is not None:
            await etcd.close()
        if sqlite is not None:
            await sqlite.close()
        bridge.close()


def run(args: argparse.Namespace) -> int:
    try:
        source = _source(args)
        target = _target(args)
    except ConfigError as exc:
        print(f"node-master: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return asyncio.run(_copy(source, target))
    except (StoreError, OSError) as exc:
        print(f"node-master: migrate: {exc}", file=sys.stderr)
        return EXIT_FAILED
