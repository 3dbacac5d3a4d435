"""One user cannot fill a node's replay cache for everyone (helper R's review of 5df3962): any
reader may ask the master for logs tickets, as many as it likes, and use them on a node; at the
cache's capacity every user's direct stream to that node was refused (a 403 that nodectl takes
as final). A user's live tickets are bounded to a share of the cache; the others' still go."""

from __future__ import annotations

import pytest

from agent.errors import TicketError
from agent.proto.tickets import CLOCK_SKEW_S, ReplayCache, Ticket


def ticket(n: int, user: str, iat: int) -> Ticket:
    return Ticket(f"{n:032x}", user, (), "n1", "d", "p", "logs", "0" * 64, iat, iat + 30)


def test_one_users_tickets_take_a_share_of_the_cache_not_all_of_it() -> None:
    cache = ReplayCache(capacity=8, per_user=3)
    for n in range(3):
        cache.use(ticket(n, "mallory", 1000), 1000)
    with pytest.raises(TicketError, match="too many tickets of 'mallory' in use on this node"):
        cache.use(ticket(3, "mallory", 1000), 1000)
    for n in range(10, 15):  # the rest of the cache is the others'
        cache.use(ticket(n, f"user-{n}", 1000), 1000)
    with pytest.raises(TicketError, match="too many tickets in use on this node"):
        cache.use(ticket(20, "alice", 1000), 1000)
    # Once mallory's first tickets expired (exp + skew), mallory's share is free again.
    later = 1000 + 30 + CLOCK_SKEW_S + 1
    cache.use(ticket(4, "mallory", later), later)
    assert len(cache) == 1


def test_the_default_share_is_a_sixteenth() -> None:
    cache = ReplayCache()
    assert cache.per_user == cache.capacity // 16 == 4096
