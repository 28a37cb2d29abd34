"""forge.dispatch and friends against a real PostgreSQL: transactions, validation, schedules, bulk."""

from __future__ import annotations

import asyncio
import importlib
import json
from datetime import datetime, timedelta, timezone

import msgspec
import psycopg
import pytest

import forge
from forge.dispatch import MAX_BATCH_BYTES, MAX_INPUT_BYTES

_DISPATCH = importlib.import_module("forge.dispatch")  # the module: forge.dispatch is the function


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


def test_a_commit_announces_its_jobs_to_listeners(database_url):
    """The payload the Rust core's announce.rs reads: kind, count, due time and delay, type, capability, xid."""
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute("LISTEN forge_jobs")
        with psycopg.connect(database_url) as conn:
            forge.dispatch(conn, charge, Order(order_id=1))
            forge.dispatch(conn, charge, Order(order_id=2), delay="10s")
            xid = int(conn.execute("SELECT pg_current_xact_id()::text").fetchone()[0])
            due = conn.execute("SELECT floor(extract(epoch FROM max(scheduled_at)) * 1000)::bigint FROM forge_jobs"
                               ).fetchone()[0]
        with psycopg.connect(database_url) as conn:
            forge.dispatch_many(conn, charge, [Order(order_id=3), Order(order_id=4)])
        payloads = [json.loads(n.payload) for n in listener.notifies(timeout=1, stop_after=3)]
    now, later, many = sorted(payloads, key=lambda p: (p["n"], p["d"]))
    for p in (now, later, many):
        assert (p["k"], p["t"], p["c"]) == ("a", "integration_charge", "general")
    assert (now["n"], now["d"], now["x"]) == (1, 0, str(xid))
    assert (later["n"], later["x"], later["at"]) == (1, str(xid), due)
    assert 9000 <= later["d"] <= 10000
    assert (many["n"], many["d"]) == (2, 0)
    assert int(many["x"]) > xid


@forge.job(name="integration_any")
def anything(ctx, input) -> None: ...


@forge.job(name="integration_text")
def text(ctx, input: str) -> None: ...


class Tree(msgspec.Struct):
    children: list[Tree]


@forge.job(name="integration_tree")
def tree(ctx, input: Tree) -> None: ...


def _nested(depth: int) -> dict:
    """A tree `depth` deep: deeper than msgspec's recursion limit goes."""
    value: dict = {"children": []}
    for _ in range(depth):
        value = {"children": [value]}
    return value


def _ids(url: str) -> list[int]:
    with psycopg.connect(url) as conn:
        return [job_id for (job_id,) in conn.execute("SELECT id FROM forge_jobs ORDER BY id")]


# Inputs that PostgreSQL or msgspec would refuse: (job, an input it takes, the refused one, what the error names).
REFUSED_INPUTS = [
    pytest.param(charge, {"order_id": 1}, {"order_id": "five"}, r"integration_charge.*Order.*order_id",
                 id="wrong-type"),
    pytest.param(charge, Order(order_id=1), Order(order_id=2, note="a\x00b"), r"integration_charge.*NUL.*\$\.note",
                 id="nul-in-a-field"),
    pytest.param(anything, {}, {"items": ["ok", ["b\x00"]]}, r"integration_any.*NUL.*\$\.items\[1\]\[0\]",
                 id="nul-nested"),
    pytest.param(anything, {}, {"k\x00": 1}, r"integration_any.*NUL.*\$\['k\\x00'\]", id="nul-in-a-key"),
    pytest.param(anything, {}, {"when": [1, object()]}, r"integration_any.*\$\.when\[1\].*type object",
                 id="unencodable-object"),
    pytest.param(anything, {}, {"s": "\ud800"}, r"integration_any.*\$\.s.*surrogate", id="lone-surrogate"),
    pytest.param(anything, {}, {"n": 10**5000}, r"integration_any.*\$\.n.*digits", id="huge-integer"),
    pytest.param(anything, {}, _nested(5000), r"integration_any.*cannot be encoded.*recursion", id="too-deep"),
    pytest.param(tree, _nested(1), _nested(5000), r"integration_tree.*does not match.*recursion",
                 id="too-deep-to-check"),
]

# Options refused before anything is sent: (options, what the error names).
REFUSED_OPTIONS = [
    pytest.param({"priority": "urgent"}, "priority", id="unknown-priority"),
    pytest.param({"priority": 10**30}, "priority", id="huge-priority"),
    pytest.param({"priority": ["high"]}, "priority", id="unhashable-priority"),
    pytest.param({"delay": "soon"}, "delay", id="bad-delay"),
    pytest.param({"delay": 1e13}, r"delay=10000000000000\.0.*year 10000", id="huge-delay"),
    pytest.param({"delay": timedelta.max}, "delay.*year 10000", id="timedelta-max"),
    pytest.param({"at": datetime(2030, 1, 1)}, "timezone-aware", id="naive-at"),
    pytest.param({"at": datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14)))}, "at=.*year", id="at-before-year-1"),
    pytest.param({"at": datetime.now(timezone.utc), "delay": 5}, "not both", id="at-and-delay"),
    pytest.param({"parent_id": 2**63}, "parent_id", id="huge-parent-id"),
    pytest.param({"parent_id": "7"}, "parent_id", id="text-parent-id"),
]


