"""tests/supervisors.py's forge.toml writer: what it writes parses back (tomllib) to the values it was given."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

import pytest

from ..supervisors import Supervisor, TomlValue, forge_toml, toml_key, toml_value

AWKWARD = ['say "hi"', "C:\\path\\", 'both \\" at once', "tab\there", "two\nlines", "bell\x07 del\x7f", "ünï ✓", ""]


def parsed(value: TomlValue) -> Any:
    return tomllib.loads(f"v = {toml_value(value)}\n")["v"]


def test_a_whole_config_round_trips() -> None:
    node: dict[str, TomlValue] = {
        "workers": 3, "poll_interval": "200ms", "prefetch_ratio": 0.5, "verbose": True, "quiet": False,
        "worker_capabilities": ["general", "gpu"],
    }
    text = forge_toml('postgresql://u:p"w\\d@127.0.0.1:5432/db', ["app.jobs", "other"], node)
    assert tomllib.loads(text) == {
        "database": {"url": 'postgresql://u:p"w\\d@127.0.0.1:5432/db'},
        "app": {"modules": ["app.jobs", "other"]},
        "node": node,
    }


def test_without_a_url_there_is_no_database_table() -> None:
    assert tomllib.loads(forge_toml(None, ["app.jobs"], {"workers": 1})) == {
        "app": {"modules": ["app.jobs"]}, "node": {"workers": 1},
    }


@pytest.mark.parametrize("value", [True, False])
def test_a_boolean_is_a_toml_boolean(value: bool) -> None:
    assert toml_value(value) == ("true" if value else "false")  # not Python's True, which is no TOML
    assert parsed(value) is value


@pytest.mark.parametrize("text", AWKWARD)
def test_a_string_comes_back_intact(text: str) -> None:
    assert parsed(text) == text


def test_lists_of_strings_and_of_lists() -> None:
    assert parsed(AWKWARD) == AWKWARD
    assert parsed(("a", "b")) == ["a", "b"]
    assert parsed([[1, 2], ["x"], []]) == [[1, 2], ["x"], []]


@pytest.mark.parametrize("number", [0, -7, 2**40, 0.5, -1.25, 1e-05, 1e16, math.inf, -math.inf])
def test_numbers_keep_their_type_and_value(number: float) -> None:
    assert parsed(number) == number and type(parsed(number)) is type(number)


def test_nan() -> None:
    assert math.isnan(parsed(math.nan))


def test_a_key_that_is_not_bare_is_quoted() -> None:
    assert toml_key("workers") == "workers"
    assert tomllib.loads(f"{toml_key('a b.c')} = 1\n") == {"a b.c": 1}


@pytest.mark.parametrize("value", [None, {"a": 1}, b"bytes"])
def test_what_toml_cannot_say_is_refused(value: Any) -> None:
    with pytest.raises(TypeError):
        toml_value(value)


def test_a_supervisor_writes_its_forge_toml_without_starting(tmp_path: Path) -> None:
    sup = Supervisor(tmp_path / "n0", "postgresql://127.0.0.1/x", modules=["testapp.jobs"],
                     node={"workers": 1, "verbose": True}, app_path=tmp_path)
    assert tomllib.loads(sup.config.read_text())["node"] == {"workers": 1, "verbose": True}
    assert sup.proc is None and not sup.running() and sup.stop() is None and sup.core_totals() == []
