"""Cancelling jobs a node holds, under real supervisors: a running job's worker and its child are killed within
1 s + kill_grace (SIGTERM, or the SIGKILL after kill_grace for a job that ignores it) and the job is cancelled,
never retried; a missed notice is made up by the next heartbeat renewal; a claimed job not yet started is
dropped unrun while its worker's running job goes on; `forge jobs cancel` on one of two nodes' jobs stops that
one only."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from testapp import operations

import forge

from ..supervisors import alive
from .conftest import job_row, wait_for

MODULES = ("testapp.jobs", "testapp.operations")
KILL_GRACE = 1.0


def _pids(db, job_id: int) -> dict[str, int]:
    rows = db.execute("SELECT event, pid FROM test_events WHERE job_id = %s AND event IN ('start', 'child')",
                      (job_id,)).fetchall()
    return dict(rows)


def _running(db, **stubborn) -> tuple[int, dict[str, int]]:
    job_id = forge.dispatch(db, operations.runs_an_hour, operations.Stubborn(**stubborn))
    wait_for(lambda: len(_pids(db, job_id)) == 2, what="the job and its child to start")
    return job_id, _pids(db, job_id)


def _gone_within(pids: dict[str, int], seconds: float) -> float:
    """How long until every process of `pids` is gone; fails past `seconds`."""
    began = time.monotonic()
    wait_for(lambda: not any(alive(pid) for pid in pids.values()), timeout=seconds,
             what=f"processes {pids} to be killed")
    return time.monotonic() - began


def _never_retried(db, job_id: int) -> None:
    time.sleep(1.0)  # a retry (backoff 0.1 s) would have started by now
    row = job_row(db, job_id)
    assert (row["status"], row["attempts"], row["failed_at"]) == ("cancelled", 1, None)
    assert row["cancelled_at"] is not None and row["last_error"]["type"] == "forge.errors.JobCancelled"
    starts = db.execute("SELECT count(*) FROM test_events WHERE job_id = %s AND event = 'start'", (job_id,))
    assert starts.fetchone()[0] == 1


@pytest.mark.parametrize("ignore_sigterm", [False, True], ids=["dies-of-sigterm", "ignores-sigterm"])
def test_a_running_job_is_killed_with_its_child_and_cancelled_never_retried(supervisor, db, ignore_sigterm):
    sup = supervisor(modules=MODULES, kill_grace=f"{KILL_GRACE}s")
    job_id, pids = _running(db, ignore_sigterm=ignore_sigterm)
    assert forge.Jobs(db).cancel(job_id) == 1  # autocommit: committed here
    took = _gone_within(pids, 1.0 + KILL_GRACE)
    assert took >= KILL_GRACE if ignore_sigterm else took < KILL_GRACE
    wait_for(lambda: job_row(db, job_id)["status"] == "cancelled", timeout=1.0, what="the job to be cancelled")
    _never_retried(db, job_id)
    after = forge.dispatch(db, operations.parked, None)  # the node goes on running jobs
    wait_for(lambda: job_row(db, after)["status"] == "completed", what="a job after the cancel")
    said = [line for line in sup.log().splitlines() if f"job {job_id} (runs_an_hour)" in line]
    assert len(said) == 2 and "cancelled by an operator; killing worker" in said[0], said
    assert said[1].endswith("its worker was killed; cancelled, never retried"), said


def test_a_missed_notice_is_made_up_by_the_next_heartbeat_renewal(supervisor, db):
    supervisor(modules=MODULES, kill_grace=f"{KILL_GRACE}s", heartbeat_interval="1s", heartbeat_timeout="10s")
    job_id, pids = _running(db)
    db.execute("UPDATE forge_jobs SET cancel_requested_at = now() WHERE id = %s", (job_id,))  # no NOTIFY
    _gone_within(pids, 1.0 + 1.0 + KILL_GRACE)  # a renewal interval, then the kill
    wait_for(lambda: job_row(db, job_id)["status"] == "cancelled", timeout=1.0, what="the job to be cancelled")
    _never_retried(db, job_id)


def test_a_claimed_job_not_yet_started_is_dropped_unrun(supervisor, db):
    supervisor(modules=MODULES, workers=1, prefetch=1)
    busy, pids = _running(db)
    waiting = forge.dispatch(db, operations.parked, None)
    wait_for(lambda: job_row(db, waiting)["status"] == "claimed", what="the second job to be prefetched")
    with psycopg.connect(db.info.dsn) as conn:
        assert forge.Jobs(conn).cancel(waiting) == 1
    wait_for(lambda: job_row(db, waiting)["status"] == "cancelled", timeout=1.0, what="the unstarted job cancelled")
    row = job_row(db, waiting)
    assert (row["attempts"], row["started_at"]) == (0, None)  # handed back uncharged, never run
    assert all(alive(pid) for pid in pids.values()) and job_row(db, busy)["status"] == "running"
    assert forge.Jobs(db).cancel(busy) == 1
    _gone_within(pids, 1.0 + 5.0)  # the node's default kill_grace


def test_the_forge_command_cancels_a_job_on_the_node_that_runs_it_and_no_other(supervisor, db, app_db):
    for _ in range(2):
        supervisor(modules=MODULES, workers=1, prefetch=0, kill_grace=f"{KILL_GRACE}s")  # each runs one
    first, first_pids = _running(db)
    second, second_pids = _running(db)
    owners = {job_row(db, job_id)["claimed_by"] for job_id in (first, second)}
    assert len(owners) == 2, "both jobs ran on one node"
    done = subprocess.run([str(Path(sys.executable).parent / "forge"), "jobs", "cancel", str(second)],
                          env={**os.environ, "FORGE_DATABASE_URL": app_db}, capture_output=True, text=True,
                          timeout=30)
    assert (done.returncode, done.stderr) == (0, ""), done
    _gone_within(second_pids, 1.0 + KILL_GRACE)
    wait_for(lambda: job_row(db, second)["status"] == "cancelled", timeout=1.0, what="the job to be cancelled")
    assert all(alive(pid) for pid in first_pids.values()) and job_row(db, first)["status"] == "running"
