"""forge.dispatch and friends against a real PostgreSQL: transactions, validation, schedules, bulk."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import msgspec
import psycopg
import pytest

import forge
from forge.dispatch import MAX_INPUT_BYTES


class Order(msgspec.Struct):
    order_id: int
    note: str = ""


@forge.job(name="integration_charge", priority="high", retry=forge.Retry(max_attempts=7))
def charge(ctx, input: Order) -> None: ...


def _count(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM forge_jobs").fetchone()[0]


def test_the_job_exists_only_if_the_transaction_commits(database_url):
    with psycopg.connect(database_url) as conn:
        forge.dispatch(conn, charge, Order(order_id=1))
        assert _count(database_url) == 0  # not visible before the commit
        conn.rollback()
        assert _count(database_url) == 0
        job_id = forge.dispatch(conn, charge, Order(order_id=2))
        conn.commit()
    assert _count(database_url) == 1
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT id, job_type, status, priority, max_attempts, attempts, input FROM forge_jobs"
        ).fetchone()
    assert row == (job_id, "integration_charge", "pending", 1, 7, 0, {"order_id": 2, "note": ""})


def test_a_commit_notifies_listeners_with_the_delay(database_url):
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute("LISTEN forge_jobs")
        with psycopg.connect(database_url) as conn:
            forge.dispatch(conn, charge, Order(order_id=1))
            forge.dispatch(conn, charge, Order(order_id=2), delay="10s")
        payloads = sorted(int(n.payload) for n in listener.notifies(timeout=1, stop_after=2))
    assert payloads[0] == 0
    assert 9000 <= payloads[1] <= 10000


def test_dicts_are_validated_and_wrong_inputs_insert_nothing(database_url):
    with psycopg.connect(database_url) as conn:
        forge.dispatch(conn, charge, {"order_id": 5})
        with pytest.raises(forge.DispatchError, match="integration_charge.*Order.*order_id"):
            forge.dispatch(conn, charge, {"order_id": "five"})
        with pytest.raises(forge.DispatchError, match="order_id"):
            forge.dispatch_many(conn, charge, [{"order_id": 1}, {"nope": 2}])
        conn.commit()
    assert _count(database_url) == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"priority": "urgent"}, "priority"),
        ({"delay": "soon"}, "delay"),
        ({"at": datetime(2030, 1, 1)}, "timezone-aware"),
        ({"at": datetime.now(timezone.utc), "delay": 5}, "not both"),
    ],
)
def test_bad_options_are_refused(database_url, options, message):
    with psycopg.connect(database_url) as conn:
        with pytest.raises(forge.DispatchError, match=message):
            forge.dispatch(conn, charge, Order(order_id=1), **options)


def test_oversized_inputs_and_non_jobs_are_refused(database_url):
    with psycopg.connect(database_url) as conn:
        with pytest.raises(forge.DispatchError, match="limit"):
            forge.dispatch(conn, charge, Order(order_id=1, note="x" * MAX_INPUT_BYTES))
        with pytest.raises(forge.DispatchError, match="not a job"):
            forge.dispatch(conn, lambda ctx, i: None, {})


def test_schedules_and_priority_override(database_url):
    at = datetime.now(timezone.utc) + timedelta(hours=1)
    with psycopg.connect(database_url) as conn:
        a = forge.dispatch(conn, charge, Order(order_id=1), at=at)
        b = forge.dispatch(conn, charge, Order(order_id=2), delay=timedelta(minutes=5), priority="low")
        query = "SELECT scheduled_at, scheduled_at - now(), priority FROM forge_jobs WHERE id = %s"
        a_row = conn.execute(query, (a,)).fetchone()
        b_row = conn.execute(query, (b,)).fetchone()
    assert a_row[0] == at and a_row[2] == 1
    assert b_row[1] == timedelta(minutes=5) and b_row[2] == 3


def test_dispatch_many_returns_ids_in_order(database_url):
    with psycopg.connect(database_url) as conn:
        ids = forge.dispatch_many(conn, charge, [Order(order_id=i) for i in range(1000)])
        stored = conn.execute("SELECT id, (input->>'order_id')::int FROM forge_jobs ORDER BY id").fetchall()
    assert len(ids) == 1000 and ids == sorted(ids)
    assert stored == [(job_id, i) for i, job_id in enumerate(ids)]


def test_async_connections(database_url):
    async def scenario() -> list[int]:
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            one = await forge.dispatch_async(conn, charge, Order(order_id=1))
            many = await forge.dispatch_many_async(conn, charge, [Order(order_id=2), Order(order_id=3)])
            with pytest.raises(forge.DispatchError, match="AsyncConnection"):
                forge.dispatch(conn, charge, Order(order_id=4))
            return [one, *many]

    ids = asyncio.run(scenario())
    assert len(ids) == 3
    assert _count(database_url) == 3
