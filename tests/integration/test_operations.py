"""forge.Jobs and forge.AsyncJobs against a real PostgreSQL: reading jobs, retry, discard, cancel and pause by
hand, each all-or-nothing; retry_all on 100,000 dead letters; the claim statement skipping paused types."""

from __future__ import annotations

import asyncio
import importlib
import uuid
from datetime import datetime, timedelta, timezone

import msgspec
import psycopg
import pytest

import forge
from forge._core import planner_options
from forge.db.queries import load_queries

OPERATIONS = importlib.import_module("forge.operations")
ENGINE = load_queries("engine.sql")


@forge.job(name="ops_send", retry=forge.Retry(max_attempts=5))
def send(ctx, input) -> None: ...


def insert(conn, count: int = 1, *, job_type: str = "ops_send", status: str = "pending", **columns) -> list[int]:
    """Rows as the engine leaves them in `status` (a failed job keeps its owner and failed_at)."""
    marks = {
        "pending": "", "completed": ", claimed_by = gen_random_uuid(), completed_at = now()",
        "running": ", claimed_by = gen_random_uuid(), claimed_at = now(), started_at = now()",
        "failed": ", claimed_by = gen_random_uuid(), failed_at = now(), attempts = max_attempts",
        "dead_letter": ", claimed_by = gen_random_uuid(), failed_at = now(), dead_lettered_at = now(),"
                       " attempts = max_attempts",
    }[status]
    sets = "".join(f", {name} = %s" for name in columns)
    rows = conn.execute(
        "INSERT INTO forge_jobs (job_type, input, max_attempts) SELECT %s, '{}', 3 FROM generate_series(1, %s)"
        " RETURNING id", (job_type, count)).fetchall()
    ids = [row[0] for row in rows]
    conn.execute(f"UPDATE forge_jobs SET status = %s {marks} {sets} WHERE id = ANY(%s)",
                 (status, *columns.values(), ids))
    return ids


def states(conn, ids: list[int]) -> list[tuple]:
    return conn.execute("SELECT id, status, attempts, max_attempts, crashes FROM forge_jobs WHERE id = ANY(%s)"
                        " ORDER BY id", (ids,)).fetchall()


