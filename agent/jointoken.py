"""Join tokens: their format, how one is made, and how its secret is kept and compared.

A join token is ``<id>.<secret>`` as kubeadm's bootstrap tokens: six and sixteen characters of
``[a-z0-9]``. The id is public (``node-master token list`` and ``delete`` name it, refusals
and logs may show it); the secret never leaves the operator, the agent's config and the
registration request. 16 characters of 36 make 82 bits: too many to guess within the
registration rate limit, so an unsalted SHA-256 of the whole token is what the master keeps
(a slow password hash protects guessable secrets; these are not), compared in constant time.

Sans-IO, and imports nothing but :mod:`agent.errors` (the agent's config and the master's
registration body both check tokens with :func:`parse_token`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from agent.errors import BadRequestError

ID_CHARS = 6
SECRET_CHARS = 16
TOKEN_CHARS = ID_CHARS + 1 + SECRET_CHARS
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
_TOKEN = re.compile(rf"([a-z0-9]{{{ID_CHARS}}})\.([a-z0-9]{{{SECRET_CHARS}}})")
_ID = re.compile(rf"[a-z0-9]{{{ID_CHARS}}}")
FORMAT_HELP = (
    f"a join token is <id>.<secret>: {ID_CHARS} and {SECRET_CHARS} characters of a-z and 0-9 "
    "(as `node-master token create` prints it)"
)


@dataclass(frozen=True, slots=True)
class JoinToken:
    id: str
    secret: str

    def __str__(self) -> str:
        return f"{self.id}.{self.secret}"

    def __repr__(self) -> str:  # a token in a traceback or a debug log shows its id only
        return f"JoinToken(id={self.id!r}, secret=<hidden>)"

    @property
    def digest(self) -> str:
        """What the master stores: the hex SHA-256 of the whole token."""
        return hashlib.sha256(str(self).encode()).hexdigest()

    def matches(self, digest: str) -> bool:
        """Whether ``digest`` is this token's, in time independent of where they differ."""
        return hmac.compare_digest(self.digest.encode(), digest.encode())


def parse_token(text: object, field: str = "token") -> JoinToken:
    """A token from outside (a request body, a config file, a flag); BadRequestError naming
    ``field`` when it is not one. The message never repeats the text: it may be a secret."""
    if not isinstance(text, str):
        raise BadRequestError(f"{field} must be a string ({FORMAT_HELP})")
    # Surrounding whitespace is a file's trailing newline or a paste, never part of a token.
    match = _TOKEN.fullmatch(text.strip()) if len(text) <= 4 * TOKEN_CHARS else None
    if match is None:
        raise BadRequestError(f"{field} is not a join token ({FORMAT_HELP})")
    return JoinToken(match[1], match[2])


def is_token_id(text: str) -> bool:
    return _ID.fullmatch(text) is not None


def generate_token() -> JoinToken:
    def chars(n: int) -> str:
        return "".join(secrets.choice(ALPHABET) for _ in range(n))

    return JoinToken(chars(ID_CHARS), chars(SECRET_CHARS))
