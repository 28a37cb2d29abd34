"""SIGTERM/SIGINT: stop claiming, let short jobs finish, hand the rest back; nothing left leased,
and no claim row left behind (each is closed once its jobs have ended)."""

from __future__ import annotations

import signal
import time

import pytest
from testapp import jobs

import forge

from ..supervisors import STOP_TIMEOUT
from .conftest import job_row, wait_for


def _leased(db) -> int:
    return db.execute("SELECT count(*) FROM forge_jobs WHERE status IN ('claimed', 'running')").fetchone()[0]


def _claim_rows(db) -> int:
    return db.execute("SELECT count(*) FROM forge_claims").fetchone()[0]


def _states(db, job_ids: list[int]) -> list[tuple[str, int, object]]:
    """(status, attempts, claimed_by) of each job, in the order of `job_ids`."""
    rows = db.execute("SELECT id, status, attempts, claimed_by FROM forge_jobs WHERE id = ANY(%s)", (job_ids,))
    by_id = {row[0]: row[1:] for row in rows.fetchall()}
    return [by_id[i] for i in job_ids]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_clean_stop_lets_short_jobs_finish_hands_back_unstarted_claims_and_leaves_nothing_leased(
    supervisor, db, signum
):
    # One worker, busy with the short job: the others are claimed for it (prefetch), held past the signal.
    sup = supervisor(workers=1, prefetch=3, prefetch_timeout="1m", shutdown_grace="10s")
    short = forge.dispatch(db, jobs.nap, jobs.Sleep(seconds=3))
    wait_for(lambda: job_row(db, short)["status"] == "running", what="the short job to start")
    waiting = forge.dispatch_many(db, jobs.double, [jobs.N(n=i) for i in range(3)])
    wait_for(lambda: {job_row(db, i)["status"] for i in waiting} == {"claimed"}, what="the claims behind it")
    sup.proc.send_signal(signum)
    # at once: while the short job still runs, not when the node exits
    wait_for(lambda: _states(db, waiting) == [("pending", 0, None)] * 3, timeout=2, what="the claims to go back")
    assert job_row(db, short)["status"] == "running"
    assert sup.wait(STOP_TIMEOUT) == 0
    assert job_row(db, short)["status"] == "completed"
    assert _states(db, waiting) == [("pending", 0, None)] * 3  # the claims were not charged
    assert db.execute("SELECT count(*) FROM test_events WHERE job_id = ANY(%s)", (waiting,)).fetchone()[0] == 0
    assert _leased(db) == 0
    assert _claim_rows(db) == 0
    assert db.execute("SELECT stopped_at IS NOT NULL FROM forge_nodes").fetchone()[0]


def test_jobs_longer_than_the_grace_are_killed_and_handed_back_uncharged(supervisor, db):
    sup = supervisor(workers=2, shutdown_grace="1s", kill_grace="500ms")
    long_jobs = [forge.dispatch(db, jobs.nap, jobs.Sleep(seconds=60)) for _ in range(2)]
    wait_for(lambda: all(job_row(db, i)["status"] == "running" for i in long_jobs), what="long jobs to start")
    queued = forge.dispatch(db, jobs.double, jobs.N(n=1))
    began = time.monotonic()
    assert sup.stop(signal.SIGTERM) == 0
    assert time.monotonic() - began < 1.0 + 0.5 + 1.5
    for job_id in long_jobs:
        row = job_row(db, job_id)
        assert (row["status"], row["attempts"], row["claimed_by"]) == ("pending", 0, None)
    assert job_row(db, queued)["status"] in ("pending", "completed")
    assert _leased(db) == 0
    assert _claim_rows(db) == 0


def test_a_second_signal_kills_at_once(supervisor, db):
    sup = supervisor(workers=1, shutdown_grace="60s")
    job_id = forge.dispatch(db, jobs.nap, jobs.Sleep(seconds=60))
    wait_for(lambda: job_row(db, job_id)["status"] == "running", what="the long job to start")
    began = time.monotonic()
    sup.proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)  # let the first signal be handled before the second
    assert sup.stop(signal.SIGTERM) == 0
    assert time.monotonic() - began < 5
    assert job_row(db, job_id)["status"] == "pending"
    assert _leased(db) == 0
    assert _claim_rows(db) == 0
