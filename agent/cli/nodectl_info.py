"""``nodectl version`` and ``nodectl config view``: what this client is, what the master is, and
what the config file holds, as kubectl prints them.

``version`` prints the client's version (:func:`agent.versioninfo.version_info`, the shape of
Kubernetes' ``version.Info``) and the master's (``GET /version``, open to anyone as the API
server's is); ``--client`` asks nobody. ``config view`` prints the nodectl config with the
certificate and key data replaced by kubectl's ``DATA+OMITTED``; ``--raw`` prints them, as a
TOML file nodectl reads back unchanged.

Imported only by these two commands (``nodectl get`` never pays for it).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from agent.cli.nodectl import Client, _yaml, load_config
from agent.errors import CliError, ServerError
from agent.names import escape
from agent.versioninfo import version_info

OMITTED = "DATA+OMITTED"  # kubectl config view's placeholder for certificate and key data
_SECRET_KEYS = ("ca", "client_cert", "client_key")
_VERSION_KEYS = ("major", "minor", "gitVersion", "pythonVersion", "platform")
_VERSION_VALUE_MAX = 256  # characters of one field of the master's answer


def cmd_version(args: argparse.Namespace) -> int:
    """Client, then server; the client's version is printed even when the master cannot be
    asked (then the error follows on stderr and the exit status is 1), as kubectl does."""
    document: dict[str, Any] = {"clientVersion": version_info()}
    error: str | None = None
    if not args.client:
        try:
            answer = Client(load_config(args.config)).call("GET", "/version")
            document["serverVersion"] = _server_version(answer)
        except ServerError as exc:
            error = str(exc)
        except CliError as exc:
            error = f"nodectl: {exc}"
    if args.output == "json":
        print(json.dumps(document, indent=2))
    elif args.output == "yaml":
        print(_yaml(document), end="")
    else:
        print(f"Client Version: {document['clientVersion']['gitVersion']}")
        if "serverVersion" in document:
            print(f"Server Version: {document['serverVersion']['gitVersion']}")
    if error is not None:
        sys.stdout.flush()
        print(error, file=sys.stderr)
        return 1
    return 0


def _server_version(answer: object) -> dict[str, str]:
    """The master's version object, its fields escaped and bounded: it reaches a terminal."""
    if not isinstance(answer, dict) or not isinstance(answer.get("gitVersion"), str):
        raise CliError("the master's /version answer is not a version object")
    return {
        key: escape(value[:_VERSION_VALUE_MAX])
        for key in _VERSION_KEYS
        if isinstance(value := answer.get(key), str)
    }


def cmd_config_view(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    document: dict[str, Any] = {
        "server": config.server if len(config.servers) < 2 else list(config.servers),
        "ca": config.ca,
        "client_cert": config.client_cert,
        "client_key": config.client_key,
        "session_idle_timeout_s": config.session_idle_timeout_s,
    }
    if not args.raw:
        for key in _SECRET_KEYS:
            document[key] = OMITTED
    if args.output == "json":
        print(json.dumps(document, indent=2))
    elif args.output == "yaml":
        print(_yaml(document), end="")
    else:
        print(toml_document(document), end="")
    return 0


def toml_document(document: dict[str, Any]) -> str:
    """Flat TOML of strings and numbers that :mod:`tomllib` reads back as ``document``."""
    lines = []
    for key, value in document.items():
        if isinstance(value, str):
            text = toml_string(value)
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"{key}: {type(value).__name__} is not written here")
        else:
            text = repr(value)
        lines.append(f"{key} = {text}\n")
    return "".join(lines)


def toml_string(value: str) -> str:
    """A PEM block as the multi-line string ``node-master init`` writes; anything else (or a
    value a multi-line string cannot hold as is) on one line, every control character escaped,
    so that nothing in a config can drive the terminal."""
    if "\n" in value and all(c == "\n" or _plain(c) for c in value) and '"' not in value:
        return f'"""\n{value}"""'
    out = []
    for c in value:
        if c in ('"', "\\"):
            out.append("\\" + c)
        elif _plain(c):
            out.append(c)
        else:
            out.append(f"\\u{ord(c):04x}")
    return '"' + "".join(out) + '"'


def _plain(c: str) -> bool:
    """Printable, not a backslash (an escape in TOML's basic strings), not a C0/C1 control."""
    code = ord(c)
    return c != "\\" and not (code < 0x20 or 0x7F <= code <= 0x9F)


def run(args: argparse.Namespace) -> int:
    """The commands that need no connection, or make their own."""
    if args.command == "explain":
        from agent.cli.nodectl_explain import cmd_explain

        return cmd_explain(args)
    if args.command == "version":
        return cmd_version(args)
    return cmd_config_view(args)  # config's only subcommand: view
