"""AsyncJobContext: the job context of async jobs, whose database connection is a psycopg.AsyncConnection."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from . import marks
from .completion import SQL, Completion
from .context import BaseContext, idle
from .dispatch import dispatch_async, dispatch_many_async
from .errors import ForgeError
from .job import Job
from .operations import AsyncJobs

if TYPE_CHECKING:
    import psycopg

A = TypeVar("A")
T = TypeVar("T")


class AsyncJobContext(BaseContext):
    """Handed to every async job as its first argument: JobContext's API, with the database's part awaited.

    db is the worker's own psycopg.AsyncConnection (autocommit, opened on first
    use, reused by the worker's later async jobs); `async with
    ctx.transaction() as db:`, `await ctx.query(fn, arg)` and `await
    ctx.mutate(fn, arg)` with async functions fn(db, arg); `await
    ctx.dispatch_job(...)`. progress(), heartbeat(), complete() and log are as
    in JobContext.
    """

    def __init__(self, *, connect: Callable[[], psycopg.AsyncConnection[Any]], **run: Any) -> None:
        super().__init__(**run)
        self._connect = connect

    @property
    def db(self) -> psycopg.AsyncConnection[Any]:
        """The worker's async database connection, opened on first use and reused across jobs."""
        return self._connect()

    @property
    def jobs(self) -> AsyncJobs:
        """forge.AsyncJobs on ctx.db: JobContext.jobs for async jobs."""
        return AsyncJobs(self.db)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """JobContext.transaction() for async jobs: `async with ctx.transaction() as db:`."""
        conn = self.db
        self._completion.enter(idle(conn))
        try:
            async with conn.transaction():
                yield conn
                if self._completion.due():
                    await _write_completion(conn, self._completion)
        except BaseException:
            self._completion.leave(committed=False)
            raise
        self._completion.leave(committed=True)

    async def query(self, fn: Callable[[psycopg.AsyncConnection[Any], A], Awaitable[T]], arg: A) -> T:
        """await fn(db, arg) in a READ ONLY transaction (inside an open one: a read-only savepoint); its value.
        Refuses a @forge.mutation."""
        marks.check(fn, "query")
        conn = self.db
        async with conn.transaction(force_rollback=True):  # it wrote nothing; the rollback ends read-only too
            await conn.execute(SQL["read_only"])
            return await _awaited(fn, fn(conn, arg))

    async def mutate(self, fn: Callable[[psycopg.AsyncConnection[Any], A], Awaitable[T]], arg: A) -> T:
        """await fn(db, arg) in ctx.transaction(), as JobContext.mutate. Refuses a @forge.query."""
        marks.check(fn, "mutation")
        async with self.transaction() as conn:
            return await _awaited(fn, fn(conn, arg))

    async def dispatch_job(self, job: Job[Any], input: Any, *, at: datetime | None = None, delay: Any = None,
                           priority: str | None = None, idempotency_key: str | None = None) -> int:
        """JobContext.dispatch_job for async jobs."""
        return await dispatch_async(self.db, job, input, at=at, delay=delay, priority=priority,
                                    parent_id=self.job_id, idempotency_key=idempotency_key)

    async def dispatch_job_at(self, at: datetime, job: Job[Any], input: Any) -> int:
        """dispatch_job(job, input, at=at)."""
        return await self.dispatch_job(job, input, at=at)

    dispatch = dispatch_job

    async def dispatch_many(self, job: Job[Any], inputs: Any, **options: Any) -> list[int]:
        """Dispatch many child jobs in one round trip."""
        return await dispatch_many_async(self.db, job, inputs, parent_id=self.job_id, **options)


async def _write_completion(conn: psycopg.AsyncConnection[Any], completion: Completion) -> None:
    import psycopg

    async with psycopg.AsyncRawCursor(conn) as cur:
        await cur.execute(SQL["complete"], completion.params())
        if await cur.fetchone() is None:
            raise completion.lost()


async def _awaited(fn: Callable[..., Any], value: Awaitable[T]) -> T:
    """The value of the awaitable fn returned, refusing a plain value: an async job's query/mutate run async
    functions (on an AsyncConnection, a plain function cannot wait for its statements)."""
    if not inspect.isawaitable(value):
        raise ForgeError(f"{getattr(fn, '__qualname__', fn)!r} is not async: an async job's ctx.query/ctx.mutate "
                         "run async functions of (db, arg)")
    return await value
