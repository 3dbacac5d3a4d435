"""The link's state as types: what the link is doing now (a :class:`LinkCondition`) and a
message for people. Health and readiness decide on the condition, never on the message."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class LinkCondition(StrEnum):
    NOT_CONTACTED = "NotContacted"
    CONNECTED = "Connected"
    UNREACHABLE = "Unreachable"  # down, partitioned, 5xx, TLS failing: the node coasts
    PENDING_APPROVAL = "PendingApproval"  # registered, an administrator has not decided yet
    REGISTRATION_DENIED = "RegistrationDenied"  # 403/409: the trust policy refuses the node
    CA_REJECTED = "CaRejected"  # the master's CA does not match the configured pins
    NOT_THE_MASTER = "NotTheMaster"  # the server lacks the master's mark (a node's certificate)
    IDENTITY_REJECTED = "IdentityRejected"  # our certificate is refused: registering again
    IDENTITY_UNUSABLE = "IdentityUnusable"  # our key or certificate files cannot be used


# The master refuses the node, or the node refuses the master: the node's own business (health
# says so). An unreachable master is not: the node coasts on its checkpoint.
REFUSALS = frozenset(
    {
        LinkCondition.PENDING_APPROVAL,
        LinkCondition.REGISTRATION_DENIED,
        LinkCondition.CA_REJECTED,
        LinkCondition.NOT_THE_MASTER,
    }
)


@dataclass(slots=True)
class LinkStatus:
    condition: LinkCondition = LinkCondition.NOT_CONTACTED
    message: str = "master: not contacted yet"
    registered: bool = False

    def set(self, condition: LinkCondition, message: str) -> None:
        self.condition = condition
        self.message = message

    @property
    def connected(self) -> bool:
        return self.condition is LinkCondition.CONNECTED

    @property
    def refused(self) -> bool:
        return self.condition in REFUSALS
