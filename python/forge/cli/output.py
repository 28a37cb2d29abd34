"""How `forge` commands print: JSON for --json, rich tables and key/value views for people.

JSON: times in ISO 8601, priorities by name, a job as an object keyed by the forge_jobs column names.
Colours and styles only when stdout is a terminal (rich decides, and honours NO_COLOR); piped output is plain
text, wide enough not to cut columns.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import click
import msgspec

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

__all__ = ["age", "console", "count", "echo_json", "echo_json_line", "job_json", "table", "when"]

#: The width of piped (non-terminal) output: rich would cut tables at 80 columns.
PIPED_WIDTH = 200


def job_json(record: Any) -> dict[str, Any]:
    """A forge.JobRecord (a msgspec Struct: a field per forge_jobs column, priority by name) as its JSON
    object: times in ISO 8601, durations (dead_letter_retain) as ISO 8601 durations, UUIDs as text."""
    data: dict[str, Any] = msgspec.to_builtins(record)
    return data


def echo_json(value: Any) -> None:
    """`value` (Structs, datetimes, UUIDs... as msgspec writes them) as indented JSON on stdout."""
    click.echo(json.dumps(msgspec.to_builtins(value), indent=2))


def echo_json_line(value: Any) -> None:
    """`value` as JSON on one line of stdout (a stream of objects, one per line); click.echo flushes it, so a
    reader of a pipe sees each line as it comes."""
    click.echo(json.dumps(msgspec.to_builtins(value)))


@functools.cache
def console() -> Console:
    """The console for stdout."""
    from rich.console import Console

    probe = Console()
    return probe if probe.is_terminal else Console(width=PIPED_WIDTH)


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Print a table of `rows` under `columns` (cells as str()); numbers are right-aligned."""
    from rich.table import Table

    rows = [list(row) for row in rows]
    shown: Table = Table(title=title, title_justify="left", box=None, header_style="bold", pad_edge=False)
    for index, name in enumerate(columns):
        numeric = bool(rows) and all(_is_number(row[index]) for row in rows)
        shown.add_column(name, justify="right" if numeric else "left", overflow="fold")
    for row in rows:
        shown.add_row(*("" if cell is None else str(cell) for cell in row))
    console().print(shown)


def _is_number(cell: Any) -> bool:
    """Whether a cell is a number or a count (an estimated one is ~N), to right-align its column."""
    return isinstance(cell, (int, float)) or (isinstance(cell, str) and cell.removeprefix("~").isdigit())


def count(number: int, estimated: bool) -> str:
    """A count for people: ~N when it is an estimate."""
    return f"~{number}" if estimated and number else str(number)


def when(moment: datetime | None) -> str:
    """A time for people: ISO 8601 to the second, in UTC."""
    if moment is None:
        return ""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def age(seconds: float) -> str:
    """A duration for people: 45s, 12m, 3h5m, 2d4h."""
    whole = int(seconds)
    if whole < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"
