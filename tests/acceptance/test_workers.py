"""Timeouts enforced by killing the worker, crashing workers, recycling."""

from __future__ import annotations

import os
import signal
import time
from datetime import timedelta

import pytest
from testapp import jobs

import forge
from forge.supervisor.slot import MAX_BATCH

from ..supervisors import alive
from .conftest import completed, finished, job_row, wait_for


def _ran_for(db, job_id: int) -> timedelta:
    """From the job's start (started_at: written when it was handed to its worker) to its recorded failure."""
    return db.execute("SELECT failed_at - started_at FROM forge_jobs WHERE id = %s", (job_id,)).fetchone()[0]


@pytest.mark.parametrize("job", [jobs.sleep_forever, jobs.spin], ids=["sleeping", "busy-looping"])
def test_timeout_kills_the_worker_within_a_second(supervisor, db, job):
    sup = supervisor(workers=1)
    job_id = forge.dispatch(db, job, jobs.Sleep(seconds=0))
    wait_for(lambda: finished(db, job_id), what="the timed-out job")
    row = job_row(db, job_id)
    assert row["status"] == "failed"
    assert row["last_error"]["type"] == "forge.errors.JobTimeout"
    assert "timeout of 1s" in row["last_error"]["message"]
    # the clock starts when the job is handed over: started_at, not the job's own
    # first statement (which may wait for ctx.db's first connection)
    assert timedelta(seconds=0.9) <= _ran_for(db, job_id) <= timedelta(seconds=2)
    # a fresh worker takes the slot
    after = forge.dispatch(db, jobs.double, jobs.N(n=5))
    wait_for(lambda: completed(db, after), what="a job after the kill")
    assert job_row(db, after)["result"] == 10
    assert sup.proc.poll() is None


def test_a_job_that_ignores_sigterm_is_sigkilled_after_kill_grace(supervisor, db):
    supervisor(workers=1, kill_grace="1s")
    job_id = forge.dispatch(db, jobs.ignore_sigterm, jobs.Sleep(seconds=0))
    wait_for(lambda: finished(db, job_id), what="the job that ignores SIGTERM")
    row = job_row(db, job_id)
    assert (row["status"], row["last_error"]["type"]) == ("failed", "forge.errors.JobTimeout")
    events = db.execute("SELECT event FROM test_events WHERE job_id = %s ORDER BY at", (job_id,)).fetchall()
    assert events == [("start",), ("sigterm",)]  # it had its SIGTERM at the timeout, and lived on
    # the SIGKILL came one kill_grace after the SIGTERM: 1 s of timeout + 1 s of grace after the start
    assert timedelta(seconds=1.9) <= _ran_for(db, job_id) <= timedelta(seconds=3)


@pytest.mark.parametrize(
    "ignores_sigterm",
    [False, True],
    ids=["child", "child-ignoring-sigterm"],
)
def test_a_timeout_kill_reaches_the_jobs_children(supervisor, db, ignores_sigterm):
    supervisor(workers=1, kill_grace="1s")
    job_id = forge.dispatch(db, jobs.sleep_with_child, jobs.Child(ignore_sigterm=ignores_sigterm))
    child_of = "SELECT pid FROM test_events WHERE job_id = %s AND event = 'child'"
    (child,) = wait_for(lambda: db.execute(child_of, (job_id,)).fetchone(), what="the job's child")
    try:
        wait_for(lambda: finished(db, job_id), what="the timed-out job")
        assert job_row(db, job_id)["last_error"]["type"] == "forge.errors.JobTimeout"
        wait_for(lambda: not alive(child), timeout=3, what=f"the job's child {child} to be killed with its worker")
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)


def test_timed_out_job_is_retried_per_its_policy(supervisor, db):
    supervisor(workers=1)
    job_id = forge.dispatch(db, jobs.sleep_then_retry, jobs.Sleep(seconds=0.01))
    wait_for(lambda: completed(db, job_id), what="the retried job")
    row = job_row(db, job_id)
    assert (row["status"], row["attempts"]) == ("completed", 2)


