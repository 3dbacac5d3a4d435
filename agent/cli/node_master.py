"""``node-master``: ``init`` a cluster (CA, serving cert, admin credentials, config, a first join
token), ``run`` the master, ``issue-user`` (a nodectl config for a viewer or another admin),
``token`` (join tokens: ``agent.cli.node_master_token``), ``migrate`` a stopped master's state
from SQLite into etcd (``agent.cli.node_master_migrate``), print the ``version``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from agent import __version__

EXIT_CONFIG = 2
EXIT_FAILED = 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="node-master", description="node-agent master")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    init = sub.add_parser("init", help="create the cluster CA, certificates and master.toml")
    init.add_argument("--data-dir", required=True, type=Path, metavar="DIR")
    init.add_argument(
        "--server-name",
        action="append",
        default=[],
        metavar="NAME",
        help="DNS name or IP of the master (repeatable); the first one goes in admin.conf",
    )
    init.add_argument("--listen", default="0.0.0.0:6443", metavar="HOST:PORT")
    init.add_argument("--force", action="store_true", help="replace an existing cluster CA")
    run = sub.add_parser("run", help="run the master in the foreground")
    run.add_argument("--config", required=True, type=Path, metavar="FILE")
    run.add_argument("--listen", metavar="HOST:PORT", help="override [master] listen")
    user = sub.add_parser(
        "issue-user", help="write a nodectl config for another user (read-only by default)"
    )
    user.add_argument("name", help="the user's name (certificate CN), as audited by nodes")
    user.add_argument("--data-dir", required=True, type=Path, metavar="DIR")
    user.add_argument(
        "--group",
        action="append",
        default=[],
        metavar="GROUP",
        help="system:viewers (default: nodes, pods, events, logs) or system:masters (all)",
    )
    user.add_argument("--out", type=Path, metavar="FILE", help="default DIR/users/NAME.conf")
    sub.add_parser("version", help="print the version")
    doctor = sub.add_parser("doctor", help="check that this host can run the master")
    doctor.add_argument("--config", required=True, type=Path, metavar="FILE")
    doctor.add_argument("-o", "--output", choices=("text", "json"), default="text")
    from agent.cli import node_master_token

    node_master_token.add_parser(sub)
    from agent.cli import node_master_migrate

    node_master_migrate.add_parser(sub)
    return parser


def _init(args: argparse.Namespace) -> int:
    from agent.aio.private import PRIVATE_DIR_MODE
    from agent.cli.node_master_token import first_token, join_line
    from agent.config import split_host_port
    from agent.errors import ConfigError
    from agent.master.config import render_master_toml
    from agent.master.pki_files import init_cluster

    try:
        split_host_port(args.listen, "--listen")
        data_dir = args.data_dir.resolve()
        # The data dir is the master's own: private even when it was made by hand beforehand
        # (what init writes is private through the umask main() set).
        data_dir.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
        data_dir.chmod(PRIVATE_DIR_MODE)
        result = init_cluster(
            data_dir,
            server_names=args.server_name,
            listen=args.listen,
            force=args.force,
            render_config=render_master_toml(data_dir, args.listen),
        )
        from agent.master.app import STORE_FILE

        token = first_token(data_dir, data_dir / STORE_FILE)
    except ConfigError as exc:
        print(f"node-master: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        print(f"node-master: data dir {args.data_dir}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"cluster initialised in {data_dir}")
    print(f"  CA pin:   {result.pin}")
    print(f"  config:   {result.config_path}")
    print(f"  admin:    {result.admin_conf}  (nodectl --config {result.admin_conf} get nodes)")
    print("join a node with:")
    if token is None:  # a re-init (--force) of a cluster whose master may run
        print(f"  node-agent run --master {result.server_url} --ca-cert-hash {result.pin}")
        print("  (and a token from `node-master token create` if [registration] trust needs one)")
    else:
        print(f"  {join_line(result.server_url, result.pin, token)}")
        print("  (the token expires in 24 h and is shown this once; `node-master token create`")
        print('  makes more; it admits nodes when [registration] trust lists "token")')
    return 0


def _issue_user(args: argparse.Namespace) -> int:
    from agent.errors import ConfigError
    from agent.master.pki_files import issue_user_conf
    from agent.pki.names import VIEWERS_GROUP

    try:
        path = issue_user_conf(
            args.data_dir.resolve(), args.name, args.group or [VIEWERS_GROUP], args.out
        )
    except ConfigError as exc:
        print(f"node-master: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"user {args.name}: {path}  (nodectl --config {path} get pods)")
    return 0


def _token(args: argparse.Namespace) -> int:
    from agent.cli import node_master_token
    from agent.errors import CliError

    try:
        return node_master_token.run(args)
    except CliError as exc:
        print(f"node-master: {exc}", file=sys.stderr)
        return exc.code


def _run(args: argparse.Namespace) -> int:
    import logging

    import uvloop

    from agent.aio.logs import kv, setup_logging, shutdown_logging
    from agent.cli.common import maybe_enable_blockbuster
    from agent.errors import ConfigError
    from agent.master.app import Master
    from agent.master.config import load_master_config

    try:
        config = load_master_config(args.config, {"listen": args.listen})
    except ConfigError as exc:
        print(f"node-master: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(config.log_format, config.log_level)
    log = logging.getLogger("agent.cli")
    maybe_enable_blockbuster()
    from agent.aio.malloc import tune_malloc

    tune_malloc()  # the master relays every proxied stream
    from agent.aio.rlimits import raise_nofile_limit

    nofile = raise_nofile_limit()  # a descriptor per node connection, watch and stream
    if nofile.after != nofile.before:
        log.info("descriptor limit raised", extra=kv(soft=nofile.after, was=nofile.before))
    try:
        uvloop.run(Master(config).run())
    except ConfigError as exc:
        log.error("master cannot start", extra=kv(error=str(exc)))
        return EXIT_CONFIG
    except Exception as exc:
        causes = exc.exceptions if isinstance(exc, BaseExceptionGroup) else (exc,)
        for cause in causes:
            log.error("master failed", extra=kv(error=f"{type(cause).__name__}: {cause}"))
        return EXIT_FAILED
    finally:
        shutdown_logging()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from agent.aio.private import restrict_umask

    # Before anything is created: the CA key, master.toml, the store and its -wal/-shm (which
    # SQLite creates itself) are the owner's only, whatever umask the shell had.
    loose = restrict_umask()
    try:
        if args.command == "version":
            print(f"node-master {__version__}")
            return 0
        if args.command == "init":
            return _init(args)
        if args.command == "issue-user":
            return _issue_user(args)
        if args.command == "token":
            return _token(args)
        if args.command == "migrate":
            from agent.cli import node_master_migrate

            return node_master_migrate.run(args)
        if args.command == "doctor":
            from agent.doctor import master

            return master.main(args.config, args.output)
        return _run(args)
    finally:
        os.umask(loose)  # for an in-process caller (the tests)


if __name__ == "__main__":
    sys.exit(main())
