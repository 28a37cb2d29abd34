"""The core's reports on a real PostgreSQL, driven by hand (no supervisor): what it does with data the
database cannot store or refuses, report by report and kind by kind."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgspec
import psycopg
import pytest

import forge
from forge._core import ClaimedJob, Core
from forge.config import NodeConfig
from forge.supervisor.main import core_settings
from tests.polling import wait_for

NOT_STORABLE = "forge.errors.ResultNotStorable"
# Refuses rows as the test says in test_refusals: (job id, the status an update would give it).
REFUSE = """
CREATE TABLE test_refusals (id bigint NOT NULL, status text NOT NULL);
CREATE FUNCTION test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.progress_message = 'refuse me'
       OR EXISTS (SELECT 1 FROM test_refusals WHERE id = NEW.id AND status = NEW.status) THEN
        RAISE EXCEPTION 'the test refuses job % becoming %', NEW.id, NEW.status;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER test_refuse BEFORE UPDATE ON forge_jobs FOR EACH ROW EXECUTE FUNCTION test_refuse();
"""


@forge.job(name="core_reports_noop", retry=forge.Retry(max_attempts=3))
def noop(ctx: forge.JobContext, input: dict[str, Any]) -> None:
    """Never run: the tests report for it by hand."""


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(REFUSE)
        yield conn


@pytest.fixture
def core(database_url: str, db: psycopg.Connection[Any]) -> Iterator[Core]:
    node = NodeConfig(workers=1, poll_interval=0.05)
    core = Core(core_settings(node, database_url, uuid.uuid4(), {noop.name: noop}))
    yield core
    core.close()


def claim(db: psycopg.Connection[Any], core: Core, n: int) -> list[ClaimedJob]:
    """n jobs dispatched, claimed by `core` and started, by id."""
    db.execute("INSERT INTO forge_jobs (job_type, input) SELECT %s, '{}' FROM generate_series(1, %s)", (noop.name, n))
    core.request(n)
    jobs: list[ClaimedJob] = []
    wait_for(lambda: jobs.extend(core.take()) or len(jobs) == n, what=f"{n} claimed jobs")
    return sorted(jobs, key=lambda j: j.id)


def refuse(db: psycopg.Connection[Any], job: ClaimedJob, status: str) -> None:
    db.execute("INSERT INTO test_refusals VALUES (%s, %s)", (job.id, status))


def rows(db: psycopg.Connection[Any], jobs: list[ClaimedJob]) -> list[tuple[str, Any]]:
    """(status, last_error) of each job, in the order of `jobs`."""
    found = db.execute(
        "SELECT id, status, last_error FROM forge_jobs WHERE id = ANY(%s)", ([j.id for j in jobs],)
    ).fetchall()
    by_id = {id: (status, last_error) for id, status, last_error in found}
    return [by_id[j.id] for j in jobs]


def error(message: str) -> bytes:
    return msgspec.json.encode({"type": "ValueError", "message": message, "traceback": None, "attempt": 1})


def test_results_that_cannot_be_stored_fail_their_jobs_and_never_raise(db, core):
    nul, big, broken, fine = claim(db, core, 4)
    for job in (nul, big, broken, fine):
        core.start(job.id, job.attempt)
    core.complete(nul.id, nul.attempt, b'{"k": ["a\\u0000b"]}')
    core.complete(big.id, big.attempt, b'"' + b"x" * (1 << 20) + b'"')
    core.complete(broken.id, broken.attempt, b'{"k": ')
    core.complete(fine.id, fine.attempt, b'"a\\\\u0000b"')  # a backslash, then text: storable
    assert core.flush(10_000)
    (nul_status, nul_error), (_, big_error), (_, broken_error), (fine_status, _) = rows(db, [nul, big, broken, fine])
    assert (nul_status, nul_error["type"]) == ("failed", NOT_STORABLE)
    assert f"the result of job {nul.id} (attempt 1) cannot be stored: it contains a NUL" in nul_error["message"]
    assert "1048578 bytes encoded, over the limit of 1048576" in big_error["message"]
    assert "not valid JSON" in broken_error["message"]
    assert fine_status == "completed"
    assert core.in_flight() == 0


def test_each_kind_of_refused_report_fails_only_its_job(db, core):
    started, progressed, completed, failed, released, *healthy = claim(db, core, 10)
    refuse(db, started, "running")
    refuse(db, completed, "completed")
    refuse(db, failed, "retry")
    refuse(db, released, "pending")
    for job in [started, progressed, completed, failed, *healthy]:
        core.start(job.id, job.attempt)
    core.progress(progressed.id, progressed.attempt, 50, "refuse me")
    for job in healthy[:3]:
        core.progress(job.id, job.attempt, 50, "fine")
    assert core.flush(10_000)
    core.complete(completed.id, completed.attempt, b"1")
    core.fail(failed.id, failed.attempt, True, error("retry me"))
    core.release(released.id, released.attempt)
    for job in healthy:
        core.complete(job.id, job.attempt, b"2")
    assert core.flush(10_000)
    kinds = ["start", "progress", "completion", "failure", "hand-back"]
    for (status, last_error), job, kind in zip(rows(db, [started, progressed, completed, failed, released]),
                                               [started, progressed, completed, failed, released], kinds):
        assert (status, last_error["type"]) == ("failed", NOT_STORABLE), kind
        assert f"the database refused the {kind} of job {job.id} (attempt 1): " in last_error["message"]
        assert "the test refuses job" in last_error["message"]
    assert {status for status, _ in rows(db, healthy)} == {"completed"}
    assert core.stats()["refused"] == 5
    # the jobs whose refused start or progress failed them are still held (no end was reported): the
    # heartbeat finds their leases gone, and the supervisor would kill their workers
    lost: list[tuple[int, int]] = []
    expected = {(started.id, started.attempt), (progressed.id, progressed.attempt)}
    wait_for(lambda: lost.extend(core.lost()) or set(lost) == expected, what="the failed jobs' leases to be lost")


def test_a_report_refused_twice_is_dropped_and_the_rest_is_written(db, core):
    bad, *healthy = claim(db, core, 5)
    refuse(db, bad, "completed")
    refuse(db, bad, "failed")  # its replacement is refused too
    for job in [bad, *healthy]:
        core.start(job.id, job.attempt)
        core.complete(job.id, job.attempt, None)
    assert core.flush(10_000)
    # left to rescue once its lease expires: neither ended nor failed. Claimed if its start went in the
    # flush that dropped it, running if the reporter wrote the start before the completion came
    assert rows(db, [bad])[0][0] in ("claimed", "running")
    assert {status for status, _ in rows(db, healthy)} == {"completed"}
    assert core.in_flight() == 0
    assert any("dropped" in message for _, message in core.logs())


def test_an_error_postgresql_refuses_is_replaced_by_one_saying_so(db, core):
    nul, broken = claim(db, core, 2)
    core.start(nul.id, nul.attempt)
    core.fail(nul.id, nul.attempt, True, error("bad\x00"))  # what the worker never sends
    core.fail(broken.id, broken.attempt, True, b"not json")
    assert core.flush(10_000)
    for status, last_error in rows(db, [nul, broken]):
        assert (status, last_error["type"]) == ("failed", NOT_STORABLE)
        assert "refused the failure" in last_error["message"]


@contextmanager
def row_locked(url: str, job: ClaimedJob, lock: str) -> Iterator[None]:
    """Another session holds job's row locked by `lock` until the block ends."""
    with psycopg.connect(url) as conn:  # a transaction: the lock lasts until the rollback
        conn.execute(lock, (job.id,))
        yield
        conn.rollback()


@pytest.mark.parametrize("lock", ["SELECT 1 FROM forge_jobs WHERE id = %s FOR UPDATE",
                                  "UPDATE forge_jobs SET priority = priority WHERE id = %s"])
def test_a_locked_row_holds_back_only_its_own_jobs_report(database_url, db, core, lock):
    locked, *healthy = claim(db, core, 5)
    with row_locked(database_url, locked, lock):
        for job in [locked, *healthy]:
            core.start(job.id, job.attempt)
            core.complete(job.id, job.attempt, b"1")
        wait_for(lambda: {status for status, _ in rows(db, healthy)} == {"completed"}, timeout=2,
                 what="the other jobs' completions, while the row is locked")
        assert not core.flush(300)  # the locked job's report is not written yet, and flush says so
        assert core.stats()["held"] == 1
        assert core.in_flight() == 1  # its lease is kept (and renewed, but for the locked row)
    assert core.flush(5_000)
    assert rows(db, [locked])[0][0] == "completed"
    assert core.in_flight() == 0
    assert any(f"jobs [{locked.id}] waits: another session holds" in message for _, message in core.logs())