@pytest.mark.parametrize(
    ("job", "death"),
    [(jobs.crash, "exited with status 3"), (jobs.segfault, "killed by signal 11 (SIGSEGV)")],
    ids=["os._exit", "segfault"],
)
def test_a_crashing_worker_fails_only_its_own_job(supervisor, db, job, death):
    sup = supervisor(workers=2)
    crashed = forge.dispatch(db, job, jobs.Crash(code=3) if job is jobs.crash else jobs.N(n=0))
    others = forge.dispatch_many(db, jobs.double, [jobs.N(n=i) for i in range(50)])
    wait_for(lambda: finished(db, crashed, *others), what="all jobs")
    row = job_row(db, crashed)
    assert row["status"] == "failed"
    assert row["last_error"]["type"] == "forge.errors.WorkerCrashed"
    assert death in row["last_error"]["message"]
    assert row["crashes"] == 1
    statuses = db.execute("SELECT DISTINCT status FROM forge_jobs WHERE id = ANY(%s)", (others,)).fetchall()
    assert statuses == [("completed",)]
    assert sup.proc.poll() is None


def test_workers_are_recycled_after_max_jobs(supervisor, db):
    supervisor(workers=1, max_jobs_per_worker=3)
    ids = forge.dispatch_many(db, jobs.double, [jobs.N(n=i) for i in range(10)])
    wait_for(lambda: completed(db, *ids), what="all jobs")
    per_pid = db.execute("SELECT count(*) FROM test_events GROUP BY pid ORDER BY min(at)").fetchall()
    assert [n for (n,) in per_pid] == [3, 3, 3, 1]
    assert db.execute("SELECT count(*) FROM forge_jobs WHERE status = 'completed'").fetchone()[0] == 10


def test_workers_are_recycled_when_their_memory_passes_the_limit(supervisor, db):
    supervisor(workers=1, max_worker_memory="150MiB")
    ids = forge.dispatch_many(db, jobs.leak, [jobs.N(n=200)] * 3)
    wait_for(lambda: completed(db, *ids), what="the leaking jobs")
    pids = db.execute("SELECT count(DISTINCT pid) FROM test_events").fetchone()[0]
    assert pids == 3  # each leak pushed its worker past the limit, so each ran in a fresh one
    small = forge.dispatch_many(db, jobs.leak, [jobs.N(n=1)] * 3)
    wait_for(lambda: completed(db, *small), what="the small jobs")
    assert db.execute("SELECT count(DISTINCT pid) FROM test_events").fetchone()[0] == 4


def test_a_prefetched_job_goes_back_when_its_worker_stays_busy(supervisor, db):
    supervisor(workers=1, prefetch=1, prefetch_timeout="300ms")
    long_job = forge.dispatch(db, jobs.nap, jobs.Sleep(seconds=20))
    wait_for(lambda: job_row(db, long_job)["status"] == "running", what="the long job to start")
    waiting = forge.dispatch(db, jobs.double, jobs.N(n=4))
    wait_for(lambda: job_row(db, waiting)["status"] == "claimed", what="the prefetch claim")
    supervisor(workers=1)
    wait_for(lambda: completed(db, waiting), timeout=10, what="the idle node to run the handed-back job")
    pid_of = "SELECT pid FROM test_events WHERE job_id = %s"
    assert db.execute(pid_of, (waiting,)).fetchone()[0] != db.execute(pid_of, (long_job,)).fetchone()[0]
    assert job_row(db, waiting)["attempts"] == 1  # the unstarted claim was not charged
    assert job_row(db, long_job)["status"] == "running"


def test_a_crash_inside_a_batch_hands_the_waiting_jobs_back_uncharged(supervisor, db):
    sup = supervisor(workers=1)
    ids = forge.dispatch_many(db, jobs.quick, [jobs.Crash(code=i + 1) for i in range(400)])
    wait_for(lambda: completed(db, *ids), what="the warm-up jobs")  # now known to be short: batched
    codes = [i + 1 for i in range(400)]
    codes[200] = 0  # in the middle of a batch
    batch = forge.dispatch_many(db, jobs.quick, [jobs.Crash(code=c) for c in codes])
    poison, after = batch[200], batch[:200] + batch[201:]
    wait_for(lambda: finished(db, *batch), what="the jobs around the crash")
    assert (job_row(db, poison)["status"], job_row(db, poison)["last_error"]["type"]) == (
        "failed", "forge.errors.WorkerCrashed"
    )
    # with max_attempts=1 a mate failed with the crash would show attempts = 1 too: its status tells
    mates = db.execute(
        "SELECT status, attempts, count(*) FROM forge_jobs WHERE id = ANY(%s) GROUP BY 1, 2", (after,)
    ).fetchall()
    assert mates == [("completed", 1, len(after))]
    assert sup.stop() == 0
    (totals,) = sup.core_totals()  # it ran once, and stopped cleanly: one line of totals
    # jobs were waiting behind the crashed one, and went back: to the database when its worker's end was
    # handled, or to other workers if its head had been running 50 ms by then (the zygote was slow to say)
    assert totals["released"] > 0 or "jobs queued behind it go to other workers" in sup.log()


