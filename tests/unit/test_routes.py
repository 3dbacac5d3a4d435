"""The route tables and the one request-target parser of the master's and the node's APIs."""

from __future__ import annotations

import pytest

from agent.errors import BadRequestError, MethodNotAllowedError, NotFoundError
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
        target = route.path.replace("{", "x-").replace("}", "")
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
    for target in ("/", "/v1", "/v1/nodes/", "/v1/nodes/n/unknown", "/healthz/x", "/v2/pods"):
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
    ],
)
def test_path_parameters_are_validated_at_the_parser(target: str) -> None:
    with pytest.raises(BadRequestError, match="path parameter node"):
        MASTER_ROUTES.match("GET", target)


def test_the_longest_parameter_is_accepted() -> None:
    name = "n" * MAX_PARAM_CHARS
    assert MASTER_ROUTES.match("GET", f"/v1/nodes/{name}").param("node") == name


@pytest.mark.parametrize(
    ("target", "problem"),
    [
        ("v1/pods", "not an absolute path"),
        ("*", "not an absolute path"),
        ("/v1/nodes/%ff", "request target"),
        ("/v1/pods?namespace=%ff", "request target"),
        ("/v1/pods?" + "&".join(["a=1"] * (MAX_QUERY_FIELDS + 1)), "request target"),
    ],
)
def test_malformed_targets_are_400(target: str, problem: str) -> None:
    with pytest.raises(BadRequestError, match=problem):
        MASTER_ROUTES.match("GET", target)
