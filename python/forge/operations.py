"""Operating jobs from Python: forge.Jobs(conn) and forge.AsyncJobs(aconn).

Find jobs (get, list, get_dead_letter_jobs) and their log lines (logs), act on them (retry, retry_all, discard,
discard_all, cancel) and pause job types (pause, resume, paused), through the caller's own psycopg connection and
in its transaction, like dispatch: nothing is committed here, and on an autocommit connection each call is one
transaction of its own. The forge CLI is a thin layer over Jobs.

Each operation is written once, as a plan: a generator that yields the statements it needs (the blocks of
db/sql/operations.sql, with their parameters) and is sent each one's rows. Jobs runs a plan on a Connection,
AsyncJobs on an AsyncConnection: the same statements, in the same order, with the same checks.

A changing call by ids is all-or-nothing: unless every id names a job in a state the call takes, it raises
(JobNotFound, JobStateError, naming the ids and their states) and changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager, nullcontext
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple, TypeAlias, TypeVar

from .db.queries import load_queries
from .errors import JobNotFound, JobStateError, OperationError
from .job import registry
from .records import JobLogLine, JobRecord, record
from .units import parse_duration

if TYPE_CHECKING:
    import psycopg

__all__ = ["BATCH_SIZE", "AsyncJobs", "JobLogLine", "JobRecord", "Jobs"]

_SQL = load_queries("operations.sql")

#: Rows retry_all and discard_all change per statement: each statement stays short (its row locks, its
#: statement_timeout), and 100,000 dead letters take 10 of them, all in one transaction.
BATCH_SIZE = 10_000

STATUSES = ("pending", "claimed", "running", "completed", "retry", "failed", "dead_letter", "discarded", "cancelled")
RETRYABLE = ("failed", "dead_letter", "discarded", "cancelled")
#: What discard and discard_all take, and what retry_all and discard_all select by (the jobs that failed).
FAILED = ("failed", "dead_letter")
#: What cancel takes: waiting jobs end at once, claimed and running ones are stopped by the node holding them.
CANCELLABLE = ("pending", "retry", "claimed", "running")
#: Most attempts a retry may add: max_attempts is a PostgreSQL integer.
MAX_MORE_ATTEMPTS = 1_000_000

_MAX_ID = 2**63 - 1  # ids are bigint

T = TypeVar("T")
Row: TypeAlias = "dict[str, Any]"


Records: TypeAlias = "list[JobRecord]"
LogLines: TypeAlias = "list[JobLogLine]"
Names: TypeAlias = "list[str]"


class _Statement(NamedTuple):
    name: str  # of its block in operations.sql
    params: tuple[Any, ...]


#: An operation: yields statements, is sent each one's rows, returns the call's answer.
Plan: TypeAlias = Generator[_Statement, "list[Row]", T]


# --- the plans --------------------------------------------------------------------


def _get(job_id: int) -> Plan[JobRecord | None]:
    rows = yield _Statement("get_job", (_ids((job_id,))[0],))
    return record(rows[0]) if rows else None


def _list(statuses: Any, job_types: Any, since: Any, limit: int) -> Plan[Records]:
    wanted = None if statuses is None else _states(statuses, STATUSES, "statuses")
    types = None if job_types is None else _names(job_types, "job_types")
    rows = yield _Statement("list_jobs", (wanted, types, *_since(since), _limit(limit)))
    return [record(row) for row in rows]


def _logs(job_id: int) -> Plan[LogLines]:
    return [JobLogLine(**row) for row in (yield _Statement("job_logs", (_ids((job_id,))[0],)))]


def _dead_letters(limit: int) -> Plan[Records]:
    rows = yield _Statement("dead_letter_jobs", (_limit(limit),))
    return [record(row) for row in rows]


def _retry(ids: Sequence[int], attempts: int | None) -> Plan[int]:
    more = _more_attempts(attempts)
    rows = yield from _locked(ids, RETRYABLE, "retry")
    allowances = [more if more is not None else _policy_attempts(row["job_type"]) for row in rows]
    return (yield from _retry_rows(rows, allowances, RETRYABLE))


def _retry_rows(rows: list[Row], allowances: list[int | None], states: Sequence[str]) -> Plan[int]:
    (done,) = yield _Statement("retry_jobs", ([row["id"] for row in rows], allowances, list(states)))
    return int(done["jobs"])


def _discard(ids: Sequence[int]) -> Plan[int]:
    rows = yield from _locked(ids, FAILED, "discard")
    return (yield from _discard_rows(rows, FAILED))


def _discard_rows(rows: list[Row], states: Sequence[str]) -> Plan[int]:
    done = yield _Statement("discard_jobs", ([row["id"] for row in rows], list(states)))
    return len(done)


def _cancel(ids: Sequence[int]) -> Plan[int]:
    rows = yield from _locked(ids, CANCELLABLE, "cancel")
    cancelled = yield _Statement("cancel_jobs", ([row["id"] for row in rows],))
    asked = yield _Statement("request_cancel", ([row["id"] for row in rows],))
    return len(cancelled) + len(asked)


def _retry_all(job_type: str, status: str, since: Any, dry_run: bool, attempts: int | None) -> Plan[int]:
    more = _more_attempts(attempts)

    def retry_batch(rows: list[Row]) -> Plan[int]:  # job_type is checked by then
        allowance = more if more is not None else _policy_attempts(job_type)
        return _retry_rows(rows, [allowance] * len(rows), (status,))

    return (yield from _bulk(job_type, status, since, dry_run, retry_batch))


def _discard_all(job_type: str, status: str, since: Any, dry_run: bool) -> Plan[int]:
    return (yield from _bulk(job_type, status, since, dry_run, lambda rows: _discard_rows(rows, (status,))))


def _bulk(job_type: str, status: str, since: Any, dry_run: bool,
          change: Callable[[list[Row]], Plan[int]]) -> Plan[int]:
    """Change every failed job of one type (in batches of BATCH_SIZE, rows others hold locked left out), or
    with dry_run only count them; the number either way."""
    where = (_names((job_type,), "job_type")[0], _states((status,), FAILED, "status")[0], *_since(since))
    if dry_run:
        (counted,) = yield _Statement("count_failed", where)
        return int(counted["jobs"])
    total = 0
    while True:
        picked = yield _Statement("pick_failed", (*where, BATCH_SIZE))
        if picked:
            total += yield from change(picked)
        if len(picked) < BATCH_SIZE:
            return total


def _pause(job_types: Sequence[str]) -> Plan[Names]:
    rows = yield _Statement("pause", (_names(job_types, "job_types"),))
    return sorted(row["job_type"] for row in rows)


def _resume(job_types: Sequence[str]) -> Plan[Names]:
    rows = yield _Statement("resume", (_names(job_types, "job_types"),))
    return sorted(row["job_type"] for row in rows)


def _paused() -> Plan[Names]:
    rows = yield _Statement("paused", ())
    return [row["job_type"] for row in rows]


def _locked(ids: Sequence[int], accepted: Sequence[str], verb: str, note: dict[str, str] | None = None
            ) -> Plan[list[Row]]:
    """The rows of jobs `ids`, locked, in the order given; JobNotFound or JobStateError (nothing locked that
    the call would not change) unless every one exists and is in an `accepted` state. `note`: what the
    refusal adds for a job in a given state."""
    wanted, notes_by_state = _ids(ids), note or {}
    rows = yield _Statement("lock_jobs", (wanted, list(accepted)))
    found = {row["id"]: row for row in rows}
    missing = [job_id for job_id in wanted if job_id not in found]
    if missing:
        raise JobNotFound(f"cannot {verb} {_jobs(missing)}: no such job; nothing was changed", missing)
    refused = {job_id: found[job_id]["status"] for job_id in wanted if not found[job_id]["accepted"]}
    if refused:
        named = ", ".join(f"job {job_id} ({state})" for job_id, state in refused.items())
        notes = sorted({notes_by_state[state] for state in refused.values() if state in notes_by_state})
        raise JobStateError(
            f"cannot {verb} {named}: {verb} takes {_either(accepted)} jobs"
            + "".join(f"; {text}" for text in notes) + "; nothing was changed",
            refused,
        )
    return [found[job_id] for job_id in wanted]


# --- checks and conversions -------------------------------------------------------


def _policy_attempts(job_type: str) -> int | None:
    """The attempts a retry gives a job of `job_type` when the call names none: its policy's max_attempts if
    the type is registered in this process; else None, which retry_jobs reads as the row's own max_attempts
    (what it was dispatched with, unless an earlier retry or a rescue raised it)."""
    job = registry().get(job_type)
    return None if job is None else job.retry.max_attempts


def _ids(ids: Iterable[object]) -> list[int]:
    """The ids, each once, in order; OperationError unless each is a job id."""
    wanted: dict[int, None] = {}
    for job_id in ids:
        if isinstance(job_id, bool) or not isinstance(job_id, int) or not 1 <= job_id <= _MAX_ID:
            raise OperationError(f"job id {job_id!r}: must be an integer from 1 to {_MAX_ID} (pass ids as retry(1, 2)"
                                 " or retry(*ids))")
        wanted[job_id] = None
    if not wanted:
        raise OperationError("no job id given")
    return list(wanted)


def _names(values: object, what: str) -> list[str]:
    """Job types: a string is one, else an iterable of them; each a non-empty string."""
    items = [values] if isinstance(values, str) else values
    if not isinstance(items, Iterable):
        raise OperationError(f"{what}={values!r}: must be a job type name or several")
    names = list(items)
    for name in names:
        if not isinstance(name, str) or not name:
            raise OperationError(f"{what}: {name!r} is not a job type name (a non-empty string)")
    if not names:
        raise OperationError(f"{what}: no job type given")
    return names


def _states(values: object, allowed: Sequence[str], what: str) -> list[str]:
    states = _names(values, what)
    for state in states:
        if state not in allowed:
            raise OperationError(f"{what}: {state!r} is not one of {', '.join(allowed)}")
    return states


def _since(since: object) -> tuple[datetime | None, float | None]:
    """(a time, or seconds before the database's now) for a `since` filter; (None, None) for none."""
    if since is None:
        return None, None
    if isinstance(since, datetime):
        if since.utcoffset() is None:
            raise OperationError(f"since={since!r}: must be a timezone-aware datetime")
        return since, None
    try:
        return None, parse_duration(since, what="since")
    except ValueError as exc:
        raise OperationError(f"{exc} (or give an aware datetime)") from None


def _limit(limit: object) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= _MAX_ID:
        raise OperationError(f"limit={limit!r}: must be a whole number >= 1")
    return limit


def _more_attempts(attempts: object) -> int | None:
    if attempts is None:
        return None
    if isinstance(attempts, bool) or not isinstance(attempts, int) or not 1 <= attempts <= MAX_MORE_ATTEMPTS:
        raise OperationError(f"attempts={attempts!r}: must be a whole number from 1 to {MAX_MORE_ATTEMPTS}")
    return attempts


def _jobs(ids: list[int]) -> str:
    return f"job {ids[0]}" if len(ids) == 1 else "jobs " + ", ".join(map(str, ids))


def _either(states: Sequence[str]) -> str:
    return states[0] if len(states) == 1 else ", ".join(states[:-1]) + " or " + states[-1]


# --- running plans on a connection --------------------------------------------------


class Jobs:
    """The jobs of the database `conn` (a psycopg.Connection) reaches, to find and operate on them.

    Every call runs in `conn`'s current transaction (commit it to make a change happen; on an autocommit
    connection each call is a transaction of its own). A refused call raises an OperationError and changes
    nothing.
    """

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        import psycopg

        if isinstance(conn, psycopg.AsyncConnection) or not isinstance(conn, psycopg.Connection):
            raise OperationError(f"forge.Jobs needs a psycopg.Connection (forge.AsyncJobs takes an "
                                 f"AsyncConnection), got {type(conn).__name__}")
        self._conn = conn

    def get(self, id: int) -> JobRecord | None:
        """The job with this id, or None."""
        return self._run(_get(id))

    def list(self, *, statuses: Iterable[str] | str | None = None, job_types: Iterable[str] | str | None = None,
             since: Any = None, limit: int = 50) -> Records:
        """Jobs newest first, at most `limit`: in one of `statuses`, of one of `job_types`, created since
        `since` (an aware datetime, or a duration back from now: "1h", seconds, a timedelta)."""
        return self._run(_list(statuses, job_types, since, limit))

    def logs(self, id: int) -> LogLines:
        """The log lines of the job with this id (every attempt's, oldest first; [] for an unknown id)."""
        return self._run(_logs(id))

    def get_dead_letter_jobs(self, limit: int = 100) -> Records:
        """Jobs in the dead letter queue, newest failure first (the spec's monitoring query)."""
        return self._run(_dead_letters(limit))

    def retry(self, *ids: int, attempts: int | None = None) -> int:
        """Failed, dead_letter, discarded or cancelled jobs back to pending, due now; how many.

        Their history stays: attempts keeps counting (max_attempts becomes attempts plus `attempts` more, by
        default the job's policy max_attempts if its type is registered in this process, else the row's own
        max_attempts), last_error stays until the next attempt ends, crashes start again from 0.
        """
        return self._run(_retry(ids, attempts))

    def retry_all(self, job_type: str, status: str = "dead_letter", since: Any = None, dry_run: bool = False,
                  attempts: int | None = None) -> int:
        """retry() every `status` (dead_letter or failed) job of `job_type`, failed since `since` if given; how
        many (with dry_run, how many it would, changing nothing). Server-side in batches of BATCH_SIZE, all in
        this one transaction; rows another session holds locked (a sweep pruning them) are left out."""
        return self._run(_retry_all(job_type, status, since, dry_run, attempts))

    def discard(self, *ids: int) -> int:
        """Failed or dead_letter jobs to discarded (given up for good, kept for inspection); how many."""
        return self._run(_discard(ids))

    def discard_all(self, job_type: str, status: str = "dead_letter", since: Any = None,
                    dry_run: bool = False) -> int:
        """discard() every `status` job of `job_type`, as retry_all() retries them."""
        return self._run(_discard_all(job_type, status, since, dry_run))

    def cancel(self, *ids: int) -> int:
        """Cancel jobs; how many. Pending or retry ones become cancelled at once: no node will claim them.
        A claimed or running one is stopped by the node holding it once this commits: it kills the job's
        worker (SIGTERM, SIGKILL after its kill_grace) or drops the job unstarted, and the job becomes
        cancelled, never retried. One that ends on its own before the kill stays as it ended (a completed
        job keeps its result). Commit promptly: until then the rows are locked here."""
        return self._run(_cancel(ids))

    def pause(self, *job_types: str) -> Names:
        """No node claims jobs of these types once this commits (running ones finish), until resume(); a
        pause is a database row, so it holds on every node and across restarts. The types this call paused
        (already paused ones are left as they are)."""
        return self._run(_pause(job_types))

    def resume(self, *job_types: str) -> Names:
        """Claim these types again; idle nodes are woken at commit. The types this call resumed."""
        return self._run(_resume(job_types))

    def paused(self) -> Names:
        """The paused job types, by name."""
        return self._run(_paused())

    def _run(self, plan: Plan[T]) -> T:
        from psycopg import RawCursor
        from psycopg.rows import dict_row

        with _transaction(self._conn), RawCursor(self._conn, row_factory=dict_row) as cur:
            statement = next(plan)
            while True:
                cur.execute(_SQL[statement.name], statement.params)
                try:
                    statement = plan.send(cur.fetchall())
                except StopIteration as done:
                    answer: T = done.value
                    return answer


class AsyncJobs:
    """Jobs for a psycopg.AsyncConnection: the same methods and answers, awaited."""

    def __init__(self, aconn: psycopg.AsyncConnection[Any]) -> None:
        import psycopg

        if not isinstance(aconn, psycopg.AsyncConnection):
            raise OperationError(f"forge.AsyncJobs needs a psycopg.AsyncConnection (forge.Jobs takes a "
                                 f"Connection), got {type(aconn).__name__}")
        self._conn = aconn

    async def get(self, id: int) -> JobRecord | None:
        return await self._run(_get(id))

    async def list(self, *, statuses: Iterable[str] | str | None = None,
                   job_types: Iterable[str] | str | None = None, since: Any = None, limit: int = 50) -> Records:
        return await self._run(_list(statuses, job_types, since, limit))

    async def logs(self, id: int) -> LogLines:
        return await self._run(_logs(id))

    async def get_dead_letter_jobs(self, limit: int = 100) -> Records:
        return await self._run(_dead_letters(limit))

    async def retry(self, *ids: int, attempts: int | None = None) -> int:
        return await self._run(_retry(ids, attempts))

    async def retry_all(self, job_type: str, status: str = "dead_letter", since: Any = None,
                        dry_run: bool = False, attempts: int | None = None) -> int:
        return await self._run(_retry_all(job_type, status, since, dry_run, attempts))

    async def discard(self, *ids: int) -> int:
        return await self._run(_discard(ids))

    async def discard_all(self, job_type: str, status: str = "dead_letter", since: Any = None,
                          dry_run: bool = False) -> int:
        return await self._run(_discard_all(job_type, status, since, dry_run))

    async def cancel(self, *ids: int) -> int:
        return await self._run(_cancel(ids))

    async def pause(self, *job_types: str) -> Names:
        return await self._run(_pause(job_types))

    async def resume(self, *job_types: str) -> Names:
        return await self._run(_resume(job_types))

    async def paused(self) -> Names:
        return await self._run(_paused())

    async def _run(self, plan: Plan[T]) -> T:
        from psycopg import AsyncRawCursor
        from psycopg.rows import dict_row

        async with _async_transaction(self._conn), AsyncRawCursor(self._conn, row_factory=dict_row) as cur:
            statement = next(plan)
            while True:
                await cur.execute(_SQL[statement.name], statement.params)
                try:
                    statement = plan.send(await cur.fetchall())
                except StopIteration as done:
                    answer: T = done.value
                    return answer


def _transaction(conn: psycopg.Connection[Any]) -> AbstractContextManager[Any]:
    """What makes a call one transaction: the caller's own, or one of its own on an autocommit connection (a
    transaction() outside an autocommit one would commit the caller's work, or be a needless savepoint)."""
    return conn.transaction() if conn.autocommit else nullcontext()


def _async_transaction(conn: psycopg.AsyncConnection[Any]) -> AbstractAsyncContextManager[Any]:
    """_transaction for an AsyncConnection."""
    return conn.transaction() if conn.autocommit else nullcontext()
