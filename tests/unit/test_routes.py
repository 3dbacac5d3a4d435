"""The route tables and the one request-target parser of the master's and the node's APIs."""

from __future__ import annotations

import pytest

from agent.errors import BadRequestError, MethodNotAllowedError, NotFoundError
from agent.names import NODE_NAME_MAX_CHARS
from agent.proto.routes import (
    MASTER_ROUTES,
    MAX_PARAM_CHARS,
    MAX_QUERY_FIELDS,
    NODE_ROUTES,
    RouteTable,
    Subject,
)

TABLES = [MASTER_ROUTES, NODE_ROUTES]


@pytest.mark.parametrize("table", TABLES, ids=lambda t: t.api)
def test_route_names_are_unique_and_every_route_matches_its_own_path(table: RouteTable) -> None:
    assert len(table.by_name) == len(table.routes)
    for route in table.routes:
        # A join token id has a fixed shape (6 of a-z0-9), which "x-token" is not.
        target = route.path.replace("{token}", "abc123")
        target = target.replace("{", "x-").replace("}", "")
        assert table.match(route.method, target).route is route


def test_a_match_carries_decoded_parameters_and_the_query() -> None:
    found = MASTER_ROUTES.match(
        "GET", "/v1/namespaces/kube%2Dsystem/pods/web-0/logs?container=c&tailLines=5&tailLines=7"
    )
    assert found.route.name == "pods.logs" and found.route.stream
    assert found.param("namespace") == "kube-system" and found.param("pod") == "web-0"
    assert found.path == "/v1/namespaces/kube-system/pods/web-0/logs"
    assert found.query_value("tailLines") == "7"  # the last one wins
    assert found.query_value("follow") is None
    assert found.query_value("follow", "0") == "0"
    blank = MASTER_ROUTES.match("GET", "/v1/pods?namespace=")
    assert blank.query_value("namespace") == ""


def test_the_stream_routes_are_the_same_on_both_apis() -> None:
    def streams(table: RouteTable) -> set[tuple[str, str, str]]:
        return {(r.name, r.method, r.path) for r in table.routes if r.stream}

    assert streams(MASTER_ROUTES) == streams(NODE_ROUTES)
    assert {name for name, _, _ in streams(NODE_ROUTES)} == {
        "pods.exec",
        "pods.portforward",
        "pods.logs",
    }
    assert all(r.subject is Subject.API for r in NODE_ROUTES.routes)


def test_unknown_paths_are_404() -> None:
    empty_segments = ("/v1/nodes//lease", "/v1/namespaces//pods/web", "/v1/registrations/")
    for target in (
        "/",
        "/v1",
        "/v1/nodes/",
        "/v1/nodes/n/unknown",
        "/healthz/x",
        "/v2/pods",
        *empty_segments,
    ):
        with pytest.raises(NotFoundError, match="no such route on the master API"):
            MASTER_ROUTES.match("GET", target)
    with pytest.raises(NotFoundError, match="node API"):
        NODE_ROUTES.match("GET", "/v1/nodes")


def test_a_known_path_with_another_method_is_405_with_the_methods_it_takes() -> None:
    with pytest.raises(MethodNotAllowedError) as info:
        MASTER_ROUTES.match("PATCH", "/v1/namespaces/default/pods/web")
    assert info.value.allow == ("DELETE", "GET")
    assert info.value.http_status == 405
    with pytest.raises(MethodNotAllowedError) as info:
        NODE_ROUTES.match("GET", "/v1/namespaces/default/pods/web/exec")
    assert info.value.allow == ("POST",)


@pytest.mark.parametrize(
    "target",
    [
        "/v1/nodes/a%2Fb",  # an encoded slash
        "/v1/nodes/a%00b",  # NUL
        "/v1/nodes/a%0Ab",  # a newline
        "/v1/nodes/a%7Fb",  # DEL
        "/v1/nodes/" + "n" * (MAX_PARAM_CHARS + 1),
        "/v1/nodes/" + "n" * 64,  # a part of a subdomain is a label: at most 63
        "/v1/nodes/*",
        "/v1/nodes/system:masters",
        "/v1/nodes/Upper",
        "/v1/nodes/caf%C3%A9",  # non-ASCII
        "/v1/nodes/..",
        "/v1/nodes/%2E%2E%2F%2E%2E%2Fetc",
        "/v1/nodes/a%20b",
        "/v1/nodes/a%E2%80%AEb",  # a right-to-left override
    ],
)
def test_path_parameters_are_validated_at_the_parser(target: str) -> None:
    with pytest.raises(BadRequestError, match="path parameter node: ") as caught:
        MASTER_ROUTES.match("GET", target)
    message = caught.value.message
    assert "is not a valid DNS-1123 subdomain" in message
    # The value is quoted escaped and bounded: one line, no raw control or invisible character.
    assert message.isprintable() and len(message) < 400


