"""Probes: startup, readiness and liveness checks of app containers (Kubernetes semantics).

* :mod:`.base`: what the pod worker sees — the :class:`~.base.Prober` protocol, the per-container
  :class:`~.base.ProbeState`, and :data:`~.base.NO_PROBES` for a worker without a prober;
* :mod:`.prober`: the prober manager (one per agent, built by the composition root) and its
  probe workers, one task per container and probe kind;
* :mod:`.grpc`: the gRPC health-checking call over the project's HTTP/2 client.

exec, httpGet and tcpSocket are :mod:`agent.node.handlers`' (shared with lifecycle hooks).
"""
