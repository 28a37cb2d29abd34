"""JobContext: what a running job can do besides computing its result (AsyncJobContext: context_async.py)."""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from . import marks
from .completion import SQL, Completion
from .dispatch import dispatch, dispatch_many
from .errors import ForgeError
from .job import Job
from .operations import Jobs

if TYPE_CHECKING:
    import psycopg

_log = logging.getLogger("forge.job")

A = TypeVar("A")
T = TypeVar("T")

#: Where a job's log lines go to be stored: (job id, attempt, level: "debug", "info", "warn" or "error",
#: message, the call's fields). It must not raise, nor block the job (the worker's sends each line to the supervisor).
LogSink = Callable[[int, int, str, str, dict[str, Any]], None]


class JobLogger:
    """Structured logging for one job: ctx.log.info("charged", amount=12).

    A line at or above the log level ([log] level) goes to the log stream (stderr, with the job's fields) and to
    the sink, which stores it in forge_job_logs; a line below it costs one level check. Never raises.
    """

    def __init__(self, fields: dict[str, Any], sink: Callable[[str, str, dict[str, Any]], None] | None = None) -> None:
        self._fields = fields
        self._sink = sink

    def debug(self, message: str, **fields: Any) -> None:
        self._emit(logging.DEBUG, "debug", message, fields)

    def info(self, message: str, **fields: Any) -> None:
        self._emit(logging.INFO, "info", message, fields)

    def warn(self, message: str, **fields: Any) -> None:
        self._emit(logging.WARNING, "warn", message, fields)

    warning = warn

    def error(self, message: str, **fields: Any) -> None:
        self._emit(logging.ERROR, "error", message, fields)

    def _emit(self, level: int, name: str, message: str, fields: dict[str, Any]) -> None:
        if not _log.isEnabledFor(level):
            return
        _log.log(level, message, extra={"forge_fields": {**self._fields, **fields}})
        if self._sink is not None:
            self._sink(name, message, fields)


class BaseContext:
    """What the sync and the async job context share: the run's description, progress, heartbeat, log, and
    ctx.complete()."""

    def __init__(
        self,
        *,
        job_id: int,
        job_type: str,
        attempt: int,
        parent_id: int | None,
        report: Callable[[str, int | None, str | None], None],
        completion: Completion,
        log_sink: LogSink | None = None,
    ) -> None:
        self.job_id = job_id
        self.job_type = job_type
        self.attempt = attempt
        self.parent_id = parent_id
        self._report = report
        self._completion = completion
        self._log_sink = log_sink

    @functools.cached_property
    def log(self) -> JobLogger:
        """The job's logger, made on first use: most jobs never log, and a context is made per job."""
        fields = {"job_id": self.job_id, "job_type": self.job_type, "attempt": self.attempt}
        sink = None if self._log_sink is None else functools.partial(self._log_sink, self.job_id, self.attempt)
        return JobLogger(fields, sink)

    def progress(self, percent: int, message: str | None = None) -> None:
        """Report progress, 0-100, with an optional message (written in batches by the supervisor)."""
        if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
            raise ForgeError(f"progress({percent!r}): must be an integer from 0 to 100")
        self._report("progress", percent, message)

    def heartbeat(self) -> None:
        """Tell the supervisor this job is alive (for jobs with a heartbeat_timeout)."""
        self._report("heartbeat", None, None)

    def complete(self, result: Any = None) -> None:
        """Complete this job with `result` in the transaction this is called in (ctx.transaction() or
        ctx.mutate()): its end is written just before that transaction commits, with the job's writes, so they
        are applied once even if the worker dies right after (forge/completion.py says what this covers). If the
        transaction rolls back, so does the completion. Once it committed, the job's result is this one
        whatever the job returns or raises afterwards. ResultNotStorable if `result` cannot be stored."""
        self._completion.ask(result)


