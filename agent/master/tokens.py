"""Join tokens on the master: their records in the store, and the check and the use of one at
registration (the ``token`` trust rule; the format is :mod:`agent.jointoken`).

A token lives under ``/tokens/<id>`` as JSON: the SHA-256 of the whole token (never the
secret), when it was made and when it expires (``null``: never), how many uses it allows
(``null``: any number) and how many it had, the labels it puts on the nodes that join with it
and a description. Everything goes through the :class:`Store` protocol (so every backend keeps
tokens, an etcd one too), and a use is a compare-and-swap of the record read: of two nodes
racing for a token's last use exactly one gets it. Expired and used-up tokens stay until an
administrator deletes them, so that a node presenting one is told why it is refused.

What a refusal says depends on what the caller proved: an unknown id or a wrong secret get one
answer ("unknown or wrong"), and only the holder of the right secret learns that the token
expired or is used up. No message holds the secret (nor its digest).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from agent.aio.clock import Clock
from agent.errors import BadRequestError, NotFoundError, UpdateConflictError
from agent.jointoken import JoinToken, generate_token, is_token_id
from agent.master.store.base import Store
from agent.names import check_label_value, check_qualified_name, escape, quote

TOKENS_PREFIX = "/tokens/"
DEFAULT_TTL_S = 24 * 3600.0  # as kubeadm's bootstrap tokens
MAX_TTL_S = 10 * 365 * 24 * 3600.0
MAX_USAGES = 1_000_000_000
MAX_TOKEN_LABELS = 64
MAX_DESCRIPTION_CHARS = 256
CAS_ATTEMPTS = 10  # a use retried against concurrent uses of the same token
_TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_NO_DIGEST = "0" * 64  # compared against when the id is unknown: no token hashes to it


def _timestamp(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime(_TIMESTAMP_FORMAT)


def _epoch(text: str) -> float:
    return datetime.strptime(text, _TIMESTAMP_FORMAT).replace(tzinfo=UTC).timestamp()


@dataclass(frozen=True, slots=True)
class TokenCheck:
    """What a presented token is worth now: ``valid`` with the labels it gives, or the reason
    it admits nobody (without the secret)."""

    token_id: str
    valid: bool
    reason: str
    labels: Mapping[str, str] = field(default_factory=dict)


def check_ttl(ttl_s: object) -> float:
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int | float):
        raise BadRequestError("ttlSeconds must be a number of seconds (0: never expires)")
    if not math.isfinite(ttl_s) or not 0 <= ttl_s <= MAX_TTL_S:
        raise BadRequestError(
            f"ttlSeconds must be between 0 (never expires) and {MAX_TTL_S:g} seconds"
        )
    return float(ttl_s)


def check_usages(usages: object) -> int | None:
    if usages is None:
        return None
    if isinstance(usages, bool) or not isinstance(usages, int) or not 1 <= usages <= MAX_USAGES:
        raise BadRequestError(f"usages must be an integer from 1 to {MAX_USAGES} (or null: any)")
    return usages


def check_labels(labels: object) -> dict[str, str]:
    if labels is None:
        return {}
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise BadRequestError("labels must be an object of strings")
    if len(labels) > MAX_TOKEN_LABELS:
        raise BadRequestError(f"labels: {len(labels)} labels, more than {MAX_TOKEN_LABELS}")
    for key, value in labels.items():
        check_qualified_name(key, f"labels[{quote(key)}]", "label")
        check_label_value(value, f"labels[{quote(key)}]")
    return dict(labels)


def check_description(text: object) -> str:
    if text is None:
        return ""
    if not isinstance(text, str):
        raise BadRequestError("description must be a string")
    if len(text) > MAX_DESCRIPTION_CHARS or not text.isprintable():
        raise BadRequestError(
            f"description: at most {MAX_DESCRIPTION_CHARS} printable characters on one line"
        )
    return text


def check_token_id(token_id: str) -> str:
    if not is_token_id(token_id):
        raise BadRequestError(f"token id {quote(token_id)} is not 6 characters of a-z and 0-9")
    return token_id


def shown(record: dict[str, Any], now: float) -> dict[str, Any]:
    """A token as ``token list`` shows it: never its secret nor its digest."""
    usages = record.get("usages")
    expires = record.get("expiresAt")
    expired = expires is not None and _epoch(expires) <= now
    left = None if usages is None else max(0, usages - int(record.get("used", 0)))
    return {
        "id": record["id"],
        "createdAt": record.get("createdAt"),
        "expiresAt": expires,
        "expired": expired,
        "usages": usages,
        "used": record.get("used", 0),
        "usesLeft": left,
        "labels": record.get("labels", {}),
        "description": record.get("description", ""),
    }


class JoinTokens:
    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    async def create(
        self,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        usages: int | None = None,
        labels: Mapping[str, str] | None = None,
        description: str = "",
    ) -> tuple[JoinToken, dict[str, Any]]:
        """A new token (its secret is shown this once) and its record as listed."""
        ttl_s = check_ttl(ttl_s)
        record: dict[str, Any] = {
            "usages": check_usages(usages),
            "labels": check_labels(dict(labels or {})),
            "description": check_description(description),
        }
        now = self.clock.time()
        for _ in range(CAS_ATTEMPTS):  # a fresh id on the (1 in 2e9) chance that one exists
            token = generate_token()
            record.update(
                id=token.id,
                digest=token.digest,
                createdAt=_timestamp(now),
                expiresAt=_timestamp(now + ttl_s) if ttl_s > 0 else None,
                used=0,
            )
            data = json.dumps(record, sort_keys=True).encode()
            if await self.store.compare_and_swap(TOKENS_PREFIX + token.id, data, 0) is not None:
                return token, shown(record, now)
        raise UpdateConflictError("could not find a free token id; retry")

    async def list(self) -> list[dict[str, Any]]:
        items, _ = await self.store.list_prefix(TOKENS_PREFIX)
        now = self.clock.time()
        return [shown(json.loads(item.value), now) for item in items]

    async def delete(self, token_id: str) -> None:
        check_token_id(token_id)
        if await self.store.delete(TOKENS_PREFIX + token_id) is None:
            raise NotFoundError(f"token {token_id} not found")

    async def _read(
        self, token: JoinToken, spent: bool = False
    ) -> tuple[dict[str, Any], int, TokenCheck]:
        found = await self.store.get(TOKENS_PREFIX + token.id)
        record: dict[str, Any] = json.loads(found.value) if found is not None else {}
        revision = found.mod_revision if found is not None else 0
        reason = ""
        # The digest is computed and compared whether the id exists or not, so that the time of
        # an answer does not tell an unknown id from a wrong secret.
        if not token.matches(str(record.get("digest", _NO_DIGEST))) or found is None:
            reason = (
                f"join token {token.id} is unknown (deleted, or never made) or its secret is wrong"
            )
        elif (
            record.get("expiresAt") is not None and _epoch(record["expiresAt"]) <= self.clock.time()
        ):
            reason = f"join token {token.id} expired at {record['expiresAt']}"
        elif (
            not spent
            and record.get("usages") is not None
            and int(record.get("used", 0)) >= record["usages"]
        ):
            reason = f"join token {token.id} is used up ({record['usages']} uses allowed)"
        labels = record.get("labels", {}) if not reason else {}
        return record, revision, TokenCheck(token.id, not reason, escape(reason), labels)

    async def check(self, token: JoinToken, *, spent: bool = False) -> TokenCheck:
        """Whether ``token`` would admit a node now (nothing is written). ``spent``: the caller
        already holds one of its uses (the same node and key asking again), so the use limit
        does not apply; existence, the secret and the expiry still do."""
        return (await self._read(token, spent))[2]

    async def use(self, token: JoinToken) -> TokenCheck:
        """Take one use of ``token``: a valid answer means this caller got it (a token with
        no limit is not written to)."""
        for _ in range(CAS_ATTEMPTS):
            record, revision, verdict = await self._read(token)
            if not verdict.valid or record.get("usages") is None:
                return verdict
            record["used"] = int(record.get("used", 0)) + 1
            data = json.dumps(record, sort_keys=True).encode()
            if (
                await self.store.compare_and_swap(TOKENS_PREFIX + token.id, data, revision)
                is not None
            ):
                return verdict
        return TokenCheck(token.id, False, f"join token {token.id} is in use by many nodes; retry")
