"""Lifecycle hooks of containers: the preStart preconditions (our extension), postStart and
preStop (Kubernetes').

:mod:`.preconditions` owns the precondition state machine of one container (pending, passed,
failed; period, deadline, failure threshold) as a pure object the pod worker steps;
:mod:`.runner` runs one check or one handler against the runtime and the network (the handler
actions themselves are :mod:`agent.node.handlers`, shared with probes). The pod worker gets a
:class:`~agent.node.hooks.runner.LifecycleHooks` from the composition root.
"""
