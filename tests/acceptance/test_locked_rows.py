"""Another session locking a running job's row (SELECT ... FOR UPDATE, an operator's open transaction) must
not stop the node renewing its other leases: lease renewal has its own connection and skips a locked row
instead of waiting for it. Only the locked job is at risk: held past 75% of heartbeat_timeout without a
renewal, it is fenced like any lease its node cannot renew."""

from __future__ import annotations

import threading
import time

import psycopg
from testapp import jobs

import forge

from .conftest import finished, job_row, wait_for

# fenced after 4.5 s without a renewal, rescuable after 6 s
LEASES = {"workers": 2, "heartbeat_interval": "1s", "heartbeat_timeout": "6s"}


def _lock_row(url: str, job_id: int, seconds: float) -> threading.Thread:
    """Hold a row lock on the job for `seconds` from another session, in a thread; started once it is held."""
    locked = threading.Event()

    def hold() -> None:
        with psycopg.connect(url) as conn:  # a transaction: the lock lasts until the rollback
            conn.execute("SELECT 1 FROM forge_jobs WHERE id = %s FOR UPDATE", (job_id,))
            locked.set()
            time.sleep(seconds)
            conn.rollback()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert locked.wait(10), "the row lock was not taken"
    return thread


def _started(db, *ids: int) -> bool:
    return all(job_row(db, i)["status"] == "running" for i in ids)


def test_a_locked_row_fences_only_its_own_job(supervisor, app_db, db):
    sup = supervisor(**LEASES)
    locked = forge.dispatch(db, jobs.nap, jobs.Sleep(seconds=6))
    # ends while the row is locked: its report is written meanwhile (the locked job's own is set aside)
    other = forge.dispatch(db, jobs.nap, jobs.Sleep(seconds=8))
    wait_for(lambda: _started(db, locked, other), what="both jobs to start")
    _lock_row(app_db, locked, 15).join()
    wait_for(lambda: finished(db, locked, other), timeout=40, what="both jobs")
    row = job_row(db, other)
    assert (row["status"], row["attempts"], row["crashes"], row["last_error"]) == ("completed", 1, 0, None)
    assert "killing the workers running jobs" not in sup.log()  # the node never fenced itself as a whole
    # The locked job's lease could not be renewed for 15 s: its first attempt was cut short before
    # another node could rescue it, then it ran again.
    row = job_row(db, locked)
    assert (row["status"], row["attempts"], row["crashes"]) == ("completed", 2, 1)
    # attempt 1's error stays: the node's own LeaseLost (written once the lock is gone), or NodeLost when
    # a sweep rescued the job first
    assert row["last_error"]["type"] in ("forge.errors.LeaseLost", "forge.errors.NodeLost"), row["last_error"]
    assert row["last_error"]["attempt"] == 1
    ends = db.execute("SELECT attempt FROM test_events WHERE job_id = %s AND event = 'end'", (locked,)).fetchall()
    assert ends == [(2,)]


def test_a_locked_row_delays_only_its_own_jobs_report(supervisor, app_db, db):
    supervisor(**LEASES)
    locked = forge.dispatch(db, jobs.nap, jobs.Sleep(seconds=1))
    other = forge.dispatch(db, jobs.nap, jobs.Sleep(seconds=2))
    wait_for(lambda: _started(db, locked, other), what="both jobs to start")
    # shorter than the fence: neither job is at risk; the locked job's completion is reported first
    holder = _lock_row(app_db, locked, 4)
    try:
        later = forge.dispatch(db, jobs.nap, jobs.Sleep(seconds=0.1))  # the node goes on claiming meanwhile
        wait_for(lambda: finished(db, other, later), timeout=3,
                 what="the other jobs' completions, while the row is locked")
    finally:
        holder.join()  # before the test's database is dropped under it
    wait_for(lambda: finished(db, locked), what="the locked job's completion")
    ends = [(job_row(db, i)["status"], job_row(db, i)["attempts"]) for i in (locked, other, later)]
    assert ends == [("completed", 1)] * 3