class JobContext(BaseContext):
    """Handed to every sync job as its first argument (async jobs get a forge.AsyncJobContext).

    job_id, job_type, attempt (1-based) and parent_id describe the run;
    progress() and heartbeat() report to the supervisor; db is the worker's own
    psycopg connection to the application database (autocommit, opened on
    first use, reused by the worker's later jobs); transaction(), query() and
    mutate() run statements in one transaction; jobs is forge.Jobs on db;
    dispatch_job() enqueues child jobs (parent_id: this job) in the
    transaction open on db, if any.
    """

    def __init__(self, *, connect: Callable[[], psycopg.Connection[Any]], **run: Any) -> None:
        super().__init__(**run)
        self._connect = connect

    @property
    def db(self) -> psycopg.Connection[Any]:
        """The worker's database connection, opened on first use and reused across jobs."""
        return self._connect()

    @property
    def jobs(self) -> Jobs:
        """forge.Jobs on ctx.db (find, retry, discard, cancel other jobs, pause types): each call a transaction
        of its own, or part of the job's inside ctx.transaction()."""
        return Jobs(self.db)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[Any]]:
        """`with ctx.transaction() as db:` one transaction on ctx.db (a savepoint inside another), committed
        at the end of the block, rolled back if it raises; with ctx.complete() the job's end commits in it."""
        conn = self.db
        self._completion.enter(idle(conn))
        try:
            with conn.transaction():
                yield conn
                if self._completion.due():
                    _write_completion(conn, self._completion)
        except BaseException:
            self._completion.leave(committed=False)
            raise
        self._completion.leave(committed=True)

    def query(self, fn: Callable[[psycopg.Connection[Any], A], T], arg: A) -> T:
        """fn(db, arg) in a READ ONLY transaction (inside an open one: a read-only savepoint); its value.
        Refuses a @forge.mutation."""
        marks.check(fn, "query")
        conn = self.db
        # Rolled back at the end: it wrote nothing, and the rollback takes the read-only setting back with it.
        with conn.transaction(force_rollback=True):
            conn.execute(SQL["read_only"])
            return _value(fn, fn(conn, arg))

    def mutate(self, fn: Callable[[psycopg.Connection[Any], A], T], arg: A) -> T:
        """fn(db, arg) in ctx.transaction(): its writes, and the jobs dispatched in it, commit together when it
        returns (or with the enclosing transaction) and roll back if it raises; its value. Refuses a
        @forge.query."""
        marks.check(fn, "mutation")
        with self.transaction() as conn:
            return _value(fn, fn(conn, arg))

    def dispatch_job(self, job: Job[Any], input: Any, *, at: datetime | None = None, delay: Any = None,
                     priority: str | None = None, idempotency_key: str | None = None) -> int:
        """Dispatch a child job (parent_id: this job) in the transaction open on ctx.db, if any (inside
        ctx.transaction() or ctx.mutate(): it exists only if that commits), else committed at once; its id."""
        return dispatch(self.db, job, input, at=at, delay=delay, priority=priority, parent_id=self.job_id,
                        idempotency_key=idempotency_key)

    def dispatch_job_at(self, at: datetime, job: Job[Any], input: Any) -> int:
        """dispatch_job(job, input, at=at): run no earlier than `at` (an aware datetime)."""
        return self.dispatch_job(job, input, at=at)

    dispatch = dispatch_job

    def dispatch_many(self, job: Job[Any], inputs: Any, **options: Any) -> list[int]:
        """Dispatch many child jobs in one round trip."""
        return dispatch_many(self.db, job, inputs, parent_id=self.job_id, **options)


def _write_completion(conn: psycopg.Connection[Any], completion: Completion) -> None:
    import psycopg

    with psycopg.RawCursor(conn) as cur:
        if cur.execute(SQL["complete"], completion.params()).fetchone() is None:
            raise completion.lost()


def idle(conn: Any) -> bool:
    """Whether no transaction is open on `conn` (a sync or async psycopg connection)."""
    from psycopg.pq import TransactionStatus

    return bool(conn.info.transaction_status == TransactionStatus.IDLE)


def _value(fn: Callable[..., Any], value: T) -> T:
    """fn's value, refusing a coroutine: a sync job's query/mutate run plain functions."""
    if inspect.isawaitable(value):
        if inspect.iscoroutine(value):
            value.close()
        raise ForgeError(f"{getattr(fn, '__qualname__', fn)!r} is async: a sync job's ctx.query/ctx.mutate run "
                         "plain functions of (db, arg) (async ones are for async jobs)")
    return value


__all__ = ["BaseContext", "JobContext", "JobLogger"]
