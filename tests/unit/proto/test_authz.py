"""The authorization table: complete for both route tables, consistent with the routes'
subjects and with docs/authorization.md, and the caller kinds and refusal messages."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.proto.authz import (
    ANONYMOUS,
    RULES,
    Caller,
    CallerKind,
    Decision,
    Principal,
    Role,
    caller_of,
    decide,
    needs_subject,
    refusal,
)
from agent.proto.routes import MASTER_ROUTES, NODE_ROUTES, Route, Subject

DOC = Path(__file__).resolve().parents[3] / "docs" / "authorization.md"
ROUTES = [route for table in (MASTER_ROUTES, NODE_ROUTES) for route in table.routes]
NODE_A = Principal(Role.NODE, "a", ("system:nodes",), node="a", key_id="k")


def test_every_route_of_either_api_has_a_decision_and_every_decision_a_route() -> None:
    assert {r.name for r in ROUTES} == set(RULES)


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.name)
def test_a_route_that_names_no_node_decides_alike_for_every_node(route: Route) -> None:
    # Otherwise the edge could never find out which of the two columns applies.
    assert route.subject is not Subject.NONE or not needs_subject(route.name)


def test_needs_subject_only_where_a_node_and_another_node_differ() -> None:
    assert needs_subject("nodes.lease")
    assert needs_subject("registrations.create")
    assert not needs_subject("healthz")
    assert not needs_subject("nodes.list")


def _doc_table() -> dict[str, set[CallerKind]]:
    """The table in docs/authorization.md: one row per route name, ✓ where allowed."""
    lines = DOC.read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| route |"))
    columns = [c.strip() for c in lines[header].strip("|").split("|")]
    kinds = [CallerKind(c) for c in columns[2:]]
    table: dict[str, set[CallerKind]] = {}
    for line in lines[header + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        name = re.sub(r"[`*]", "", cells[0])
        table[name] = {k for k, cell in zip(kinds, cells[2:], strict=True) if cell == "✓"}
    return table


def test_the_documented_table_is_the_table() -> None:
    assert _doc_table() == {name: set(kinds) for name, kinds in RULES.items()}


def test_decisions() -> None:
    assert decide("healthz", CallerKind.ANONYMOUS) is Decision.ALLOW
    assert decide("nodes.list", CallerKind.ANONYMOUS) is Decision.UNAUTHENTICATED
    assert decide("nodes.list", CallerKind.NODE_SELF) is Decision.FORBIDDEN
    assert decide("nodes.certificate", CallerKind.ADMIN) is Decision.FORBIDDEN
    assert decide("pods.logs", CallerKind.VIEWER) is Decision.ALLOW
    assert decide("pods.exec", CallerKind.VIEWER) is Decision.FORBIDDEN
    with pytest.raises(KeyError):
        decide("no.such.route", CallerKind.ADMIN)


@pytest.mark.parametrize(
    ("role", "kind"),
    [
        (Role.ANONYMOUS, CallerKind.ANONYMOUS),
        (Role.FLEET, CallerKind.FLEET),
        (Role.VIEWER, CallerKind.VIEWER),
        (Role.ADMIN, CallerKind.ADMIN),
        (Role.PROXY, CallerKind.PROXY),
        (Role.USER, CallerKind.USER),
    ],
)
def test_roles_other_than_node_are_their_own_kind(role: Role, kind: CallerKind) -> None:
    principal = Principal(role, "x")
    assert caller_of(principal, "a", current=True) == Caller(principal, kind)


def test_a_node_is_itself_only_for_its_own_node_and_while_current() -> None:
    assert caller_of(NODE_A, "a", current=True).kind is CallerKind.NODE_SELF
    assert caller_of(NODE_A, "b", current=True).kind is CallerKind.NODE_OTHER
    assert caller_of(NODE_A, None, current=True).kind is CallerKind.NODE_OTHER
    stale = caller_of(NODE_A, "a", current=False)
    assert stale.kind is CallerKind.NODE_OTHER
    assert stale.note == "node 'a' is not (or no longer) approved with this key"


def test_refusal_messages() -> None:
    lease = MASTER_ROUTES.match("PUT", "/v1/nodes/b/lease")
    exec_ = NODE_ROUTES.match("POST", "/v1/namespaces/default/pods/p/exec")
    assert (
        refusal(lease, caller_of(ANONYMOUS, None, current=False), None)
        == "a client certificate from this cluster is required"
    )
    expired = Principal(Role.ANONYMOUS, note="certificate 'x' is not valid now")
    assert refusal(lease, caller_of(expired, None, current=False), None).endswith(
        "required (certificate 'x' is not valid now)"
    )
    assert refusal(lease, caller_of(NODE_A, "b", current=True), None) == (
        "node 'a' may not PUT /v1/nodes/b/lease"
    )
    assert "no longer" in refusal(lease, caller_of(NODE_A, "a", current=False), None)
    viewer = caller_of(Principal(Role.VIEWER, "alice"), None, current=False)
    assert refusal(exec_, viewer, "n1") == "viewer 'alice' may read logs but not exec"
    assert refusal(exec_, caller_of(NODE_A, "n1", current=True), "n1") == (
        "node 'a' may not use node 'n1''s API: POST /v1/namespaces/default/pods/p/exec"
    )
    proxy = Principal(Role.PROXY, "system:node-proxy", note="the proxy must say who")
    assert refusal(exec_, caller_of(proxy, None, current=False), "n1").endswith(
        "pods/p/exec (the proxy must say who)"
    )
