"""Names: what a node, namespace, pod or container name and a label key or value may be, and how
a name that came from outside is shown.

One set of checks for every edge that takes a name: the master's registration body and every
path segment of its routes (:mod:`agent.proto.routes`), the agent's config (``node_name``) and
pod manifests (:mod:`agent.manifest`). They follow Kubernetes' validation:

* node and pod names are DNS-1123 subdomains: at most 253 characters, lowercase alphanumerics,
  ``-`` and ``.``, each dot-separated part starting and ending alphanumeric; a node name at most
  :data:`NODE_NAME_MAX_CHARS` (52), which its certificate's CN can hold;
* namespace, container and volume names are DNS-1123 labels: at most 63 characters, lowercase
  alphanumerics and ``-``, starting and ending alphanumeric;
* label and annotation keys are qualified names (an optional DNS-1123 subdomain prefix and
  ``/``, then at most 63 alphanumerics, ``-``, ``_`` and ``.``), label values at most 63 of the
  same or empty.

Each ``check_*`` function raises the caller's error (``fail(field, problem)``, a
:class:`~agent.errors.BadRequestError` by default) naming the field and quoting the value with
:func:`quote`: at most :data:`QUOTE_MAX_CHARS` characters of it, in double quotes, with every
control or invisible character escaped, so a hostile name can neither flood a message nor forge a
line of a log or a terminal. :func:`escape` is the same escaping without quotes, for table cells.

Sans-IO, and imports nothing but :mod:`agent.errors`: every layer may use it.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from agent.errors import AgentError, BadRequestError

DNS1123_LABEL_MAX_CHARS = 63
DNS1123_SUBDOMAIN_MAX_CHARS = 253
LABEL_VALUE_MAX_CHARS = 63
QUOTE_MAX_CHARS = 100  # of a value quoted in a message; the rest is counted, not shown
# A node's certificate names it in its subject's CN, "system:node:<name>" (agent.pki.names,
# which this bottom layer cannot import; tests/unit/test_names.py holds them equal), and X.509
# bounds a CN to 64 characters (RFC 5280, ub-common-name): a longer name could be registered
# but never given a certificate. Kubernetes' own bound is the subdomain's 253.
X509_CN_MAX_CHARS = 64
_NODE_CN_PREFIX = "system:node:"
NODE_NAME_MAX_CHARS = X509_CN_MAX_CHARS - len(_NODE_CN_PREFIX)  # 52

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_QUALIFIED_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
# RFC 1123 host name label, any case (a host is connected to, not compared as a name).
_HOST_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")

LABEL_HELP = "lowercase alphanumerics and '-', start and end alphanumeric, at most 63 characters"
SUBDOMAIN_HELP = (
    "lowercase alphanumerics, '-' and '.', each dot-separated part starting and ending "
    "alphanumeric, at most 253 characters"
)
KEY_HELP = (
    "an optional DNS-1123 subdomain prefix and '/', then a name of at most 63 alphanumerics, "
    "'-', '_' and '.', starting and ending alphanumeric"
)
LABEL_VALUE_HELP = (
    "at most 63 alphanumerics, '-', '_' and '.', starting and ending alphanumeric, or empty"
)

Fail = Callable[[str, str], AgentError]
"""Builds the error for ``(field, problem)``: each edge raises its own kind (400 at the API, a
:class:`~agent.errors.ManifestError` in a manifest, a :class:`~agent.errors.ConfigError`)."""

_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def bad_request(field: str, problem: str) -> AgentError:
    """The default :data:`Fail`: a 400 whose message starts with the field."""
    return BadRequestError(f"{field}: {problem}")


def escape(text: str) -> str:
    """``text`` with backslashes and every non-printable character escaped (``\\n``, ``\\x00``,
    ``\\u202e``, a lone surrogate as ``\\ud800``): safe on one line of a terminal or a log.
    Printable non-ASCII stays as it is."""
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(_escape_char(ch) for ch in text)


def _escape_char(ch: str) -> str:
    if ch in _ESCAPES:
        return _ESCAPES[ch]
    if ch.isprintable():
        return ch
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def quote(value: str, limit: int = QUOTE_MAX_CHARS) -> str:
    """``value`` for a message: in double quotes, escaped as by :func:`escape` (and ``"`` as
    ``\\"``), at most ``limit`` characters of it, then how long it was."""
    shown = escape(value[:limit]).replace('"', '\\"')
    if len(value) <= limit:
        return f'"{shown}"'
    return f'"{shown}"… ({len(value)} characters)'


# --- predicates ------------------------------------------------------------------------------


def is_dns1123_label(text: str) -> bool:
    return len(text) <= DNS1123_LABEL_MAX_CHARS and _DNS1123_LABEL.fullmatch(text) is not None


def is_dns1123_subdomain(text: str) -> bool:
    return len(text) <= DNS1123_SUBDOMAIN_MAX_CHARS and all(
        is_dns1123_label(part) for part in text.split(".")
    )


def is_node_name(text: str) -> bool:
    """What :func:`check_node_name` accepts."""
    return len(text) <= NODE_NAME_MAX_CHARS and is_dns1123_subdomain(text)


def is_host_name(host: str) -> bool:
    """An RFC 1123 host name in any case (an endpoint to connect to), not an IP address."""
    labels = host.split(".")
    return (
        len(host) <= DNS1123_SUBDOMAIN_MAX_CHARS
        and all(_HOST_LABEL.fullmatch(label) for label in labels)
        # An all-numeric last label is a mistyped address (10.0.0.300), not a name.
        and not labels[-1].isdigit()
    )


# --- checks: each raises fail(field, problem) ------------------------------------------------


def check_dns1123_label(text: str, field: str, fail: Fail = bad_request) -> str:
    if not is_dns1123_label(text):
        raise fail(field, f"{quote(text)} is not a valid DNS-1123 label ({LABEL_HELP})")
    return text


def check_dns1123_subdomain(text: str, field: str, fail: Fail = bad_request) -> str:
    if not is_dns1123_subdomain(text):
        raise fail(field, f"{quote(text)} is not a valid DNS-1123 subdomain ({SUBDOMAIN_HELP})")
    return text


def check_node_name(text: str, field: str, fail: Fail = bad_request) -> str:
    """A DNS-1123 subdomain of at most :data:`NODE_NAME_MAX_CHARS` characters."""
    check_dns1123_subdomain(text, field, fail)
    if len(text) > NODE_NAME_MAX_CHARS:
        raise fail(
            field,
            f"{quote(text)} is longer than {NODE_NAME_MAX_CHARS} characters, the most a node "
            f"name may have (its certificate's CN, {_NODE_CN_PREFIX}<name>, holds at most "
            f"{X509_CN_MAX_CHARS})",
        )
    return text


# The kinds of names, by what Kubernetes calls them; the aliases say which check each takes.
check_pod_name = check_dns1123_subdomain
check_namespace = check_dns1123_label
check_container_name = check_dns1123_label


def check_qualified_name(key: str, field: str, what: str, fail: Fail = bad_request) -> str:
    """A label or annotation key (``what`` says which): ``[prefix/]name``."""
    prefix, slash, name = key.rpartition("/")
    if slash and not is_dns1123_subdomain(prefix):
        raise fail(
            field,
            f"{quote(key)} is not a valid {what} key: the prefix {quote(prefix)} is not a "
            f"DNS-1123 subdomain ({SUBDOMAIN_HELP})",
        )
    if len(name) > LABEL_VALUE_MAX_CHARS or _QUALIFIED_NAME.fullmatch(name) is None:
        raise fail(field, f"{quote(key)} is not a valid {what} key ({KEY_HELP})")
    return key


def check_label_value(text: str, field: str, fail: Fail = bad_request) -> str:
    if text and (len(text) > LABEL_VALUE_MAX_CHARS or _QUALIFIED_NAME.fullmatch(text) is None):
        raise fail(field, f"{quote(text)} is not a valid label value ({LABEL_VALUE_HELP})")
    return text
