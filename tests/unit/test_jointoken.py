"""Join tokens' format (agent.jointoken): parsing from outside, generation, the digest the
master keeps, and that no message or repr shows a secret."""

from __future__ import annotations

import pytest

from agent.errors import BadRequestError
from agent.jointoken import (
    ID_CHARS,
    SECRET_CHARS,
    JoinToken,
    generate_token,
    is_token_id,
    parse_token,
)

GOOD = "abc123.0123456789abcdef"


def test_a_token_parses_into_its_id_and_secret() -> None:
    token = parse_token(GOOD)
    assert (token.id, token.secret) == ("abc123", "0123456789abcdef")
    assert str(token) == GOOD
    assert parse_token(GOOD + "\n") == token  # a file's trailing newline


@pytest.mark.parametrize(
    "text",
    [
        "",
        "abc123",
        "abc123.",
        "ABC123.0123456789ABCDEF",  # kubeadm's alphabet: lowercase only
        "abc12.0123456789abcdef",
        "abc123.0123456789abcde",
        "abc123.0123456789abcdefg",
        "abc123:0123456789abcdef",
        "abc123.0123456789abcde\u0661",  # an Arabic-Indic digit
        "abc123.0123456789abcdef.x",
        "x" * 10_000,
    ],
)
def test_anything_else_is_refused_without_repeating_it(text: str) -> None:
    with pytest.raises(BadRequestError, match="token is not a join token") as caught:
        parse_token(text)
    assert "0123456789" not in str(caught.value)


@pytest.mark.parametrize("value", [None, 5, ["abc123.0123456789abcdef"], {"id": "abc123"}])
def test_a_token_must_be_a_string(value: object) -> None:
    with pytest.raises(BadRequestError, match="token must be a string"):
        parse_token(value)


def test_generated_tokens_have_the_format_and_differ() -> None:
    tokens = {str(generate_token()) for _ in range(200)}
    assert len(tokens) == 200
    for text in tokens:
        token = parse_token(text)
        assert len(token.id) == ID_CHARS and len(token.secret) == SECRET_CHARS
        assert is_token_id(token.id)


def test_the_digest_matches_only_the_same_token_and_the_repr_hides_the_secret() -> None:
    token = parse_token(GOOD)
    assert token.matches(token.digest)
    assert not JoinToken("abc123", "0123456789abcdee").matches(token.digest)
    assert not token.matches("")
    assert token.secret not in token.digest
    assert token.secret not in repr(token) and "abc123" in repr(token)
