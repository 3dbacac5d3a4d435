"""The identity names of the cluster's certificates (Kubernetes' conventions): who a subject
commonName or organization says a peer is. No cryptography import, so clients that only
compare names (nodectl --direct) start without it."""

from __future__ import annotations

NODE_CN_PREFIX = "system:node:"
NODES_GROUP = "system:nodes"
MASTERS_GROUP = "system:masters"
PROXIES_GROUP = "system:node-proxies"  # the master's streaming proxy, acting for a user
VIEWERS_GROUP = "system:viewers"  # read-only users: nodes, pods, events, logs; no exec
USER_GROUPS = (MASTERS_GROUP, VIEWERS_GROUP)  # what `node-master issue-user` may grant
