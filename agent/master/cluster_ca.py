"""The cluster CA the store belongs to (issue 19 item 5): masters sharing a store must share
the CA, or a node registered through one would be refused by the next (its certificate from
another CA), and a node's pinned CA would not be the master's.

The first master to start on a store records its CA certificate there (``/cluster/ca``:
the certificate and its SHA-256 fingerprint), by compare-and-swap on an absent key, so that
of two masters starting at once on a new store one records and the other compares. Every
master compares its own ``pki/ca.crt`` with the record at each start and refuses to start
with a :class:`~agent.errors.ConfigError` naming both fingerprints when they differ (a replica
made by ``node-master init`` instead of from a copy of the first master's data dir:
docs/operations.md, "Several masters"). The record travels with the store
(``node-master migrate`` copies it like any key).
"""

from __future__ import annotations

import hashlib
import json
import logging

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from agent.aio.logs import kv
from agent.errors import ConfigError
from agent.master.store.base import Store

log = logging.getLogger(__name__)

CA_KEY = "/cluster/ca"
FINGERPRINT_PREFIX = "sha256:"
# Record and compare at most this many times: each failed swap means another master wrote the
# record meanwhile, so the second read finds it.
ATTEMPTS = 3
# In the master's pki dir after `node-master init --force` replaced an existing CA: the new CA's
# fingerprint. At the next start that CA replaces the store's record (the documented manual CA
# rotation) instead of being refused; the mark is removed once the record is this CA's.
ROTATION_MARK = "ca-rotation"


def fingerprint(cert: x509.Certificate) -> str:
    """``sha256:<hex>`` of the certificate's DER (as ``openssl x509 -fingerprint -sha256``
    prints it, lower case and without colons)."""
    return FINGERPRINT_PREFIX + hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def _recorded(value: bytes) -> str:
    """The fingerprint in a record; ConfigError when the record is not one of ours."""
    try:
        record = json.loads(value)
        recorded = record["fingerprint"] if isinstance(record, dict) else None
    except (ValueError, RecursionError, KeyError):
        recorded = None
    if not isinstance(recorded, str) or not recorded.startswith(FINGERPRINT_PREFIX):
        raise ConfigError(
            f"the store's cluster CA record ({CA_KEY}) is not readable: refusing to start "
            "(restore it from a backup, or delete it to record this master's CA)"
        )
    return recorded


async def check_cluster_ca(
    store: Store, ca_cert: x509.Certificate, rotation: str | None = None
) -> str:
    """Record ``ca_cert`` as the store's cluster CA if none is, else check it is the one
    recorded; its fingerprint. ConfigError (the master does not start) when it differs, unless
    ``rotation`` (the ROTATION_MARK's content) names this CA: then it replaces the record."""
    mine = fingerprint(ca_cert)
    record = json.dumps(
        {"fingerprint": mine, "certificate": ca_cert.public_bytes(Encoding.PEM).decode()},
        sort_keys=True,
    ).encode()
    for _ in range(ATTEMPTS):
        current = await store.get(CA_KEY)
        if current is None:
            if await store.compare_and_swap(CA_KEY, record, 0) is not None:
                log.info("cluster CA recorded in the store", extra=kv(ca=mine))
                return mine
            continue  # another master recorded one just now: compare with it
        recorded = _recorded(current.value)
        if recorded != mine and rotation == mine:
            if await store.compare_and_swap(CA_KEY, record, current.mod_revision) is None:
                continue  # changed meanwhile: look again
            log.warning(
                "cluster CA rotated: the store's record replaced",
                extra=kv(ca=mine, previous=recorded),
            )
            return mine
        if recorded != mine:
            raise ConfigError(
                f"this master's CA ({mine}) is not the cluster's: the store records {recorded} "
                "(the CA of the first master that ran on it). A replica starts from a copy of "
                "the first master's data dir, not from its own `node-master init` "
                "(docs/operations.md, several masters); refusing to start"
            )
        return mine
    raise ConfigError(f"the store's cluster CA record ({CA_KEY}) keeps changing: refusing to start")
