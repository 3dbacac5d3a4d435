"""A ticket's signer is believed exactly when the node would believe the same certificate's
``node-agent-user`` headers: the master's proxy identity as ``principal_of`` classifies it
(Role.PROXY once no user is named), never a certificate that also holds an administrator's or a
viewer's group. Such a certificate is a viewer (or an administrator) to ``principal_of``, whose
headers no node believes; were it a ticket signer, its holder could sign itself a ticket with
``system:masters`` and exec on every pod (helper R's review of 5df3962)."""

from __future__ import annotations

import itertools
import time

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from agent.errors import TicketError
from agent.pki.core import create_ca, generate_key, issue, principal_of
from agent.pki.names import MASTERS_GROUP, NODE_CN_PREFIX, NODES_GROUP, PROXIES_GROUP, VIEWERS_GROUP
from agent.pki.tickets import Verifier, mint
from agent.proto.authz import Role

_CA_KEY, _CA = create_ca("signer role cluster")
_GROUPS = (PROXIES_GROUP, MASTERS_GROUP, VIEWERS_GROUP, NODES_GROUP, "team-a")
_SUBSETS = [list(c) for n in range(1, len(_GROUPS) + 1) for c in itertools.combinations(_GROUPS, n)]


@pytest.mark.parametrize("cn", ["system:node-proxy", NODE_CN_PREFIX + "n1"])
@pytest.mark.parametrize("groups", _SUBSETS, ids=[",".join(s) for s in _SUBSETS])
def test_a_signer_is_believed_exactly_when_its_headers_would_be(groups: list[str], cn: str) -> None:
    key = generate_key()
    der = issue(
        _CA_KEY, _CA, key.public_key(), common_name=cn, groups=groups, lifetime_s=3600
    ).public_bytes(Encoding.DER)
    now = time.time()
    token, ticket = mint(
        signer_key=key, signer_der=der, user="viewer-1", groups=[MASTERS_GROUP], node="n1",
        namespace="default", pod="web", action="exec", query={"command": ["id"]}, now=now,
    )  # fmt: skip
    is_proxy = principal_of(der, [_CA]).role is Role.PROXY
    verifier = Verifier([_CA])
    if is_proxy:
        assert verifier.verify(token, now) == ticket
    else:
        with pytest.raises(TicketError, match="not the master's proxy identity"):
            verifier.verify(token, now)
