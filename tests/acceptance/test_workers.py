"""Timeouts enforced by killing the worker, crashing workers, recycling."""

from __future__ import annotations

from datetime import timedelta

import pytest
from testapp import jobs

import forge

from .conftest import finished, job_row, wait_for


def _ran_for(db, job_id: int) -> timedelta:
    """From the job's own start event to the recorded failure, by the database clock."""
    return db.execute(
        "SELECT j.failed_at - e.at FROM forge_jobs j JOIN test_events e ON e.job_id = j.id "
        "WHERE j.id = %s AND e.event = 'start'",
        (job_id,),
    ).fetchone()[0]


@pytest.mark.parametrize("job", [jobs.sleep_forever, jobs.spin], ids=["sleeping", "busy-looping"])
def test_timeout_kills_the_worker_within_a_second(supervisor, db, job):
    sup = supervisor(workers=1)
    job_id = forge.dispatch(db, job, jobs.Sleep(seconds=0))
    wait_for(lambda: finished(db, job_id), what="the timed-out job")
    row = job_row(db, job_id)
    assert row["status"] == "failed"
    assert row["last_error"]["type"] == "forge.errors.JobTimeout"
    assert "timeout of 1s" in row["last_error"]["message"]
    # the clock starts when the job is handed over, a little before its own start event
    assert timedelta(seconds=0.9) <= _ran_for(db, job_id) <= timedelta(seconds=2)
    # a fresh worker takes the slot
    after = forge.dispatch(db, jobs.double, jobs.N(n=5))
    wait_for(lambda: finished(db, after), what="a job after the kill")
    assert job_row(db, after)["result"] == 10
    assert sup.proc.poll() is None


def test_timed_out_job_is_retried_per_its_policy(supervisor, db):
    supervisor(workers=1)
    job_id = forge.dispatch(db, jobs.sleep_then_retry, jobs.Sleep(seconds=0.01))
    wait_for(lambda: finished(db, job_id), what="the retried job")
    row = job_row(db, job_id)
    assert (row["status"], row["attempts"]) == ("completed", 2)


def test_a_crashing_worker_fails_only_its_own_job(supervisor, db):
    sup = supervisor(workers=2)
    crashed = forge.dispatch(db, jobs.crash, jobs.Crash(code=3))
    others = forge.dispatch_many(db, jobs.double, [jobs.N(n=i) for i in range(50)])
    wait_for(lambda: finished(db, crashed, *others), what="all jobs")
    row = job_row(db, crashed)
    assert row["status"] == "failed"
    assert row["last_error"]["type"] == "forge.errors.WorkerCrashed"
    assert "exited with status 3" in row["last_error"]["message"]
    assert row["crashes"] == 1
    statuses = db.execute("SELECT DISTINCT status FROM forge_jobs WHERE id = ANY(%s)", (others,)).fetchall()
    assert statuses == [("completed",)]
    assert sup.proc.poll() is None


def test_workers_are_recycled_after_max_jobs(supervisor, db):
    supervisor(workers=1, max_jobs_per_worker=3)
    ids = forge.dispatch_many(db, jobs.double, [jobs.N(n=i) for i in range(10)])
    wait_for(lambda: finished(db, *ids), what="all jobs")
    per_pid = db.execute("SELECT count(*) FROM test_events GROUP BY pid ORDER BY min(at)").fetchall()
    assert [n for (n,) in per_pid] == [3, 3, 3, 1]
    assert db.execute("SELECT count(*) FROM forge_jobs WHERE status = 'completed'").fetchone()[0] == 10
