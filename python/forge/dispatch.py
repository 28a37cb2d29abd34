"""Dispatching jobs through the caller's own psycopg connection.

The insert runs in the caller's transaction: the job exists, and workers are
woken (NOTIFY), only if that transaction commits.

psycopg is imported on the first dispatch, not with forge: the supervisor
imports the app (and so forge) before forking its zygote, and reaches its
first claim without it (loading it is a large part of a boot).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Iterable

import msgspec

from .db.queries import load_queries
from .errors import DispatchError
from .job import PRIORITIES, Job, convert_input
from .units import parse_duration

if TYPE_CHECKING:
    import psycopg

_SQL = load_queries("jobs.sql")

#: Largest encoded input accepted, in bytes: bigger payloads belong in storage, not in the queue.
MAX_INPUT_BYTES = 1024 * 1024


def dispatch(
    conn: psycopg.Connection[Any],
    job: Job[Any],
    input: Any,
    *,
    at: datetime | None = None,
    delay: Any = None,
    priority: str | None = None,
    parent_id: int | None = None,
) -> int:
    """Insert one job in `conn`'s current transaction and return its id.

    at: run no earlier than this aware datetime; delay: a duration from now
    ("5m", seconds, timedelta); priority overrides the job's own.
    """
    params = _insert_params(job, _encode(job, input), at, delay, priority, parent_id)
    with _raw_cursor(conn) as cur:
        cur.execute(_SQL["insert_job"], params)
        row = cur.fetchone()
    assert row is not None
    return int(row[0])


def dispatch_many(
    conn: psycopg.Connection[Any],
    job: Job[Any],
    inputs: Iterable[Any],
    *,
    at: datetime | None = None,
    delay: Any = None,
    priority: str | None = None,
    parent_id: int | None = None,
) -> list[int]:
    """Insert many jobs of one type in one round trip; ids in input order.

    Every input is validated first: one bad input raises and inserts nothing.
    """
    params = _insert_params(job, _encode_many(job, inputs), at, delay, priority, parent_id)
    with _raw_cursor(conn) as cur:
        cur.execute(_SQL["insert_jobs"], params)
        row = cur.fetchone()
    assert row is not None
    return list(row[0])


async def dispatch_async(
    conn: psycopg.AsyncConnection[Any],
    job: Job[Any],
    input: Any,
    *,
    at: datetime | None = None,
    delay: Any = None,
    priority: str | None = None,
    parent_id: int | None = None,
) -> int:
    """dispatch() for a psycopg.AsyncConnection."""
    params = _insert_params(job, _encode(job, input), at, delay, priority, parent_id)
    async with _async_raw_cursor(conn) as cur:
        await cur.execute(_SQL["insert_job"], params)
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def dispatch_many_async(
    conn: psycopg.AsyncConnection[Any],
    job: Job[Any],
    inputs: Iterable[Any],
    *,
    at: datetime | None = None,
    delay: Any = None,
    priority: str | None = None,
    parent_id: int | None = None,
) -> list[int]:
    """dispatch_many() for a psycopg.AsyncConnection."""
    params = _insert_params(job, _encode_many(job, inputs), at, delay, priority, parent_id)
    async with _async_raw_cursor(conn) as cur:
        await cur.execute(_SQL["insert_jobs"], params)
        row = await cur.fetchone()
    assert row is not None
    return list(row[0])


def _encode(job: Job[Any], input: Any) -> str:
    _check_job(job)
    encoded = msgspec.json.encode(convert_input(job, input))
    if len(encoded) > MAX_INPUT_BYTES:
        raise DispatchError(
            f"input for job {job.name!r} is {len(encoded)} bytes encoded; the limit is {MAX_INPUT_BYTES}"
        )
    return encoded.decode()


def _encode_many(job: Job[Any], inputs: Iterable[Any]) -> str:
    _check_job(job)
    checked = [convert_input(job, value) for value in inputs]
    encoded = [msgspec.json.encode(value) for value in checked]
    for index, item in enumerate(encoded):
        if len(item) > MAX_INPUT_BYTES:
            raise DispatchError(
                f"input {index} for job {job.name!r} is {len(item)} bytes encoded; the limit is {MAX_INPUT_BYTES}"
            )
    return (b"[" + b",".join(encoded) + b"]").decode()


def _insert_params(
    job: Job[Any],
    encoded: str,
    at: datetime | None,
    delay: Any,
    priority: str | None,
    parent_id: int | None,
) -> tuple[Any, ...]:
    if at is not None and delay is not None:
        raise DispatchError("give at= or delay=, not both")
    if at is not None and (not isinstance(at, datetime) or at.tzinfo is None):
        raise DispatchError(f"at={at!r}: must be a timezone-aware datetime")
    delay_seconds = None
    if delay is not None:
        try:
            delay_seconds = parse_duration(delay, what="delay")
        except ValueError as exc:
            raise DispatchError(str(exc)) from None
    rank = job.priority_rank if priority is None else _rank(priority)
    resources = None if job.resources is None else msgspec.json.encode(job.resources.to_json()).decode()
    return (
        job.name,
        encoded,
        rank,
        job.retry.max_attempts,
        at,
        delay_seconds,
        job.capability,
        resources,
        parent_id,
        job.dead_letter_retain,
    )


def _rank(priority: str) -> int:
    try:
        return PRIORITIES[priority]
    except KeyError:
        raise DispatchError(f"priority={priority!r}: must be one of {', '.join(PRIORITIES)}") from None


def _check_job(job: Any) -> None:
    if not isinstance(job, Job):
        raise DispatchError(f"{job!r} is not a job: pass the function decorated with @forge.job")


def _raw_cursor(conn: Any) -> psycopg.RawCursor[Any]:
    """A $n-parameter cursor on the caller's connection, once it is known to be a sync one."""
    import psycopg

    if isinstance(conn, psycopg.AsyncConnection):
        raise DispatchError("this is an AsyncConnection: use forge.dispatch_async / dispatch_many_async")
    if not isinstance(conn, psycopg.Connection):
        raise DispatchError(f"dispatch needs a psycopg.Connection, got {type(conn).__name__}")
    return psycopg.RawCursor(conn)


def _async_raw_cursor(conn: Any) -> psycopg.AsyncRawCursor[Any]:
    import psycopg

    if not isinstance(conn, psycopg.AsyncConnection):
        raise DispatchError(f"dispatch_async needs a psycopg.AsyncConnection, got {type(conn).__name__}")
    return psycopg.AsyncRawCursor(conn)
