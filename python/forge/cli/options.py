"""The values of `forge` options, checked as the command line is read: moments (ISO 8601, or a duration ago),
job ids, statuses. Each checker is a click callback; a bad value is a usage error (exit 2) whose one-line
message names the option and the value.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import click

from forge.status import STATUSES
from forge.units import parse_duration

__all__ = ["STATUS", "job_id", "job_ids", "moment", "parse_moment", "since", "since_option"]

STATUS = click.Choice(STATUSES)
_Command = TypeVar("_Command", bound=Callable[..., Any])
_MAX_ID = 2**63 - 1  # ids are bigint


def parse_moment(text: str) -> datetime:
    """An ISO 8601 time, aware; one without an offset is in this machine's local time. ValueError if not one."""
    found = datetime.fromisoformat(text)
    return found.astimezone() if found.utcoffset() is None else found


def moment(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    """An ISO 8601 time (2026-12-01T20:00:00Z; local time without an offset)."""
    if value is None:
        return None
    try:
        return parse_moment(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time (e.g. 2026-12-01T20:00:00Z)") from None


def since(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | float | None:
    """A moment given as a duration ago (1h, 30m, 7d: its seconds, which forge.Jobs counts back from the
    database's clock) or as an ISO 8601 time."""
    if value is None:
        return None
    try:
        return parse_duration(value, what="since")
    except ValueError:
        pass
    try:
        return parse_moment(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither a duration (1h, 30m, 7d) nor an ISO 8601 time") from None


def job_id(ctx: click.Context, param: click.Parameter, value: str) -> int:
    """A job id: a whole number from 1 to 2**63 - 1."""
    number = int(value) if value.isdigit() else 0
    if not 1 <= number <= _MAX_ID:
        raise click.BadParameter(f"{value!r} is not a job id (a whole number from 1 to {_MAX_ID})")
    return number


def job_ids(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[int, ...]:
    """Job ids, each checked as job_id() does."""
    return tuple(job_id(ctx, param, value) for value in values)


def since_option(what: str) -> Callable[[_Command], _Command]:
    """--since: only jobs that `what` (e.g. "were created") since then."""
    return click.option("--since", callback=since, metavar="DURATION|ISO-TIME",
                        help=f"Only jobs that {what} since then: a duration ago (1h) or an ISO 8601 time.")
