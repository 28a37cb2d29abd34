"""Idempotency keys at dispatch against a real PostgreSQL: one job per type and key while a job holds it,
from one connection, from many at once, inside dispatch_many batches, and under REPEATABLE READ."""

from __future__ import annotations

import importlib
import threading
from concurrent.futures import ThreadPoolExecutor

import msgspec
import psycopg
import pytest

import forge

_DISPATCH = importlib.import_module("forge.dispatch")  # the module: forge.dispatch is the function


class Payment(msgspec.Struct):
    payment_id: str
    amount: int = 0


@forge.job(name="idem_payment", idempotent="input.payment_id")
def payment(ctx, input: Payment) -> None: ...


@forge.job(name="idem_refund", idempotent=lambda input: f"refund:{input['order']}")
def refund(ctx, input: dict) -> None: ...


@forge.job(name="idem_plain")
def plain(ctx, input: dict) -> None: ...


def rows(url: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT id, job_type, idempotency_key FROM forge_jobs ORDER BY id").fetchall()


def test_a_second_dispatch_of_a_key_returns_the_first_job_and_inserts_nothing(conn, database_url):
    first = forge.dispatch(conn, payment, Payment(payment_id="p1", amount=5))
    conn.commit()
    again = forge.dispatch(conn, payment, {"payment_id": "p1", "amount": 7})  # same key, other input
    other = forge.dispatch(conn, payment, Payment(payment_id="p2"))
    conn.commit()
    assert again == first != other
    assert rows(database_url) == [(first, "idem_payment", "p1"), (other, "idem_payment", "p2")]
    amount = conn.execute("SELECT input->>'amount' FROM forge_jobs WHERE id = %s", (first,)).fetchone()[0]
    assert amount == "5"  # the first job's input stands


def test_a_key_is_per_job_type_and_a_call_key_overrides_the_jobs(conn, database_url):
    refunded = forge.dispatch(conn, refund, {"order": 9})
    assert forge.dispatch(conn, refund, {"order": 9}) == refunded
    by_call = forge.dispatch(conn, plain, {"x": 1}, idempotency_key="refund:9")  # same text, other type
    assert by_call != refunded
    assert forge.dispatch(conn, plain, {"x": 2}, idempotency_key="refund:9") == by_call
    overridden = forge.dispatch(conn, payment, Payment(payment_id="p1"), idempotency_key="own")
    assert forge.dispatch(conn, payment, Payment(payment_id="p9"), idempotency_key="own") == overridden
    assert forge.dispatch(conn, payment, Payment(payment_id="own")) == overridden  # the path gives "own" too
    assert forge.dispatch(conn, plain, {"x": 3}) != forge.dispatch(conn, plain, {"x": 3})  # no key: no dedupe
    conn.commit()
    assert [r[2] for r in rows(database_url)] == ["refund:9", "refund:9", "own", None, None]


@pytest.mark.parametrize("state", [
    "claimed_by = gen_random_uuid(), status = 'claimed'",
    "claimed_by = gen_random_uuid(), status = 'running'",
    "status = 'retry'",
    "claimed_by = gen_random_uuid(), status = 'failed', failed_at = now()",
    "claimed_by = gen_random_uuid(), status = 'dead_letter', failed_at = now(), dead_lettered_at = now()",
    "claimed_by = gen_random_uuid(), status = 'completed', completed_at = now()",
    "status = 'cancelled', cancelled_at = now()",
])
def test_every_state_holds_its_key_until_released(conn, state):
    job_id = forge.dispatch(conn, payment, Payment(payment_id="p1"))
    conn.execute(f"UPDATE forge_jobs SET {state} WHERE id = %s", (job_id,))
    assert forge.dispatch(conn, payment, Payment(payment_id="p1")) == job_id
    conn.execute("UPDATE forge_jobs SET idempotency_key = NULL WHERE id = %s", (job_id,))  # the sweep's release
    assert forge.dispatch(conn, payment, Payment(payment_id="p1")) != job_id
    conn.execute("DELETE FROM forge_jobs")
    assert forge.dispatch(conn, payment, Payment(payment_id="p1")) > job_id  # gone from the table: free again


def test_a_key_committed_after_the_statements_snapshot_is_found(database_url):
    """The conflicting row is uncommitted when the second dispatch starts: ON CONFLICT waits for it, and its
    snapshot cannot see it once committed, so dispatch must look again (jobs.sql insert_job)."""
    with psycopg.connect(database_url) as first, psycopg.connect(database_url) as second:
        held = forge.dispatch(first, payment, Payment(payment_id="p1"))
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(forge.dispatch, second, payment, Payment(payment_id="p1"))
            _wait_until_blocked(first)
            first.commit()
            assert waiting.result(timeout=10) == held
        second.commit()
    assert len(rows(database_url)) == 1


def test_a_key_rolled_back_by_its_first_dispatcher_is_inserted_by_the_waiting_one(database_url):
    with psycopg.connect(database_url) as first, psycopg.connect(database_url) as second:
        forge.dispatch(first, payment, Payment(payment_id="p1"))
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(forge.dispatch, second, payment, Payment(payment_id="p1"))
            _wait_until_blocked(first)
            first.rollback()
            inserted = waiting.result(timeout=10)
        second.commit()
    assert rows(database_url) == [(inserted, "idem_payment", "p1")]


def test_eight_concurrent_dispatchers_get_one_job(database_url):
    """8 threads, each its own connection and transaction, dispatch the same key at once: one row, one id."""
    barrier = threading.Barrier(8)

    def dispatch_once(_: int) -> int:
        with psycopg.connect(database_url) as conn:
            barrier.wait()
            job_id = forge.dispatch(conn, payment, Payment(payment_id="p1"))
            conn.commit()
            return job_id

    for _ in range(5):  # a few rounds, so the race is really run
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("DELETE FROM forge_jobs")
        with ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(dispatch_once, range(8)))
        assert len(set(ids)) == 1
        assert rows(database_url) == [(ids[0], "idem_payment", "p1")]