def test_workers_forked_once_the_zygote_idled_have_the_driver_loaded(supervisor, db):
    # forge does not import psycopg (the supervisor boots without it); the first
    # worker, forked at boot, loads it on its first ctx.db, while the zygote
    # loads it once idle, so every worker forked after that has it already.
    supervisor(workers=1, max_jobs_per_worker=1)
    time.sleep(0.5)  # the boot's worker is up and the zygote idle
    first = forge.dispatch(db, jobs.driver_loaded, jobs.N(n=1))
    wait_for(lambda: completed(db, first), what="the first job")
    second = forge.dispatch(db, jobs.driver_loaded, jobs.N(n=2))
    wait_for(lambda: completed(db, second), what="the second job")
    assert [job_row(db, first)["result"], job_row(db, second)["result"]] == [False, True]


def test_short_jobs_are_claimed_many_at_a_time(supervisor, db):
    # One worker's room and spares are 64 short jobs; claims sized by them
    # alone shared each claim's fixed cost among ~30 jobs. The arbiter holds up
    # to two claim_batches of short jobs, so a backlog is claimed in big bites.
    sup = supervisor(workers=1)
    warm = forge.dispatch_many(db, jobs.quick, [jobs.Crash(code=1)] * 400)
    wait_for(lambda: completed(db, *warm), what="the warm-up jobs")  # now known to be short
    ids = forge.dispatch_many(db, jobs.quick, [jobs.Crash(code=1)] * 6000)
    wait_for(lambda: completed(db, *ids), what="the backlog")
    assert sup.stop() == 0
    (totals,) = sup.core_totals()  # it ran once, and stopped cleanly: one line of totals
    per_claim = totals["claimed"] / totals["claims"]
    assert per_claim > 2 * MAX_BATCH, per_claim


def test_short_jobs_run_with_prefetch_off(supervisor, db):
    supervisor(workers=1, prefetch=0)
    warm = forge.dispatch_many(db, jobs.quick, [jobs.Crash(code=1)] * 400)
    wait_for(lambda: completed(db, *warm), what="the warm-up jobs")  # now known to be short
    ids = forge.dispatch_many(db, jobs.quick, [jobs.Crash(code=1)] * 400)
    wait_for(lambda: completed(db, *ids), timeout=20, what="short jobs with no prefetch")


def test_a_job_that_closes_its_workers_socket_is_failed_saying_so(supervisor, db):
    # os.closerange(3, ...) closes the worker's socket to the supervisor too: the job's outcome cannot be sent.
    sup = supervisor(workers=1)
    job_id = forge.dispatch(db, jobs.closes_its_fds, jobs.N(n=7))
    wait_for(lambda: finished(db, job_id), what="the job that closes its worker's socket, 3 attempts")
    row = job_row(db, job_id)
    assert (row["status"], row["attempts"], row["crashes"]) == ("failed", 3, 3)  # retried, each a crash
    assert row["last_error"]["type"] == "forge.errors.WorkerDisconnected"
    assert row["last_error"]["message"] == (
        f"the worker running job {job_id} exited with status 72 because the job closed or broke the worker's "
        "socket to the supervisor (an os.close or os.closerange of the worker's file descriptors), so the worker "
        "could not report how the job ended (the supervisor's log names the file descriptor)"
    )
    assert f"job {job_id} cannot be reported: the worker's socket to the supervisor (file descriptor" in sup.log()
    after = forge.dispatch(db, jobs.double, jobs.N(n=2))
    wait_for(lambda: completed(db, after), what="a job after it, on a fresh worker")
    assert sup.running()