@pytest.mark.parametrize(("job", "good", "bad", "message"), REFUSED_INPUTS)
def test_a_refused_input_raises_dispatch_error_and_leaves_the_transaction_usable(database_url, job, good, bad,
                                                                                  message):
    with psycopg.connect(database_url) as conn:
        kept = forge.dispatch(conn, job, good)
        with pytest.raises(forge.DispatchError, match=message):
            forge.dispatch(conn, job, bad)
        with pytest.raises(forge.DispatchError, match=r"inputs\[2\]: .*" + message):
            forge.dispatch_many(conn, job, [good, good, bad, good])
        conn.commit()
    assert _ids(database_url) == [kept]


@pytest.mark.parametrize(("options", "message"), REFUSED_OPTIONS)
def test_refused_options_raise_dispatch_error_and_leave_the_transaction_usable(database_url, options, message):
    with psycopg.connect(database_url) as conn:
        kept = forge.dispatch(conn, charge, Order(order_id=1))
        with pytest.raises(forge.DispatchError, match=message):
            forge.dispatch(conn, charge, Order(order_id=2), **options)
        with pytest.raises(forge.DispatchError, match=message):
            forge.dispatch_many(conn, charge, [Order(order_id=3)], **options)
        conn.commit()
    assert _ids(database_url) == [kept]


def test_async_refusals_leave_the_transaction_usable(database_url):
    async def scenario() -> int:
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            kept = await forge.dispatch_async(conn, charge, Order(order_id=1))
            with pytest.raises(forge.DispatchError, match=r"NUL.*\$\.note"):
                await forge.dispatch_async(conn, charge, Order(order_id=2, note="\x00"))
            with pytest.raises(forge.DispatchError, match=r"inputs\[1\]: .*NUL"):
                await forge.dispatch_many_async(conn, charge, [Order(order_id=3), Order(order_id=4, note="\x00")])
            with pytest.raises(forge.DispatchError, match="delay"):
                await forge.dispatch_many_async(conn, charge, [Order(order_id=5)], delay=1e13)
            await conn.commit()
            return kept

    kept = asyncio.run(scenario())
    assert _ids(database_url) == [kept]


def test_text_that_only_looks_like_a_nul_escape_is_stored(database_url):
    # A backslash followed by "u0000" is encoded "\\u0000": no NUL, and jsonb takes it.
    tricky = Order(order_id=1, note="\\u0000 and \\\\u0000")
    with psycopg.connect(database_url) as conn:
        job_id = forge.dispatch(conn, charge, tricky)
        stored = conn.execute("SELECT input->>'note' FROM forge_jobs WHERE id = %s", (job_id,)).fetchone()[0]
    assert stored == tricky.note


def test_an_input_of_exactly_the_limit_is_accepted_and_one_byte_more_refused(database_url):
    largest = "x" * (MAX_INPUT_BYTES - 2)  # a JSON string is its text between two quotes
    with psycopg.connect(database_url) as conn:
        job_id = forge.dispatch(conn, text, largest)
        with pytest.raises(forge.DispatchError, match=f"{MAX_INPUT_BYTES + 1} bytes.*limit is {MAX_INPUT_BYTES}"):
            forge.dispatch(conn, text, largest + "x")
        with pytest.raises(forge.DispatchError, match=r"inputs\[1\]: .*limit"):
            forge.dispatch_many(conn, text, ["x", largest + "x"])
        conn.commit()
        stored = conn.execute("SELECT octet_length(input #>> '{}') FROM forge_jobs WHERE id = %s", (job_id,))
        assert stored.fetchone()[0] == MAX_INPUT_BYTES - 2
    assert _ids(database_url) == [job_id]


def test_a_batch_over_one_statements_limit_is_inserted_in_several(database_url):
    # PostgreSQL refuses a jsonb array whose elements take over 256 MiB (270 inputs of 1 MiB did): a batch
    # over MAX_BATCH_BYTES goes in statements of at most that, in the caller's transaction.
    count = MAX_BATCH_BYTES // MAX_INPUT_BYTES + 1
    largest = "x" * (MAX_INPUT_BYTES - 2)
    with psycopg.connect(database_url) as conn:
        ids = forge.dispatch_many(conn, text, [largest] * count)
        conn.commit()
        rows = conn.execute("SELECT id, octet_length(input #>> '{}'), cmin FROM forge_jobs ORDER BY id").fetchall()
    assert ids == [row[0] for row in rows] and len(ids) == count
    assert {row[1] for row in rows} == {MAX_INPUT_BYTES - 2}
    assert len({row[2] for row in rows}) == 2  # cmin: the command of its transaction that inserted the row


