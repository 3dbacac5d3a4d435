"""sd_notify readiness from inside a container (issue 15 item 5): a notify socket per opted-in
container (``node-agent.io/notify``), its datagrams parsed and rate-limited (``wire``), read on
the event loop and turned into readiness and a watchdog the pod worker asks about (``hub``)."""
