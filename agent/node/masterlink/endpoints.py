"""Which master the node talks to, when several serve one cluster (``master`` as a list).

Every master of a cluster holds the same CA and the same store, so the node's pinned CA, its
certificate and its registration hold for all of them: a switch re-registers nothing, and the
pod watch resumes from its revision on the new master (a 410 there relists, as after any
reconnect).

Spread: each node ranks the masters by rendezvous hashing (highest random weight:
``sha256(node NUL url)``, highest first) and starts on its first. A fleet spreads evenly over
the masters, a node comes back to the same master after a restart, and when a master goes
away the nodes it served spread evenly over the others (each node's next choice is uniform
among the rest), not all onto the one after it in the list.

Failover: a failed attempt (connection failure, time-out, 5xx such as a 503 from a master
whose store is away) moves to the node's next master. A master that accepts connections but
never answers (SIGSTOP, a hung process) is noticed by the lease renewal's time-out, which is
short when there is another master to go to (``SILENT_MASTER_TIMEOUT_S``). While this outage
still has masters not tried, the link tries the next one after a short jitter
(``FAILOVER_SPREAD_S``: the nodes of a dead master reach the survivors spread over a few
seconds, not in one burst); once every master failed since the last working session, the
link's outage back-off paces the rounds.
A working session ends the outage; the node stays on the master it reached (no fail-back: a
master coming back gets nodes as others fail or nodes restart).

A DNS name is one endpoint: its addresses are not expanded here (the TLS name check and the
master's certificate are per name, and aiohttp's connector already tries each address the
name resolves to when one refuses the connection). List the masters to spread and to fail
over on a 503.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

# The most a switch to a master not yet tried in this outage waits (uniform jitter below it):
# with the lease time-out, a node of a killed master is on another well within 15 s.
FAILOVER_SPREAD_S = 3.0
# A silent master (it accepts connections and never answers: stopped, hung, cut off) is noticed
# by the next lease renewal, which with several masters gets this long (steady renewals only:
# a session's first, which includes the TLS handshake to a master taking over a dead one's
# nodes, gets the usual time-out). Its nodes notice at their own renewal times, spread over
# the interval already, so they switch after at most SILENT_FAILOVER_SPREAD_S. Stopped right
# after a renewal, a node is on another master within leaseRenewSeconds (10) + 2 + 1 s + the
# new master's handshake and first renewal: about 13.5 s, under the 15 s target (issue 19).
# 2 s is 20 times the renewal p99 targeted at 5,000 nodes (bench/scale.py): a master that
# slow is better left, and leaving it touches no pod.
SILENT_MASTER_TIMEOUT_S = 2.0
SILENT_FAILOVER_SPREAD_S = 1.0


def preference(urls: Sequence[str], node_name: str) -> tuple[str, ...]:
    """``urls`` in ``node_name``'s order of preference (rendezvous hashing)."""

    def weight(url: str) -> bytes:
        return hashlib.sha256(f"{node_name}\0{url}".encode()).digest()

    return tuple(sorted(dict.fromkeys(u.rstrip("/") for u in urls), key=weight, reverse=True))


class MasterEndpoints:
    """The masters, in this node's order; the current one; how many failed in this outage."""

    def __init__(self, urls: Sequence[str], node_name: str) -> None:
        if not urls:
            raise ValueError("at least one master URL")
        self.order = preference(urls, node_name)
        self._index = 0
        self._failed = 0  # masters that failed since the last working session

    @property
    def current(self) -> str:
        return self.order[self._index]

    @property
    def several(self) -> bool:
        return len(self.order) > 1

    def failed(self) -> bool:
        """The current master failed: move to the next. True when that one has not been tried
        in this outage (try it soon), False when every master has (back off first)."""
        self._failed += 1
        self._index = (self._index + 1) % len(self.order)
        if self._failed >= len(self.order):
            self._failed = 0  # the next round: each master is tried once more
            return False
        return True

    def succeeded(self) -> None:
        """A working session: the outage is over."""
        self._failed = 0
