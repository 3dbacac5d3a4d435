"""``master`` as one URL or several: a TOML string (one URL, or several separated by commas),
a TOML list, the flag's comma-separated list; refused: an empty list, a URL that is not
https://, the same master twice, more than MASTERS_MAX."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import MASTERS_MAX, load_agent_config
from agent.errors import ConfigError

A, B = "https://m1.example:6443", "https://10.0.0.2:6443"


def load(tmp_path: Path, toml: str, **flags: object) -> tuple[str, ...] | None:
    path = tmp_path / "agent.toml"
    path.write_text('node_name = "n1"\n' + toml)
    return load_agent_config(path, flags, path_required=True).master


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("", None),
        (f'master = "{A}"\n', (A,)),
        (f'master = "{A},{B}"\n', (A, B)),
        (f'master = ["{A}", "{B}"]\n', (A, B)),
    ],
)
def test_one_url_or_several(tmp_path: Path, toml: str, expected: object) -> None:
    assert load(tmp_path, toml) == expected


def test_the_flag_takes_a_comma_separated_list(tmp_path: Path) -> None:
    assert load(tmp_path, f'master = "{A}"\n', master=f"{B}, {A}") == (B, A)


@pytest.mark.parametrize(
    ("toml", "words"),
    [
        ("master = []\n", "master is an empty list; leave it unset instead"),
        (
            f'master = ["{A}", "http://m2:6443"]\n',
            "master 'http://m2:6443' must be an https:// URL",
        ),
        (f'master = ["{A}", "{A}/"]\n', f"master '{A}/' is listed twice"),
        ("master = [1]\n", "key 'master' must be a list of strings"),
        (
            "master = ["
            + ", ".join(f'"https://m{i}:6443"' for i in range(MASTERS_MAX + 1))
            + "]\n",
            f"master lists more than {MASTERS_MAX} URLs",
        ),
    ],
)
def test_refused_naming_the_file_and_the_problem(tmp_path: Path, toml: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, toml)
    assert str(caught.value).startswith(str(tmp_path / "agent.toml"))
    assert words in str(caught.value)
