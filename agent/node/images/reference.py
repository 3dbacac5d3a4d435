"""Image references (pure): the grammar Docker accepts, and the registry a reference names.

The manifest parser only refuses whitespace in ``image`` (as the Kubernetes API server); the
node checks the full grammar before any pull, so a typo is ``InvalidImageName`` at once
instead of a pull that fails with the engine's wording. The grammar is
distribution/reference's: ``[domain[:port]/]path[:tag][@digest]``, the path in lower case,
the name at most 255 characters.
"""

from __future__ import annotations

import re

NAME_MAX_CHARS = 255  # distribution/reference NameTotalLengthMax
DOCKER_HUB = "docker.io"

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_REFERENCE = re.compile(
    rf"^(?P<name>(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?$"
)
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})


def reference_problem(image: str) -> str:
    """Why ``image`` is not a reference an engine can pull ("" when it is one)."""
    if not image:
        return "the image reference is empty"
    match = _REFERENCE.match(image)
    if match is None:
        return "invalid reference format"
    if len(match["name"]) > NAME_MAX_CHARS:
        return f"repository name must not be longer than {NAME_MAX_CHARS} characters"
    return ""


def registry_of(image: str) -> str:
    """The registry host (with port) a reference pulls from: its first path component when
    that looks like a host (a dot, a port, ``localhost``), else Docker Hub, as Docker decides."""
    first, slash, _ = image.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        return DOCKER_HUB if first in _HUB_ALIASES else first
    return DOCKER_HUB


def registry_key(server: str) -> str:
    """A registry as a Docker config file names it (``https://index.docker.io/v1/``,
    ``registry.example:5000``, ``http://host/``) reduced to the host as ``registry_of``
    gives it."""
    host = server.strip()
    for scheme in ("https://", "http://"):
        if host.startswith(scheme):
            host = host[len(scheme) :]
            break
    host = host.split("/", 1)[0]
    return DOCKER_HUB if host in _HUB_ALIASES else host