def test_dispatch_many_gives_duplicates_in_and_across_batches_the_one_id(conn, database_url, monkeypatch):
    held = forge.dispatch(conn, payment, Payment(payment_id="old"))
    inputs = [Payment(payment_id=key) for key in ["a", "b", "a", "old", "c", "b", "a"]]
    ids = forge.dispatch_many(conn, payment, inputs)
    assert ids[0] == ids[2] == ids[6] and ids[1] == ids[5] and ids[3] == held
    assert len({ids[0], ids[1], ids[4], held}) == 4
    monkeypatch.setattr(_DISPATCH, "MAX_BATCH_BYTES", 40)  # one input a statement: across statements
    assert forge.dispatch_many(conn, payment, inputs) == ids
    conn.commit()
    assert sorted(r[2] for r in rows(database_url)) == ["a", "b", "c", "old"]


def test_dispatch_many_announces_only_the_jobs_it_inserted(database_url):
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute("LISTEN forge_jobs")
        with psycopg.connect(database_url) as conn:
            forge.dispatch(conn, payment, Payment(payment_id="a"))
            conn.commit()
            forge.dispatch_many(conn, payment, [Payment(payment_id=k) for k in ["a", "b", "b", "c"]])
            forge.dispatch_many(conn, payment, [Payment(payment_id="a")])  # all held: no announcement
            forge.dispatch(conn, payment, Payment(payment_id="c"))  # held: no announcement
            conn.commit()
        counts = [_announced(n.payload) for n in listener.notifies(timeout=0.5)]
    assert counts == [1, 2]


def test_concurrent_dispatch_many_batches_share_their_keys(database_url):
    barrier = threading.Barrier(8)

    def dispatch_batch(shift: int) -> list[int]:
        keys = [f"k{(i + shift) % 20}" for i in range(20)]
        with psycopg.connect(database_url) as conn:
            barrier.wait()
            ids = forge.dispatch_many(conn, payment, [Payment(payment_id=k) for k in keys])
            conn.commit()
        return [ids[keys.index(f"k{n}")] for n in range(20)]  # by key, k0..k19

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(dispatch_batch, range(8)))
    assert all(result == results[0] for result in results)
    assert len(rows(database_url)) == 20


