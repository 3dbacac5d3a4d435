"""``node-agent doctor`` and ``node-master doctor``: is this host fit to run the daemon, and if
not, what to do about it.

A check is a small async function returning a :class:`agent.doctor.core.CheckResult` (name,
ok, detail, fix). They run in parallel, each under a time-out, and a check that crashes is a
failed check, never a traceback (``core``). Host probes shared by both daemons (a port's owner,
a directory's space, a certificate's expiry, the systemd unit) live in ``host``; the node's
checks in ``node``, the master's in ``master``.

Doctor only looks: it never creates, changes or removes a file, a directory or a socket (a
store is opened read-only, a state dir that is absent stays absent), and it sends the master
nothing but anonymous reads (and, on the master's own host, a read of the node list with a
short-lived in-memory viewer certificate).
"""
