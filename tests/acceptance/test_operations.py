"""Operating jobs by hand (forge.Jobs) under real supervisors: a dead letter retried to completion with its
history, refusals that change nothing, retry_all on 100,000 dead letters while other jobs flow, a cancelled
job never run, and a pause that holds on two nodes and across their restarts until resumed."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from testapp import jobs, operations

import forge

from .conftest import completed, job_row, wait_for

MODULES = ("testapp.jobs", "testapp.operations")
SPEC_QUERY = "SELECT id FROM forge_jobs WHERE status = 'dead_letter' ORDER BY failed_at DESC"


def _statuses(db, ids: list[int]) -> list[str]:
    return [row[0] for row in db.execute("SELECT status FROM forge_jobs WHERE id = ANY(%s) ORDER BY id", (ids,))]


def _starts(db, job_id: int) -> list[int]:
    rows = db.execute("SELECT attempt FROM test_events WHERE job_id = %s AND event = 'start' ORDER BY at", (job_id,))
    return [row[0] for row in rows]


def _dead_letter(db) -> int:
    """A job that fails twice, then succeeds once retried by hand: dispatched, and waited for in the dead letter
    queue (the supervisor's dead_letter_after is 0s)."""
    job_id = forge.dispatch(db, operations.fail_until, operations.Until(attempt=3))
    wait_for(lambda: job_row(db, job_id)["status"] == "dead_letter", what="the job to reach the dead letter queue")
    return job_id


def test_a_dead_letter_retried_by_hand_completes_with_its_history(supervisor, db):
    supervisor(modules=MODULES, dead_letter_after="0s")
    job_id = _dead_letter(db)
    assert [row[0] for row in db.execute(SPEC_QUERY)] == [job_id]
    assert job_row(db, job_id)["attempts"] == 2

    assert forge.Jobs(db).retry(job_id) == 1
    wait_for(lambda: completed(db, job_id), what="the retried job")
    row = job_row(db, job_id)
    assert (row["attempts"], row["max_attempts"], row["result"]) == (3, 2 + 2, 3)
    assert _starts(db, job_id) == [1, 2, 3]


def test_refused_retries_change_nothing_under_a_running_supervisor(supervisor, db):
    supervisor(modules=MODULES, dead_letter_after="0s")
    done = forge.dispatch(db, jobs.double, jobs.N(n=1))
    dead = forge.dispatch(db, operations.fail_until, operations.Until(attempt=9))
    wait_for(lambda: _statuses(db, [done, dead]) == ["completed", "dead_letter"], what="a completion and a dead letter")
    with pytest.raises(forge.JobStateError, match=f"job {done} \\(completed\\)"):
        forge.Jobs(db).retry(done)
    with pytest.raises(forge.JobNotFound, match=f"job {dead + 1000}"):
        forge.Jobs(db).retry(dead + 1000)
    with pytest.raises(forge.JobStateError):
        forge.Jobs(db).retry(dead, done)
    time.sleep(0.5)  # a wrongly retried dead letter would be claimed by now
    assert _statuses(db, [done, dead]) == ["completed", "dead_letter"]
    assert _starts(db, dead) == [1, 2]


def _dead_letters(db, count: int, job_type: str) -> None:
    db.execute(
        "INSERT INTO forge_jobs (job_type, input, status, attempts, max_attempts, claimed_by, failed_at,"
        " dead_lettered_at, last_error) SELECT %s, '{}', 'dead_letter', 3, 3, gen_random_uuid(), now(), now(),"
        " '{\"type\": \"E\"}' FROM generate_series(1, %s)", (job_type, count))


def test_retry_all_of_100000_dead_letters_while_other_jobs_flow(supervisor, db, app_db):
    supervisor(modules=MODULES, workers=2)
    _dead_letters(db, 100_000, "ops_bulk")  # a type no node runs: retried, they wait
    db.execute("VACUUM ANALYZE forge_jobs")
    assert forge.Jobs(db).retry_all("ops_bulk", dry_run=True) == 100_000
    assert db.execute("SELECT count(*) FROM forge_jobs WHERE status = 'dead_letter'").fetchone()[0] == 100_000

    flowing: list[int] = []
    stop = threading.Event()

    def dispatch_others() -> None:
        with psycopg.connect(app_db, autocommit=True) as conn:
            while not stop.is_set():
                flowing.append(forge.dispatch(conn, jobs.double, jobs.N(n=len(flowing))))
                time.sleep(0.02)

    thread = threading.Thread(target=dispatch_others)
    thread.start()
    try:
        time.sleep(0.5)
        began = db.execute("SELECT clock_timestamp()").fetchone()[0]
        start = time.monotonic()
        retried = forge.Jobs(db).retry_all("ops_bulk")
        elapsed = time.monotonic() - start
        ended = db.execute("SELECT clock_timestamp()").fetchone()[0]
        time.sleep(0.3)
    finally:
        stop.set()
        thread.join()
    print(f"retry_all of 100,000 dead letters: {elapsed:.2f} s")
    assert retried == 100_000
    assert elapsed < 30, elapsed
    counts = db.execute("SELECT status, max_attempts, crashes, count(*) FROM forge_jobs WHERE job_type = 'ops_bulk'"
                        " GROUP BY 1, 2, 3").fetchall()
    assert counts == [("pending", 3 + 3, 0, 100_000)]  # no registration here: the row's own allowance again
    wait_for(lambda: completed(db, *flowing), what="the jobs dispatched meanwhile")
    (during,) = db.execute("SELECT count(*) FROM forge_jobs WHERE id = ANY(%s) AND completed_at BETWEEN %s AND %s",
                           (flowing, began, ended)).fetchone()
    assert during > 0, "no other job completed while retry_all ran"


def test_a_cancelled_job_is_never_run(supervisor, db):
    supervisor(modules=MODULES)
    job_id = forge.dispatch(db, operations.parked, None, delay="1s")
    assert forge.Jobs(db).cancel(job_id) == 1
    time.sleep(2)
    assert _statuses(db, [job_id]) == ["cancelled"]
    assert _starts(db, job_id) == []


def test_a_pause_holds_on_two_nodes_and_across_restarts_until_resumed(supervisor, db):
    # Polling 30 s apart: only the resume's NOTIFY explains a claim within 1 s of it.
    nodes = [supervisor(modules=MODULES, poll_interval="30s") for _ in range(2)]
    warm = [forge.dispatch(db, operations.parked, None) for _ in range(4)]
    wait_for(lambda: completed(db, *warm), what="the first parked jobs")
    operator = forge.Jobs(db)
    assert operator.pause("parked") == ["parked"]

    held = [forge.dispatch(db, operations.parked, None) for _ in range(6)]

    def others_run() -> None:
        ids = [forge.dispatch(db, jobs.double, jobs.N(n=n)) for n in range(6)]
        wait_for(lambda: completed(db, *ids), what="other jobs")

    others_run()
    time.sleep(1.5)
    assert _statuses(db, held) == ["pending"] * 6
    for node in nodes:
        node.stop()
        node.start()
    others_run()
    time.sleep(1)
    assert operator.paused() == ["parked"]
    assert _statuses(db, held) == ["pending"] * 6
    live = db.execute("SELECT count(*) FROM forge_nodes WHERE stopped_at IS NULL AND 'parked' = ANY(job_types)")
    assert live.fetchone()[0] == 2  # both run the type, and neither claimed it

    assert operator.resume("parked") == ["parked"]
    resumed = db.execute("SELECT clock_timestamp()").fetchone()[0]
    wait_for(lambda: completed(db, *held), what="the paused jobs, resumed")
    (latest,) = db.execute("SELECT max(claimed_at) FROM forge_jobs WHERE id = ANY(%s)", (held,)).fetchone()
    assert (latest - resumed).total_seconds() < 1.0


def test_a_job_operates_on_other_jobs_through_ctx_jobs(supervisor, db):
    supervisor(modules=MODULES, dead_letter_after="0s")
    dead = _dead_letter(db)
    operator = forge.dispatch(db, operations.operate, operations.Operate(job_id=dead, job_type="ops_paused"))
    wait_for(lambda: completed(db, operator), what="the operating job")
    wait_for(lambda: completed(db, dead), what="the job it retried")
    assert job_row(db, operator)["result"] == {
        "status": "dead_letter", "missing": None, "retried": 1, "paused": ["ops_paused"],
        "while_paused": ["ops_paused"], "resumed": ["ops_paused"], "after": [],
    }
    assert _starts(db, dead) == [1, 2, 3]  # the retry by ctx.jobs ran it again
