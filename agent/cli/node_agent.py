"""``node-agent``: run the node daemon (``run``), check the host (``doctor``) or static
manifests (``check``), print the version.

Imports stay inside the subcommands so ``node-agent version`` starts fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from agent import __version__

EXIT_CONFIG = 2
EXIT_FAILED = 1


def _parser() -> argparse.ArgumentParser:
    from agent.config import add_config_flags

    parser = argparse.ArgumentParser(prog="node-agent", description="node agent daemon")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run the agent in the foreground (systemd: Type=notify)")
    run.add_argument(
        "--config", metavar="FILE", help="TOML config (default /etc/node-agent/agent.toml)"
    )
    add_config_flags(run)
    doctor = sub.add_parser("doctor", help="check that this host can run the agent")
    doctor.add_argument("--config", metavar="FILE")
    doctor.add_argument("-o", "--output", choices=("text", "json"), default="text")
    add_config_flags(doctor)
    check = sub.add_parser(
        "check", help="check static manifests: every error, or what the agent would run"
    )
    check.add_argument("paths", nargs="+", metavar="FILE", help="manifest files or directories")
    check.add_argument(
        "--node-name", help="the node's name (default: the host name, as the agent's default)"
    )
    images = sub.add_parser(
        "images",
        help="images with size, last use and why GC would keep or delete them; 'gc' runs GC now",
    )
    images.add_argument("action", nargs="?", choices=("gc",), help="run image GC now")
    images.add_argument("--dry-run", action="store_true", help="with gc: print the plan only")
    images.add_argument("--config", metavar="FILE")
    images.add_argument("-o", "--output", choices=("text", "json"), default="text")
    add_config_flags(images)
    sub.add_parser("version", help="print the version")
    return parser


def _load(args: argparse.Namespace) -> object:
    from pathlib import Path

    from agent.config import load_agent_config, overrides_from_args

    path = Path(args.config) if args.config else None
    return load_agent_config(path, overrides_from_args(args), path_required=path is not None)


def _run(args: argparse.Namespace) -> int:
    from agent.aio.logs import setup_logging, shutdown_logging
    from agent.config import AgentConfig
    from agent.errors import ConfigError
    from agent.node import crashpoints

    try:
        config = _load(args)
        crashpoints.arm_from_env()
        crashpoints.arm_hold_from_env()
    except ConfigError as exc:
        print(f"node-agent: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    assert isinstance(config, AgentConfig)
    setup_logging(config.log_format, config.log_level)
    try:
        return _serve(config)
    finally:
        shutdown_logging()


def _serve(config: object) -> int:
    import logging

    import uvloop

    from agent.aio.logs import kv
    from agent.aio.malloc import tune_malloc
    from agent.cli.common import maybe_enable_blockbuster
    from agent.config import AgentConfig
    from agent.node.app import NodeAgent

    assert isinstance(config, AgentConfig)
    log = logging.getLogger("agent.cli")
    maybe_enable_blockbuster()
    tune_malloc()
    agent = NodeAgent(config)
    try:
        uvloop.run(agent.run())
    except Exception as exc:
        causes = exc.exceptions if isinstance(exc, BaseExceptionGroup) else (exc,)
        for cause in causes:
            log.error("agent failed", extra=kv(error=f"{type(cause).__name__}: {cause}"))
        return EXIT_FAILED
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from pathlib import Path

    from agent.config import overrides_from_args
    from agent.doctor import node

    path = Path(args.config) if args.config else None
    return node.main(path, overrides_from_args(args), args.output)


def _check(args: argparse.Namespace) -> int:
    import socket

    from agent.cli import manifest_check

    node_name = args.node_name or socket.gethostname().lower()
    return manifest_check.main(args.paths, node_name)


def _images(args: argparse.Namespace) -> int:
    from agent.cli import node_images
    from agent.config import AgentConfig
    from agent.errors import ConfigError

    if args.dry_run and args.action != "gc":
        print("node-agent images: --dry-run goes with gc", file=sys.stderr)
        return EXIT_CONFIG
    try:
        config = _load(args)
    except ConfigError as exc:
        print(f"node-agent: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    assert isinstance(config, AgentConfig)
    return node_images.main(
        config.api_socket, args.action or "list", dry_run=args.dry_run, output=args.output
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from agent.aio.private import restrict_umask

    # Before anything is created: the checkpoint, the node's key and the API socket are the
    # owner's only, whatever umask the shell had (pod volumes get their modes explicitly).
    loose = restrict_umask()
    try:
        if args.command == "version":
            print(f"node-agent {__version__}")
            return 0
        if args.command == "doctor":
            return _doctor(args)
        if args.command == "check":
            return _check(args)
        if args.command == "images":
            return _images(args)
        return _run(args)
    finally:
        os.umask(loose)  # for an in-process caller (the tests)


if __name__ == "__main__":
    sys.exit(main())
