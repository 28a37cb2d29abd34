"""Cancelling a job a node holds, in the database (migration 0007): forge.Jobs.cancel records the request and
tells the owner; whatever end the owner (or a rescuer) then writes under the lease is recorded cancelled, never
retried, except a completion; an operator's retry clears the request. The supervisor's part is in
tests/acceptance/test_cancel.py."""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest

import forge

from . import test_engine_sql
from .test_engine_sql import SQL, age_claims, claim, dispatch, rescue, start

db = test_engine_sql.db  # the fixture: a raw-cursor connection with the core's planner settings

ERROR = '{"type": "forge.errors.JobCancelled", "message": "killed"}'


def fail(db, owner: uuid.UUID, job: tuple, *, retryable: bool = True) -> list[tuple]:
    """The fail statement for one job, as the reporter writes it: (id, status, poisoned) of the changed row."""
    params = ([job[0]], [job[1]], [retryable], [0.0], [ERROR], [False], owner, 3, [0.0], [0.0])
    return db.execute(SQL["fail"], params).fetchall()


def release(db, owner: uuid.UUID, job: tuple) -> list[tuple]:
    return db.execute(SQL["release"], ([job[0]], [job[1]], owner)).fetchall()


def row(db, job_id: int) -> tuple:
    return db.execute(
        "SELECT status, attempts, cancelled_at IS NOT NULL, failed_at IS NOT NULL, cancel_requested_at IS NOT NULL"
        " FROM forge_jobs WHERE id = $1", (job_id,)).fetchone()


def cancel(database_url: str, *ids: int) -> list[dict]:
    """forge.Jobs.cancel, committed; the notices it sent on forge_jobs."""
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute("LISTEN forge_jobs")
        with psycopg.connect(database_url) as conn:
            assert forge.Jobs(conn).cancel(*ids) == len(ids)
        return [json.loads(n.payload) for n in listener.notifies(timeout=0.5)]


@pytest.fixture
def held(db):
    """Two jobs one owner claimed; the first started."""
    dispatch(db, 2)
    owner = uuid.uuid4()
    jobs = claim(db, owner)
    start(db, owner, jobs[:1])
    return owner, jobs


def test_a_cancel_of_held_jobs_tells_their_owner_and_leaves_them_held(db, database_url, held):
    owner, (running, claimed) = held
    notices = cancel(database_url, running[0], claimed[0])
    assert sorted((n["k"], n["i"], n["a"], n["o"]) for n in notices) == [
        ("x", running[0], 1, str(owner)), ("x", claimed[0], 1, str(owner))]
    assert row(db, running[0]) == ("running", 1, False, False, True)
    assert row(db, claimed[0]) == ("claimed", 1, False, False, True)
    rows = db.execute(SQL["heartbeat"], ([running[0], claimed[0]], [1, 1], owner)).fetchall()
    assert sorted((r[0], r[3]) for r in rows) == [(running[0], True), (claimed[0], True)]


@pytest.mark.parametrize("retryable", [True, False])
def test_the_owners_failure_of_a_cancelled_job_is_recorded_cancelled(db, database_url, held, retryable):
    owner, (running, _) = held
    cancel(database_url, running[0])
    assert fail(db, owner, running, retryable=retryable) == [(running[0], "cancelled", False)]
    assert row(db, running[0]) == ("cancelled", 1, True, False, True)
    assert running[0] not in [j[0] for j in claim(db, uuid.uuid4())]


def test_a_cancelled_job_handed_back_unstarted_is_cancelled_uncharged(db, database_url, held):
    owner, (_, claimed) = held
    cancel(database_url, claimed[0])
    assert release(db, owner, claimed) == [(claimed[0], "cancelled")]
    assert row(db, claimed[0]) == ("cancelled", 0, True, False, True)


def test_a_rescued_cancelled_job_is_cancelled(db, database_url, held):
    _, (running, claimed) = held
    cancel(database_url, running[0], claimed[0])
    age_claims(db, 120)
    rescue(db)
    assert [row(db, j[0])[0] for j in (running, claimed)] == ["cancelled", "cancelled"]


def test_a_job_that_completes_before_its_kill_stays_completed(db, database_url, held):
    owner, (running, _) = held
    cancel(database_url, running[0])
    done = db.execute(SQL["complete"], ([running[0]], [1], ['"ok"'], owner, [0.0], [0.0])).fetchall()
    assert done == [(running[0],)]
    assert row(db, running[0])[0] == "completed"


def test_a_retry_clears_the_request_so_the_job_runs_and_retries_again(db, database_url, held):
    owner, (running, _) = held
    cancel(database_url, running[0])
    fail(db, owner, running)
    with psycopg.connect(database_url) as conn:
        assert forge.Jobs(conn).retry(running[0], attempts=2) == 1
    assert row(db, running[0]) == ("pending", 1, False, False, False)
    again = uuid.uuid4()
    [job] = [j for j in claim(db, again) if j[0] == running[0]]
    assert fail(db, again, job) == [(running[0], "retry", False)]


def test_cancel_mixes_waiting_and_held_jobs_all_or_nothing(db, database_url, held):
    owner, (running, _) = held
    (waiting,) = dispatch(db, 1)
    (done,) = dispatch(db, 1)
    db.execute("UPDATE forge_jobs SET status = 'completed', claimed_by = $1, completed_at = now() WHERE id = $2",
               (owner, done))
    with psycopg.connect(database_url) as conn, pytest.raises(forge.JobStateError, match=rf"job {done} \(completed\)"):
        forge.Jobs(conn).cancel(waiting, running[0], done)
    assert row(db, running[0])[4] is False and row(db, waiting)[0] == "pending"
    assert [n["i"] for n in cancel(database_url, waiting, running[0])] == [running[0]]
    assert row(db, waiting)[0] == "cancelled" and row(db, running[0])[:1] == ("running",)
