"""The job context on a real database, outside a supervisor: the lease guard of a completion written in the
job's transaction (context.sql complete), what query/mutate refuse, and how ctx.complete() follows the
transactions it is called in."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import psycopg
import pytest

import forge
from forge.completion import Completion, JobLease
from forge.context_async import AsyncJobContext
from forge.errors import ForgeError, LeaseLost, ResultNotStorable

from ..job_rows import OWNER, insert


def _running_job(conn: psycopg.Connection[Any]) -> int:
    return insert(conn, "ctx_test", "running", attempts=1)[0]


def _context(conn: psycopg.Connection[Any], job_id: int, owner: uuid.UUID = OWNER) -> tuple[forge.JobContext,
                                                                                             Completion]:
    completion = Completion(JobLease(job_id, 1, str(owner), time.monotonic()))
    ctx = forge.JobContext(job_id=job_id, job_type="ctx_test", attempt=1, parent_id=None,
                           report=lambda *_: None, completion=completion, connect=lambda: conn)
    return ctx, completion


@pytest.fixture
def job_conn(database_url: str):
    """The job's own connection, as a worker opens it: autocommit."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS ctx_effects (job_id bigint, note text)")
        yield conn


def _row(conn, job_id: int) -> tuple:
    return conn.execute("SELECT status, result, claimed_by, attempts FROM forge_jobs WHERE id = %s",
                        (job_id,)).fetchone()


def test_a_completion_commits_with_the_transaction_it_is_asked_in(job_conn, conn):
    job_id = _running_job(conn)
    ctx, completion = _context(job_conn, job_id)
    with ctx.transaction() as db:
        db.execute("INSERT INTO ctx_effects VALUES (%s, 'paid')", (job_id,))
        ctx.complete({"paid": True})
        assert _row(conn, job_id)[0] == "running"  # nothing is visible before the commit
    assert _row(conn, job_id) == ("completed", {"paid": True}, OWNER, 1)
    assert completion.committed is not None and completion.committed.result == b'{"paid":true}'
    assert conn.execute("SELECT count(*) FROM ctx_effects").fetchone()[0] == 1


def test_a_completion_whose_lease_is_gone_rolls_the_transaction_back_with_lease_lost(job_conn, conn):
    job_id = _running_job(conn)
    ctx, completion = _context(job_conn, job_id, owner=uuid.UUID(int=8))  # another node holds it now
    with pytest.raises(LeaseLost, match="no longer this node's"):
        with ctx.transaction() as db:
            db.execute("INSERT INTO ctx_effects VALUES (%s, 'paid')", (job_id,))
            ctx.complete("done")
    assert _row(conn, job_id) == ("running", None, OWNER, 1)
    assert conn.execute("SELECT count(*) FROM ctx_effects").fetchone()[0] == 0
    assert completion.committed is None


def test_a_completion_asked_in_a_savepoint_that_rolls_back_is_withdrawn(job_conn, conn):
    job_id = _running_job(conn)
    ctx, completion = _context(job_conn, job_id)
    with ctx.transaction():
        with pytest.raises(ZeroDivisionError), ctx.transaction():
            ctx.complete(1)
            raise ZeroDivisionError
    assert _row(conn, job_id)[0] == "running" and completion.committed is None


def test_complete_needs_a_transaction_of_the_context_and_a_storable_result(job_conn, conn):
    ctx, _ = _context(job_conn, _running_job(conn))
    with pytest.raises(ForgeError, match="inside ctx.transaction"):
        ctx.complete(1)
    with job_conn.transaction(), pytest.raises(ForgeError, match="inside ctx.transaction"), ctx.transaction():
        ctx.complete(1)  # the context's transaction is only a savepoint of the caller's
    with pytest.raises(ResultNotStorable, match="NUL"), ctx.transaction():
        ctx.complete({"text": "a\x00b"})


@forge.query
def _reads(db, arg):
    return db.execute("SELECT %s::int", (arg,)).fetchone()[0]


@forge.mutation
def _writes(db, arg):
    db.execute("INSERT INTO ctx_effects VALUES (0, %s)", (arg,))
    return arg


def test_query_and_mutate_refuse_the_other_kind_and_a_query_inside_a_transaction_stays_read_only(job_conn, conn):
    ctx, _ = _context(job_conn, _running_job(conn))
    with pytest.raises(ForgeError, match="marked @forge.mutation"):
        ctx.query(_writes, "x")
    with pytest.raises(ForgeError, match="marked @forge.query"):
        ctx.mutate(_reads, 1)
    assert (ctx.query(_reads, 5), ctx.mutate(_writes, "m")) == (5, "m")
    with ctx.transaction():
        ctx.mutate(_writes, "before")
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            ctx.query(lambda db, arg: _writes(db, arg), "in query")
        ctx.mutate(_writes, "after")  # the query's read-only savepoint is gone with it
    notes = [n for (n,) in conn.execute("SELECT note FROM ctx_effects ORDER BY note")]
    assert notes == ["after", "before", "m"]
    with pytest.raises(ForgeError, match="is async"):
        ctx.query(_async_reads, 1)


async def _async_reads(db, arg):
    return arg


def test_the_async_context_awaits_async_functions_and_completes_in_its_transaction(database_url, conn):
    job_id = _running_job(conn)
    conn.execute("CREATE TABLE ctx_effects (job_id bigint, note text)")

    async def run() -> Any:
        aconn = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
        completion = Completion(JobLease(job_id, 1, str(OWNER), time.monotonic()))
        ctx = AsyncJobContext(job_id=job_id, job_type="ctx_test", attempt=1, parent_id=None,
                              report=lambda *_: None, completion=completion, connect=lambda: aconn)

        async def write(db, note):
            await db.execute("INSERT INTO ctx_effects VALUES (%s, %s)", (job_id, note))

        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            await ctx.query(write, "refused")
        with pytest.raises(ForgeError, match="is not async"):
            await ctx.mutate(lambda db, arg: arg, 1)
        async with ctx.transaction():
            await ctx.mutate(write, "written")
            ctx.complete("done")
        await aconn.close()
        return completion.committed

    assert asyncio.run(run()) is not None
    assert _row(conn, job_id)[:2] == ("completed", "done")
    assert [n for (n,) in conn.execute("SELECT note FROM ctx_effects")] == ["written"]


@forge.job(name="ctx_integration_child")
def _child(ctx, input: int) -> None: ...


def test_dispatch_job_and_dispatch_job_at_enqueue_children_in_the_open_transaction(job_conn, conn):
    from datetime import datetime, timedelta, timezone

    parent = _running_job(conn)
    ctx, _ = _context(job_conn, parent)
    at = datetime.now(timezone.utc) + timedelta(hours=1)
    with pytest.raises(ZeroDivisionError), ctx.transaction():
        ctx.dispatch_job(_child, 1)
        raise ZeroDivisionError
    with ctx.transaction():
        later = ctx.dispatch_job_at(at, _child, 2)
        now = ctx.dispatch(_child, 3, priority="low")  # the alias
    rows = conn.execute("SELECT id, parent_id, input, scheduled_at, priority FROM forge_jobs WHERE parent_id = %s "
                        "ORDER BY id", (parent,)).fetchall()
    assert [(r[0], r[1], r[2]) for r in rows] == [(later, parent, 2), (now, parent, 3)]
    assert rows[0][3] == at and rows[1][4] == 3
