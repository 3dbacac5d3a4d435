"""The one set of name checks (agent.names) and the quoting of names in messages."""

from __future__ import annotations

import pytest

from agent import names
from agent.errors import AgentError, BadRequestError, ConfigError
from agent.pki.core import build_csr, generate_key
from agent.pki.names import NODE_CN_PREFIX, NODES_GROUP

HOSTILE = [
    "",
    "../../etc",
    "a/b",
    "*",
    "system:masters",
    "a\x00b",
    "a\nb",
    "UPPER",
    "café",
    "-a",
    "a-",
    "a..b",
    ".a",
    "a_b",
    "a b",
    "x" * 254,
]


@pytest.mark.parametrize("text", ["a", "node-1", "a.b.c", "0", "x" * 63, "x" * 63 + ".y"])
def test_valid_subdomains_pass(text: str) -> None:
    assert names.check_pod_name(text, "name") == text
    if len(text) <= names.NODE_NAME_MAX_CHARS:
        assert names.check_node_name(text, "name") == text


def test_a_node_name_fits_its_certificate() -> None:
    """The CN of a node's certificate is ``system:node:<name>``, at most 64 characters."""
    assert names.NODE_NAME_MAX_CHARS + len(NODE_CN_PREFIX) == names.X509_CN_MAX_CHARS == 64
    longest = "n" * 40 + "." + "n" * 11
    assert names.check_node_name(longest, "name") == longest
    for text in (longest + "n", "a" * 53, "a" * 63 + ".b"):
        with pytest.raises(BadRequestError, match=r"longer than 52 characters.*system:node:"):
            names.check_node_name(text, "nodeName")
    # Issued for real: the longest name's certificate can be made.
    key = generate_key()
    csr = build_csr(key, NODE_CN_PREFIX + longest, [NODES_GROUP], [longest])
    assert csr.startswith(b"-----BEGIN CERTIFICATE REQUEST-----")


def test_a_subdomain_may_be_253_characters_of_labels() -> None:
    text = ".".join(["x" * 63] * 3 + ["x" * 61])
    assert len(text) == 253
    assert names.is_dns1123_subdomain(text)
    assert not names.is_dns1123_subdomain(text + "x")
    assert not names.is_dns1123_subdomain("x" * 64)  # each part is a label


@pytest.mark.parametrize("text", HOSTILE, ids=repr)
def test_hostile_names_are_refused_everywhere(text: str) -> None:
    for check in (names.check_node_name, names.check_namespace, names.check_pod_name):
        with pytest.raises(BadRequestError) as caught:
            check(text, "metadata.name")
        message = caught.value.message
        assert message.startswith("metadata.name: ")
        assert "\n" not in message and "\x00" not in message


def test_labels_are_at_most_63_characters_without_dots() -> None:
    assert names.check_namespace("x" * 63, "ns") == "x" * 63
    for text in ("x" * 64, "a.b"):
        with pytest.raises(BadRequestError):
            names.check_container_name(text, "name")


def test_the_caller_chooses_the_error() -> None:
    def fail(field: str, problem: str) -> AgentError:
        return ConfigError(f"agent.toml: {field} {problem}")

    with pytest.raises(ConfigError, match=r'^agent.toml: node_name "a/b" is not a valid DNS-1123'):
        names.check_node_name("a/b", "node_name", fail)


@pytest.mark.parametrize("key", ["app", "example.com/app", "a_b.c-d", "A" * 63])
def test_qualified_names(key: str) -> None:
    assert names.check_qualified_name(key, "labels", "label") == key


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("Example.com/app", "the prefix"),
        ("/app", "the prefix"),
        ("a/", "label key"),
        ("a" * 64, "label key"),
        ("-a", "label key"),
        ("a/b/c", "the prefix"),
    ],
)
def test_bad_qualified_names(key: str, problem: str) -> None:
    with pytest.raises(BadRequestError, match=problem):
        names.check_qualified_name(key, "labels", "label")


def test_label_values() -> None:
    assert names.check_label_value("", "v") == ""
    assert names.check_label_value("A.b_c-1", "v") == "A.b_c-1"
    for text in ("x" * 64, "a b", "-a", "a/b"):
        with pytest.raises(BadRequestError, match="not a valid label value"):
            names.check_label_value(text, "v")


def test_host_names_are_any_case_but_not_numeric() -> None:
    assert names.is_host_name("Master.Example.com")
    assert not names.is_host_name("10.0.0.300")
    assert not names.is_host_name("a..b")
    assert not names.is_host_name("x" * 254)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain", '"plain"'),
        ("café", '"café"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("a\nb", '"a\\nb"'),
        ("a\r\tb", '"a\\r\\tb"'),
        ("nul\x00", '"nul\\x00"'),
        ("back\\slash", '"back\\\\slash"'),
        ("\x1b[31mred", '"\\x1b[31mred"'),
        ("rtl\u202eevil", '"rtl\\u202eevil"'),
        ("lone\ud800", '"lone\\ud800"'),
        ("\U000e0001tag", '"\\U000e0001tag"'),
    ],
)
def test_quote_escapes_every_control_character(text: str, shown: str) -> None:
    assert names.quote(text) == shown


def test_quote_shows_at_most_100_characters_and_the_length() -> None:
    quoted = names.quote("x" * 900_000)
    assert quoted == '"' + "x" * 100 + '"… (900000 characters)'
    assert names.quote("x" * 100) == '"' + "x" * 100 + '"'


def test_escape_keeps_printable_text_and_yields_one_line() -> None:
    assert names.escape("node-1") == "node-1"
    forged = "evil\nnode-2   Ready"
    assert names.escape(forged) == "evil\\nnode-2   Ready"
    assert "\n" not in names.escape("".join(chr(c) for c in range(0x20)))
