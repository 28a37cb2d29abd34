"""logs.py's formatters: the text line and the JSON object (`[log] format = "json"`), and that no record makes
either raise."""

from __future__ import annotations

import json
import logging
import re

import pytest

from forge import logs


class _Unrepresentable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def _record(message: str = "hello %s", args: tuple[object, ...] = ("world",), **fields: object) -> logging.LogRecord:
    record = logging.LogRecord("forge.job", logging.WARNING, __file__, 1, message, args, None)
    if fields:
        record.forge_fields = fields
    return record


@pytest.fixture
def formatters(monkeypatch):
    """The (text, json) formatters configure installs, the root logger restored afterwards."""
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)
    found = []
    for name in ("text", "json"):
        logs.configure("info", name)
        found.append(root.handlers[0].formatter)
    return found


def test_json_has_the_keys_and_the_fields(formatters):
    _, as_json = formatters
    entry = json.loads(as_json.format(_record(job_id=7, amount=1.5, pid="a field")))
    assert entry["message"] == "hello world" and entry["level"] == "warning" and entry["logger"] == "forge.job"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", entry["time"]), entry
    assert isinstance(entry["pid"], int) and entry["field.pid"] == "a field"
    assert (entry["job_id"], entry["amount"]) == (7, 1.5)


def test_json_carries_the_traceback():
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord("forge", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    entry = json.loads(logs._JsonFormatter().format(record))
    assert "ValueError: boom" in entry["exception"]


@pytest.mark.parametrize("which", [0, 1], ids=["text", "json"])
def test_nothing_a_record_holds_makes_a_formatter_raise(formatters, which):
    cycle: list[object] = []
    cycle.append(cycle)
    odd = _record(thing=object(), cycle=cycle, broken=_Unrepresentable(), huge=2**200, keys={(1, 2): 3})
    line = formatters[which].format(odd)
    assert "\n" not in line and "<_Unrepresentable object: repr() raised RuntimeError>" in line
    if which == 1:
        entry = json.loads(line)
        assert entry["cycle"] == "[[...]]" and entry["message"] == "hello world"


def test_a_message_whose_arguments_do_not_fit_is_written_unformatted(formatters):
    entry = json.loads(formatters[1].format(_record("%d items", ("many",))))
    assert entry["message"] == "'%d items' ('many',)"