def test_a_batch_postgresql_would_refuse_in_one_statement_is_inserted(database_url):
    # 270 inputs of 1 MiB: over 256 MiB in one jsonb array, which PostgreSQL refuses (ProgramLimitExceeded).
    count, largest = 270, "x" * (MAX_INPUT_BYTES - 2)
    with psycopg.connect(database_url) as conn:
        with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="total size of jsonb array elements"):
            conn.execute("SELECT jsonb_array_length(%s::jsonb)", (msgspec.json.encode([largest] * count).decode(),))
        conn.rollback()
        ids = forge.dispatch_many(conn, text, [largest] * count)
        conn.commit()
    assert len(ids) == count and _ids(database_url) == ids


def _statements(conn: psycopg.Connection, ids: list[int]) -> list[list[int]]:
    """The ids inserted by each command of their transaction (cmin), in order."""
    rows = conn.execute("SELECT cmin::text::bigint, array_agg(id ORDER BY id) FROM forge_jobs WHERE id = ANY(%s) "
                        "GROUP BY 1 ORDER BY 1", (ids,)).fetchall()
    return [row[1] for row in rows]


def test_a_split_batch_keeps_input_order_and_the_callers_transaction(database_url, monkeypatch):
    monkeypatch.setattr(_DISPATCH, "MAX_BATCH_BYTES", 10)  # "[1,2,3,4]" is 9 bytes
    with psycopg.connect(database_url) as conn:
        ids = forge.dispatch_many(conn, anything, list(range(10)))
        inputs = conn.execute("SELECT input FROM forge_jobs WHERE id = ANY(%s) ORDER BY id", (ids,)).fetchall()
        assert [row[0] for row in inputs] == list(range(10)) and ids == sorted(ids)
        assert [len(ids) for ids in _statements(conn, ids)] == [4, 4, 2]
        assert _count(database_url) == 0  # not visible before the caller commits
        conn.rollback()
        assert _count(database_url) == 0  # gone with the caller's transaction, every statement of it
        later = forge.dispatch_many(conn, anything, list(range(10)))
        conn.commit()
    assert _ids(database_url) == later


def _refuse_99(url: str) -> None:
    """A trigger that refuses the input 99: a statement the database refuses after others were sent."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE FUNCTION refuse_99() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                     "IF NEW.input = '99' THEN RAISE EXCEPTION 'no 99'; END IF; RETURN NEW; END $$")
        conn.execute("CREATE TRIGGER refuse_99 BEFORE INSERT ON forge_jobs FOR EACH ROW EXECUTE FUNCTION refuse_99()")


def test_on_an_autocommit_connection_a_split_batch_is_inserted_whole_or_not_at_all(database_url, monkeypatch):
    monkeypatch.setattr(_DISPATCH, "MAX_BATCH_BYTES", 10)
    _refuse_99(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.RaiseException, match="no 99"):
            forge.dispatch_many(conn, anything, [1, 2, 3, 4, 5, 6, 99])  # the second statement is refused
        assert _count(database_url) == 0
        ids = forge.dispatch_many(conn, anything, [1, 2, 3, 4, 5, 6])
        assert _ids(database_url) == ids and len(_statements(conn, ids)) == 2


def test_a_bad_input_in_a_later_statement_sends_nothing(database_url, monkeypatch):
    monkeypatch.setattr(_DISPATCH, "MAX_BATCH_BYTES", 10)
    with psycopg.connect(database_url) as conn:
        kept = forge.dispatch(conn, anything, "kept")
        with pytest.raises(forge.DispatchError, match=r"inputs\[6\]: input for job 'integration_any' is "
                                                      rf"{MAX_INPUT_BYTES + 1} bytes encoded; the limit is"):
            forge.dispatch_many(conn, anything, [1, 2, 3, 4, 5, 6, "x" * (MAX_INPUT_BYTES - 1)])
        conn.commit()  # the caller's transaction is still usable: nothing of the batch was sent
    assert _ids(database_url) == [kept]


def test_dispatch_many_async_splits_a_batch_too(database_url, monkeypatch):
    monkeypatch.setattr(_DISPATCH, "MAX_BATCH_BYTES", 10)
    _refuse_99(database_url)

    async def run() -> list[int]:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            with pytest.raises(psycopg.errors.RaiseException, match="no 99"):
                await forge.dispatch_many_async(conn, anything, [1, 2, 3, 4, 5, 6, 99])
            assert _count(database_url) == 0  # whole or not at all, as on a sync connection
            return await forge.dispatch_many_async(conn, anything, list(range(10)))

    ids = asyncio.run(run())
    with psycopg.connect(database_url) as conn:
        assert [len(ids) for ids in _statements(conn, ids)] == [4, 4, 2]
    assert _ids(database_url) == ids


@pytest.mark.parametrize("inputs", [5, "abc", {"order_id": 1}], ids=["int", "str", "dict"])
def test_dispatch_many_needs_an_iterable_of_inputs(database_url, inputs):
    with psycopg.connect(database_url) as conn:
        with pytest.raises(forge.DispatchError, match="iterable of inputs"):
            forge.dispatch_many(conn, charge, inputs)


def test_non_jobs_are_refused(database_url):
    with psycopg.connect(database_url) as conn:
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
