"""What doctor reads from others, fuzzed (hypothesis, fixed seed): the master's node list
(``not_ready_names``, any JSON) and the lines built from remote or recorded text
(``one_line``). Neither raises, and a line stays one bounded printable line."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from agent.doctor.core import MAX_DETAIL_CHARS, one_line
from agent.doctor.master import not_ready_names
from tests.unit.fuzz.inputs import SEED

FUZZ = settings(
    max_examples=1000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8),
    st.sampled_from(["Ready", "False", "True", "items", "status", "conditions", "type"]),
)  # fmt: skip
_json: Any = st.recursive(
    _scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.sampled_from(["items", "status", "conditions", "type", "metadata", "name", "x"]),
            inner,
            max_size=4,
        ),
    ),
    max_leaves=30,
)


@seed(SEED)
@FUZZ
@given(_json)
def test_any_node_list_is_read_without_raising(data: Any) -> None:
    total, names = not_ready_names(data)
    assert len(names) <= total
    assert all(isinstance(n, str) for n in names)


@seed(SEED)
@FUZZ
@given(st.text(st.characters(), max_size=2000))
def test_one_line_is_one_bounded_printable_line(text: str) -> None:
    line = one_line(text)
    assert len(line) <= MAX_DETAIL_CHARS and line.isprintable()


def test_a_node_list_as_the_master_sends_it() -> None:
    def node(name: str, ready: str) -> dict[str, Any]:
        conditions = [
            {"type": "RuntimeReady", "status": "False"},
            {"type": "Ready", "status": ready},
        ]
        return {"metadata": {"name": name}, "status": {"conditions": conditions}}

    data = {"items": [node("a", "True"), node("b", "False"), node("c", "Unknown")]}
    assert not_ready_names(data) == (3, ["b"])