def test_get_returns_a_record_of_every_column(conn):
    (job_id,) = insert(conn, status="dead_letter", last_error='{"type": "E", "message": "boom"}')
    record = forge.Jobs(conn).get(job_id)
    columns = [row[0] for row in conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'forge_jobs' ORDER BY ordinal_position")]
    assert list(forge.JobRecord.__struct_fields__) == columns
    assert (record.id, record.status, record.priority, record.last_error) == (
        job_id, "dead_letter", "normal", {"type": "E", "message": "boom"})
    assert record.failed_at.tzinfo is not None and isinstance(record.claimed_by, uuid.UUID)
    encoded = msgspec.json.decode(msgspec.json.encode(record))
    assert set(encoded) == set(columns) and encoded["priority"] == "normal"
    assert forge.Jobs(conn).get(job_id + 1000) is None


def test_list_filters_newest_first_and_limits(conn):
    old = insert(conn, 2, status="completed", created_at=datetime.now(timezone.utc) - timedelta(hours=2))
    dead = insert(conn, 2, status="dead_letter")
    other = insert(conn, 1, job_type="ops_other")
    jobs = forge.Jobs(conn)
    assert [r.id for r in jobs.list()] == sorted(old + dead + other, reverse=True)
    assert [r.id for r in jobs.list(statuses=["dead_letter", "completed"], limit=3)] == sorted(old + dead,
                                                                                             reverse=True)[:3]
    assert [r.id for r in jobs.list(job_types="ops_other")] == other
    assert [r.id for r in jobs.list(since="1h")] == sorted(dead + other, reverse=True)
    an_hour_ago = datetime.now(timezone.utc) - timedelta(hours=1)
    assert [r.id for r in jobs.list(since=an_hour_ago, statuses="completed")] == []
    with pytest.raises(forge.OperationError, match="'done' is not one of"):
        jobs.list(statuses=["done"])
    with pytest.raises(forge.OperationError, match="since"):
        jobs.list(since=datetime(2026, 1, 1))  # naive
    with pytest.raises(forge.OperationError, match="limit=0"):
        jobs.list(limit=0)


def test_dead_letter_jobs_are_the_spec_query_newest_failure_first(conn):
    ids = insert(conn, 3, status="dead_letter")
    conn.execute("UPDATE forge_jobs SET failed_at = now() - id * interval '1 minute' WHERE id = ANY(%s)", (ids,))
    insert(conn, 1, status="failed")
    spec = [row[0] for row in conn.execute(
        "SELECT id FROM forge_jobs WHERE status = 'dead_letter' ORDER BY failed_at DESC")]
    assert [r.id for r in forge.Jobs(conn).get_dead_letter_jobs(10)] == spec == sorted(ids)
    assert [r.id for r in forge.Jobs(conn).get_dead_letter_jobs(limit=1)] == spec[:1]


def test_retry_brings_a_dead_letter_back_with_its_history(conn):
    (job_id,) = insert(conn, status="dead_letter", crashes=2, last_error='{"type": "E", "attempt": 3}')
    with psycopg.connect(conn.info.dsn, autocommit=True) as listener:
        listener.execute("LISTEN forge_jobs")
        assert forge.Jobs(conn).retry(job_id) == 1
        told = [n.payload for n in listener.notifies(timeout=1, stop_after=1)]
    record = forge.Jobs(conn).get(job_id)
    assert (record.status, record.attempts, record.max_attempts, record.crashes) == ("pending", 3, 3 + 5, 0)
    assert record.last_error == {"type": "E", "attempt": 3}  # kept until the next attempt ends
    assert (record.failed_at, record.dead_lettered_at, record.claimed_by) == (None, None, None)
    (due_now,) = conn.execute("SELECT scheduled_at <= now() FROM forge_jobs WHERE id = %s", (job_id,)).fetchone()
    assert due_now and told == ["0"]
    # The engine claims it and the attempt continues the count.
    with psycopg.connect(conn.info.dsn, autocommit=True, options=planner_options("claim"),
                         cursor_factory=psycopg.RawCursor) as engine:
        (claimed,) = engine.execute(ENGINE["claim"], (10, ["general"], uuid.uuid4(), ["ops_send"], False)).fetchall()
    assert (claimed[0], claimed[2], claimed[3]) == (job_id, 4, 8)


def test_retry_gives_the_attempts_asked_or_the_rows_own_allowance_for_an_unknown_type(conn):
    (registered,) = insert(conn, status="failed")
    (unknown,) = insert(conn, status="failed", job_type="ops_not_registered_here")
    conn.execute("UPDATE forge_jobs SET attempts = 4, max_attempts = 4 WHERE id = %s", (unknown,))
    (cancelled,) = insert(conn, status="pending")
    forge.Jobs(conn).cancel(cancelled)
    assert forge.Jobs(conn).retry(registered, attempts=2) == 1
    assert forge.Jobs(conn).retry(unknown, cancelled) == 2
    assert states(conn, [registered, unknown, cancelled]) == [
        (registered, "pending", 3, 5, 0), (unknown, "pending", 4, 8, 0), (cancelled, "pending", 0, 5, 0)]
    with pytest.raises(forge.OperationError, match="attempts=0"):
        forge.Jobs(conn).retry(registered, attempts=0)


@pytest.mark.parametrize(("call", "accepts"), [
    ("retry", ["failed", "dead_letter"]), ("discard", ["failed", "dead_letter"]), ("cancel", ["pending"])])
def test_a_refused_call_changes_nothing(conn, call, accepts):
    good = [insert(conn, status=state)[0] for state in accepts]
    (completed,) = insert(conn, status="completed")
    before = states(conn, [*good, completed])
    act = getattr(forge.Jobs(conn), call)
    with pytest.raises(forge.JobStateError, match=rf"cannot {call} job {completed} \(completed\)") as refused:
        act(*good, completed)
    assert refused.value.states == {completed: "completed"}
    with pytest.raises(forge.JobNotFound, match=f"cannot {call} job {completed + 99}: no such job") as missing:
        act(*good, completed + 99)
    assert missing.value.ids == [completed + 99]
    assert states(conn, [*good, completed]) == before
    assert act(*good, *good) == len(good)  # each id once


def test_a_call_runs_in_the_callers_transaction(database_url, conn):
    (job_id,) = insert(conn, status="dead_letter")
    with psycopg.connect(database_url) as own:
        forge.Jobs(own).retry(job_id)
        assert states(conn, [job_id])[0][1] == "dead_letter"  # not committed
        own.rollback()
        assert states(conn, [job_id])[0][1] == "dead_letter"
        forge.Jobs(own).retry(job_id)
        own.commit()
    assert states(conn, [job_id])[0][1] == "pending"


def test_cancel_takes_pending_and_retry_jobs_out_of_the_claim(conn):
    pending, waiting = insert(conn, 2)
    conn.execute("UPDATE forge_jobs SET status = 'retry' WHERE id = %s", (waiting,))
    assert forge.Jobs(conn).cancel(pending, waiting) == 2
    rows = conn.execute("SELECT status, cancelled_at IS NOT NULL FROM forge_jobs ORDER BY id").fetchall()
    assert rows == [("cancelled", True)] * 2
    assert claim(conn, ["ops_send"]) == []


def test_discard_gives_up_failed_jobs_for_good(conn):
    failed = insert(conn, status="failed")
    dead = insert(conn, status="dead_letter")
    assert forge.Jobs(conn).discard(*failed, *dead) == 2
    rows = conn.execute("SELECT status, discarded_at IS NOT NULL, failed_at IS NOT NULL FROM forge_jobs").fetchall()
    assert rows == [("discarded", True, True)] * 2
    assert forge.Jobs(conn).retry(*failed) == 1  # a discarded job can still be retried by hand


def test_retry_all_and_discard_all_change_every_match_in_batches(conn, monkeypatch):
    monkeypatch.setattr(OPERATIONS, "BATCH_SIZE", 7)
    dead = insert(conn, 20, status="dead_letter")
    old = insert(conn, 3, status="dead_letter")
    conn.execute("UPDATE forge_jobs SET failed_at = now() - interval '2 days' WHERE id = ANY(%s)", (old,))
    failed = insert(conn, 2, status="failed")
    other_type = insert(conn, 2, status="dead_letter", job_type="ops_other")
    jobs = forge.Jobs(conn)
    assert jobs.retry_all("ops_send", since="1d", dry_run=True) == 20
    assert {row[1] for row in states(conn, dead)} == {"dead_letter"}
    with psycopg.connect(conn.info.dsn, autocommit=True) as listener:
        listener.execute("LISTEN forge_jobs")
        assert jobs.retry_all("ops_send", since=timedelta(days=1)) == 20  # 3 batches, one transaction
        told = [n.payload for n in listener.notifies(timeout=0.5)]
    assert told == ["0"]  # one wake-up, at its commit
    assert {row[1:] for row in states(conn, dead)} == {("pending", 3, 8, 0)}
    assert {row[1] for row in states(conn, old + failed + other_type)} == {"dead_letter", "failed"}
    assert jobs.discard_all("ops_send", status="failed", dry_run=True) == 2
    assert jobs.discard_all("ops_send", status="failed") == 2
    assert jobs.discard_all("ops_send") == 3
    assert {row[1] for row in states(conn, old + failed)} == {"discarded"}
    with pytest.raises(forge.OperationError, match="'completed' is not one of failed, dead_letter"):
        jobs.retry_all("ops_send", status="completed")


def claim(conn, types: list[str]) -> list[int]:
    """The ids the engine's claim statement takes for a node running `types`."""
    with psycopg.connect(conn.info.dsn, autocommit=True, options=planner_options("claim"),
                         cursor_factory=psycopg.RawCursor) as engine:
        rows = engine.execute(ENGINE["claim"], (100, ["general"], uuid.uuid4(), types, False)).fetchall()
    return sorted(row[0] for row in rows if row[0] is not None)


def test_a_paused_type_is_not_claimed_until_resumed(conn):
    sends = insert(conn, 2)
    others = insert(conn, 2, job_type="ops_other")
    jobs = forge.Jobs(conn)
    assert jobs.pause("ops_send", "ops_later") == ["ops_later", "ops_send"]
    assert jobs.pause("ops_send") == []  # already paused
    assert jobs.paused() == ["ops_later", "ops_send"]
    assert claim(conn, ["ops_send", "ops_other"]) == others
    with psycopg.connect(conn.info.dsn, autocommit=True) as listener:
        listener.execute("LISTEN forge_jobs")
        assert jobs.resume("ops_send", "ops_never_paused") == ["ops_send"]
        told = [n.payload for n in listener.notifies(timeout=1, stop_after=1)]
    assert told == ["0"] and jobs.paused() == ["ops_later"]
    assert claim(conn, ["ops_send", "ops_other"]) == sends


def test_the_unknown_type_sweep_leaves_cancelled_jobs_alone(conn):
    node = uuid.uuid4()
    conn.execute("INSERT INTO forge_nodes (id, hostname, pid, roles, capabilities, workers) "
                 "VALUES (%s, 'h', 1, '{worker}', '{general}', 1)", (node,))
    long_ago = datetime(2026, 1, 1, tzinfo=timezone.utc)
    cancelled, orphan = insert(conn, 2, job_type="ops_nobody_runs", scheduled_at=long_ago)
    forge.Jobs(conn).cancel(cancelled)
    with psycopg.connect(conn.info.dsn, autocommit=True, cursor_factory=psycopg.RawCursor) as engine:
        failed = engine.execute(ENGINE["fail_unknown_types"], (1000.0, 60_000.0, node)).fetchall()
    assert [row[0] for row in failed] == [orphan]
    assert states(conn, [cancelled])[0][1] == "cancelled"


def test_the_checks_refuse_a_change_of_status_alone(conn):
    (job_id,) = insert(conn)
    with pytest.raises(psycopg.errors.CheckViolation, match="forge_jobs_cancelled_valid"):
        conn.execute("UPDATE forge_jobs SET status = 'cancelled', failed_at = now() WHERE id = %s", (job_id,))
    (failed,) = insert(conn, status="failed")
    with pytest.raises(psycopg.errors.CheckViolation, match="forge_jobs_discarded_valid"):
        conn.execute("UPDATE forge_jobs SET status = 'discarded' WHERE id = %s", (failed,))
    # Why a retry by hand was refused: a failed job keeps its last owner and its failed_at.
    with pytest.raises(psycopg.errors.CheckViolation, match="forge_jobs_claimable_valid"):
        conn.execute("UPDATE forge_jobs SET status = 'pending' WHERE id = %s", (failed,))


def test_bad_arguments_are_refused_before_anything_is_sent(conn):
    jobs = forge.Jobs(conn)
    for bad in ((), ("7",), (True,), (0,), (2**63,)):
        with pytest.raises(forge.OperationError):
            jobs.retry(*bad)
    with pytest.raises(forge.OperationError, match="job_type"):
        jobs.retry_all("")
    with pytest.raises(forge.OperationError, match="since"):
        jobs.retry_all("ops_send", since="yesterday")
    with pytest.raises(forge.OperationError, match="no job type"):
        jobs.pause()
    with pytest.raises(forge.OperationError, match="AsyncJobs"):
        forge.Jobs(object())


def test_async_jobs_run_the_same_operations(database_url, conn):
    (dead,) = insert(conn, status="dead_letter")
    (completed,) = insert(conn, status="completed")

    async def operate() -> None:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as aconn:
            jobs = forge.AsyncJobs(aconn)
            assert (await jobs.get(dead)).status == "dead_letter"
            assert [r.id for r in await jobs.get_dead_letter_jobs(5)] == [dead]
            assert [r.id for r in await jobs.list(statuses=["completed"])] == [completed]
            with pytest.raises(forge.JobStateError):
                await jobs.retry(dead, completed)
            assert await jobs.retry_all("ops_send", dry_run=True) == 1
            assert await jobs.retry(dead) == 1
            assert await jobs.cancel(dead) == 1
            assert await jobs.discard_all("ops_send") == 0
            assert await jobs.pause("ops_send") == ["ops_send"]
            assert await jobs.paused() == ["ops_send"]
            assert await jobs.resume("ops_send") == ["ops_send"]
        with pytest.raises(forge.OperationError, match="AsyncConnection"):
            forge.AsyncJobs(conn)

    asyncio.run(operate())
    assert states(conn, [dead])[0][1] == "cancelled"