def test_batches_taking_their_keys_in_opposite_orders_do_not_deadlock(database_url):
    """A conflicting insert waits for the key's transaction: two batches each holding a key the other waits
    for would deadlock, unless both take their keys in one order (jobs.sql insert_keyed_jobs)."""
    barrier = threading.Barrier(2)
    keys = [f"k{n:05}" for n in range(3000)]

    def dispatch_batch(reverse: bool) -> dict[str, int]:
        order = keys[::-1] if reverse else keys
        with psycopg.connect(database_url) as conn:
            barrier.wait()
            ids = forge.dispatch_many(conn, payment, [Payment(payment_id=k) for k in order])
            conn.commit()
        return dict(zip(order, ids))

    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(dispatch_batch, [False, True])
    assert first == second and len(rows(database_url)) == 3000


def test_a_keyed_batchs_ids_follow_the_input_order(conn):
    """So equal jobs are claimed (by id) in the order given, though they are inserted in key order."""
    ids = forge.dispatch_many(conn, payment, [Payment(payment_id=k) for k in ["z", "a", "m", "a", "b"]])
    assert ids[0] < ids[1] < ids[2] < ids[4] and ids[3] == ids[1]


def test_under_repeatable_read_an_unseen_holder_is_a_serialization_failure(database_url):
    with psycopg.connect(database_url) as first, psycopg.connect(database_url) as second:
        second.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        second.execute("SELECT 1")  # its snapshot is taken before the first commits
        forge.dispatch(first, payment, Payment(payment_id="p1"))
        first.commit()
        with pytest.raises(psycopg.errors.SerializationFailure):
            forge.dispatch(second, payment, Payment(payment_id="p1"))


@pytest.mark.parametrize(("given", "message"), [
    ("", "non-empty string"),
    (1.5, "non-empty string or an int"),
    ("a\x00b", "NUL"),
    ("x" * 1025, "1025 bytes"),
])
def test_a_bad_key_is_refused_before_anything_is_sent(conn, given, message):
    with pytest.raises(forge.DispatchError, match=message):
        forge.dispatch(conn, plain, {}, idempotency_key=given)
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_a_key_path_the_input_lacks_is_refused_naming_it(conn):
    @forge.job(name="idem_untyped", idempotent="input.order.id")
    def untyped(ctx, input: dict) -> None: ...

    with pytest.raises(forge.DispatchError, match=r"idempotent='input.order.id': the input has no 'id'"):
        forge.dispatch(conn, untyped, {"order": {"number": 1}})
    with pytest.raises(forge.DispatchError, match=r"inputs\[1\]: the idempotency key"):
        forge.dispatch_many(conn, untyped, [{"order": {"id": 1}}, {"order": {"id": None}}])
    assert forge.dispatch(conn, untyped, {"order": {"id": 7}}) == forge.dispatch(conn, untyped, {"order": {"id": 7}})


def test_async_dispatch_dedupes_too(database_url):
    import asyncio

    async def main() -> tuple[int, int, list[int]]:
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            first = await forge.dispatch_async(conn, payment, Payment(payment_id="p1"))
            again = await forge.dispatch_async(conn, payment, Payment(payment_id="p1"))
            many = await forge.dispatch_many_async(conn, payment, [Payment(payment_id="p1")] * 2)
            await conn.commit()
            return first, again, many

    first, again, many = asyncio.run(main())
    assert first == again and many == [first, first]


def _announced(payload: str) -> int:
    return int(msgspec.json.decode(payload)["n"])


def _wait_until_blocked(holder: psycopg.Connection) -> None:
    """Until some session waits for a lock `holder`'s transaction holds (the conflicting insert waits on it)."""
    with psycopg.connect(holder.info.dsn, autocommit=True) as watcher:
        pid = holder.info.backend_pid
        for _ in range(200):
            waiting = watcher.execute("SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                                      (pid,)).fetchone()[0]
            if waiting:
                return
            threading.Event().wait(0.05)
    raise AssertionError("the second dispatch never waited for the first")
