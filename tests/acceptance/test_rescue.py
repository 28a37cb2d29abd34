"""What the rescue of a dead node's jobs charges them, and the crash cap as a setting, on real supervisors.

A rescue charges only attempts that started: a job its node had claimed but not started goes back with no
crash counted and no run of its own used up (max_attempts - attempts is what it had); a started one is a
crash-class ending (NodeLost), retried while attempts remain and failed when none do.
"""

from __future__ import annotations

import signal

from testapp import endings

import forge

from .conftest import finished, job_row, wait_for

ENDINGS = ["testapp.endings"]
LEASES = {"heartbeat_interval": "500ms", "heartbeat_timeout": "3s"}  # rescued 3 s after its node died


def _held(db, ids: list[int], status: str) -> int:
    query = "SELECT count(*) FROM forge_jobs WHERE id = ANY(%s) AND status = %s"
    return db.execute(query, (ids, status)).fetchone()[0]


def test_a_dead_nodes_claims_that_never_started_are_given_back_uncharged(supervisor, db):
    # One worker runs the first job; the others wait claimed in the node's queue (prefetch) when it dies.
    node = supervisor(modules=ENDINGS, workers=1, prefetch=3, prefetch_timeout="60s", **LEASES)
    running = forge.dispatch(db, endings.run_once, endings.Seconds(seconds=60))
    waiting = forge.dispatch_many(db, endings.run_once, [endings.Seconds(seconds=0.1)] * 3)
    wait_for(lambda: job_row(db, running)["status"] == "running" and _held(db, waiting, "claimed") == 3,
             what="one job running and three claimed behind it")
    node.stop(signal.SIGKILL)
    supervisor(modules=ENDINGS, **LEASES)
    wait_for(lambda: finished(db, running, *waiting), timeout=20, what="the rescue and the reruns")

    row = job_row(db, running)  # started, and its one attempt is gone
    assert (row["status"], row["attempts"], row["crashes"]) == ("failed", 1, 1)
    assert row["last_error"]["type"] == "forge.errors.NodeLost"
    assert node.node_id in row["last_error"]["message"]
    for job_id in waiting:  # never started: still their one run, which they got
        row = job_row(db, job_id)
        assert (row["status"], row["crashes"]) == ("completed", 0), row
        assert row["max_attempts"] - row["attempts"] == 0
    starts = db.execute("SELECT count(*) FROM test_events WHERE job_id = ANY(%s)", (waiting,)).fetchone()[0]
    assert starts == 3


def test_max_crashes_is_a_setting(supervisor, db):
    supervisor(modules=ENDINGS, max_crashes=2)
    job_id = forge.dispatch(db, endings.crash_always, endings.Seconds(seconds=0))
    wait_for(lambda: finished(db, job_id), what="the crash cap to stop the job")
    row = job_row(db, job_id)
    assert (row["status"], row["attempts"], row["crashes"]) == ("failed", 2, 2)  # max_attempts is 10
    assert row["last_error"]["type"] == "forge.errors.WorkerCrashed"
    assert row["last_error"]["reason"] == "crashed 2 times (max_crashes 2)"