@pytest.mark.parametrize(
    ("method", "target", "param", "kind"),
    [
        ("GET", "/v1/namespaces/a.b/pods/web", "namespace", "label"),
        ("GET", "/v1/namespaces/default/pods/Web", "pod", "subdomain"),
        ("PUT", "/v1/namespaces/default/pods/a%0Ab/status", "pod", "subdomain"),
        ("PUT", "/v1/nodes/n1/mirrorpods/default/a_b", "pod", "subdomain"),
        ("PUT", "/v1/nodes/n1/mirrorpods/-x/web", "namespace", "label"),
    ],
)
def test_every_kind_of_parameter_has_its_check(
    method: str, target: str, param: str, kind: str
) -> None:
    with pytest.raises(BadRequestError, match=f"path parameter {param}: .* DNS-1123 {kind}"):
        MASTER_ROUTES.match(method, target)


@pytest.mark.parametrize("rid", ["%00", "a" * 65, "A", "a.b", "*"])
def test_a_registration_id_is_a_token(rid: str) -> None:
    with pytest.raises(BadRequestError, match=r"path parameter rid: .* is not a registration id"):
        MASTER_ROUTES.match("GET", f"/v1/registrations/{rid}")
    assert MASTER_ROUTES.match("GET", "/v1/registrations/" + "0" * 64).param("rid") == "0" * 64


def test_the_longest_parameter_is_accepted() -> None:
    name = ".".join(["n" * 63] * 3 + ["n" * 61])
    assert len(name) == MAX_PARAM_CHARS
    found = MASTER_ROUTES.match("GET", f"/v1/namespaces/default/pods/{name}")
    assert found.param("pod") == name
    # A node's name is shorter: its certificate's CN must hold it (agent.names).
    node = "n" * NODE_NAME_MAX_CHARS
    assert MASTER_ROUTES.match("GET", f"/v1/nodes/{node}").param("node") == node
    with pytest.raises(BadRequestError, match=r"path parameter node: .* longer than 52"):
        MASTER_ROUTES.match("GET", f"/v1/nodes/{node}n")


@pytest.mark.parametrize(
    ("target", "problem"),
    [
        ("v1/pods", "not an absolute path"),
        ("v1\n\x1b[2J", '"v1\\n\\x1b[2J" is not an absolute path'),
        ("*", "not an absolute path"),
        ("/v1/nodes/%ff", "request target"),
        ("/v1/pods?namespace=%ff", "request target"),
        ("/v1/pods?" + "&".join(["a=1"] * (MAX_QUERY_FIELDS + 1)), "request target"),
    ],
)
def test_malformed_targets_are_400(target: str, problem: str) -> None:
    with pytest.raises(BadRequestError) as caught:
        MASTER_ROUTES.match("GET", target)
    assert problem in caught.value.message
    assert caught.value.message.isprintable()


HOSTILE_SEGMENTS = ["*", "system%3Amasters", "%2E%2E", "a%2Fb", "a%00b", "a%0Ab", "n%C3%B6de", "A"]


@pytest.mark.parametrize("table", TABLES, ids=lambda t: t.api)
def test_every_parameter_of_every_route_is_checked(table: RouteTable) -> None:
    """Each parameter of each route, in turn hostile while the others are valid: a 400 naming
    that parameter (never a match, never another exception)."""
    checked = 0
    for route in table.routes:
        params = [s[1:-1] for s in route.pattern if s.startswith("{")]
        for hostile in params:
            for value in HOSTILE_SEGMENTS:
                segments = [
                    (value if s[1:-1] == hostile else "x-1") if s.startswith("{") else s
                    for s in route.pattern
                ]
                with pytest.raises(BadRequestError, match=f"path parameter {hostile}: "):
                    table.match(route.method, "/" + "/".join(segments))
                checked += 1
    assert checked >= (len(HOSTILE_SEGMENTS) if table is NODE_ROUTES else 100)
