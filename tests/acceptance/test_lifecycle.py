"""Dispatch to completion through a real supervisor: transactions, results, schedules, priorities."""

from __future__ import annotations

import random
import time
from datetime import datetime, timedelta, timezone

import psycopg
from testapp import jobs

import forge
from forge.dispatch import MAX_INPUT_BYTES

from .conftest import completed, job_row, wait_for

# For the tests of wake-ups: a supervisor polls every 200 ms by default, so a quick pickup could be polling.
# Polling 30 s apart, only NOTIFY (or its payload's due time) explains one.
SLOW_POLL = "30s"


def _idle_after_a_first_claim(db) -> None:
    """Run one job, so the supervisor's first claim (made at start, whatever it heard) is behind it."""
    job_id = forge.dispatch(db, jobs.double, {"n": 0})
    wait_for(lambda: completed(db, job_id), what="the first job")


def test_committed_job_runs_and_rolled_back_job_never_exists(supervisor, app_db, db):
    supervisor()
    with psycopg.connect(app_db) as conn:
        kept = forge.dispatch(conn, jobs.double, jobs.N(n=21))
        conn.commit()
        dropped = forge.dispatch(conn, jobs.double, jobs.N(n=1))
        conn.rollback()
    wait_for(lambda: completed(db, kept), what="the committed job")
    row = job_row(db, kept)
    assert row["status"] == "completed"
    assert row["result"] == 42
    assert row["attempts"] == 1
    assert db.execute("SELECT count(*) FROM forge_jobs WHERE id = %s", (dropped,)).fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM test_events").fetchone()[0] == 1


def test_notify_wakes_an_idle_supervisor_quickly(supervisor, db):
    supervisor(poll_interval=SLOW_POLL)
    _idle_after_a_first_claim(db)
    job_id = forge.dispatch(db, jobs.double, {"n": 2})
    wait_for(lambda: completed(db, job_id), timeout=5, what="a NOTIFY-woken claim")
    row = job_row(db, job_id)
    assert row["started_at"] - row["created_at"] < timedelta(seconds=1)


def test_no_notify_is_lost_to_a_claim_in_flight(supervisor, db):
    # The second job of each pair often commits while the claim woken by the
    # first is running, after its snapshot: that claim cannot see it, so its
    # NOTIFY must still cause another claim (polling is 30 s away).
    supervisor(poll_interval=SLOW_POLL, workers=4)
    _idle_after_a_first_claim(db)
    rng = random.Random(7)
    for i in range(60):
        first = forge.dispatch(db, jobs.double, {"n": i})
        time.sleep(rng.uniform(0, 0.002))
        second = forge.dispatch(db, jobs.double, {"n": i})
        wait_for(lambda: completed(db, first, second), timeout=3, what=f"pair {i}'s NOTIFY-woken jobs")


def test_claim_rows_are_closed_as_their_jobs_end(supervisor, db):
    # The maintenance sweep would delete them only after heartbeat_timeout
    # (30 s): gone within seconds means the node closed them itself.
    supervisor(workers=2)
    ids = forge.dispatch_many(db, jobs.double, [jobs.N(n=i) for i in range(300)])
    wait_for(lambda: completed(db, *ids), what="300 jobs")
    wait_for(
        lambda: db.execute("SELECT count(*) FROM forge_claims").fetchone()[0] == 0,
        timeout=5,
        what="the claim rows to be closed",
    )


def test_async_job_results_are_stored(supervisor, db):
    supervisor()
    ids = forge.dispatch_many(db, jobs.double_async, [jobs.N(n=i) for i in range(20)])
    wait_for(lambda: completed(db, *ids), what="async jobs")
    results = db.execute("SELECT id, result FROM forge_jobs WHERE id = ANY(%s) ORDER BY id", (ids,)).fetchall()
    assert [r[1] for r in results] == [{"doubled": i * 2} for i in range(20)]


def test_scheduled_jobs_do_not_run_before_their_time(supervisor, db):
    supervisor(poll_interval=SLOW_POLL)
    later = forge.dispatch(db, jobs.double, jobs.N(n=1), delay="1.5s")
    at = forge.dispatch(db, jobs.double, jobs.N(n=2), at=datetime.now(timezone.utc) + timedelta(seconds=1))
    now = forge.dispatch(db, jobs.double, jobs.N(n=3))
    wait_for(lambda: completed(db, now), what="the immediate job")
    assert job_row(db, later)["status"] == "pending"
    wait_for(lambda: completed(db, later, at), what="the scheduled jobs")
    for job_id in (later, at):
        row = job_row(db, job_id)
        assert row["started_at"] >= row["scheduled_at"]
        # woken by the NOTIFY payload's due time, not by polling
        assert row["started_at"] - row["scheduled_at"] < timedelta(seconds=0.5)
    assert job_row(db, later)["scheduled_at"] - job_row(db, later)["created_at"] >= timedelta(seconds=1.5)


def test_one_worker_runs_jobs_strictly_by_priority(supervisor, db):
    order = ["low", "normal", "high", "critical", "low", "critical", "normal", "high"]
    ids = [forge.dispatch(db, jobs.double, jobs.N(n=i), priority=p) for i, p in enumerate(order)]
    supervisor(workers=1)
    wait_for(lambda: completed(db, *ids), what="all jobs")
    started = db.execute(
        "SELECT j.priority FROM test_events e JOIN forge_jobs j ON j.id = e.job_id ORDER BY e.at"
    ).fetchall()
    assert [r[0] for r in started] == [0, 0, 1, 1, 2, 2, 3, 3]


def test_progress_reaches_the_row_and_log_lines_the_supervisors_log(supervisor, db):
    sup = supervisor()
    job_id = forge.dispatch(db, jobs.report_progress, jobs.N(n=4))
    wait_for(lambda: completed(db, job_id), what="the progress job")
    row = job_row(db, job_id)
    assert (row["progress"], row["progress_message"]) == (100, "step 4 of 4")
    wait_for(lambda: "progress reported" in sup.log(), what="the job's structured log line")
    assert f"job_id={job_id}" in sup.log()


def test_job_logs_reach_forge_job_logs(supervisor, db):
    sup = supervisor()
    job_id = forge.dispatch(db, jobs.report_progress, jobs.N(n=4))
    wait_for(lambda: completed(db, job_id), what="the progress job")
    assert sup.stop() == 0  # a clean stop has written whatever the node had to write
    rows = db.execute("SELECT attempt, level, message, fields FROM forge_job_logs WHERE job_id = %s", (job_id,))
    assert [row[:3] for row in rows.fetchall()] == [(1, "info", "progress reported")]


def test_many_jobs_complete_exactly_once(supervisor, db):
    supervisor(workers=2)
    ids = forge.dispatch_many(db, jobs.double, [jobs.N(n=i) for i in range(500)])
    wait_for(lambda: completed(db, *ids), timeout=60, what="500 jobs")
    runs = db.execute("SELECT count(*), count(DISTINCT job_id) FROM test_events").fetchone()
    assert runs == (500, 500)
    assert db.execute("SELECT count(*) FROM forge_jobs WHERE attempts <> 1").fetchone()[0] == 0


def _listen_backend(db) -> int | None:
    """The pid of the core's LISTEN connection: its last statement was the LISTEN, or a ping (an empty query)."""
    rows = db.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        " AND query IN ('LISTEN forge_jobs', '')"
    ).fetchall()
    assert len(rows) <= 1, f"more than one connection looks like the LISTEN one: {rows}"
    return rows[0][0] if rows else None


def test_listen_is_re_established_after_its_connection_is_killed(supervisor, db):
    supervisor(poll_interval=SLOW_POLL)
    _idle_after_a_first_claim(db)
    killed = wait_for(lambda: _listen_backend(db), what="the LISTEN connection")
    assert db.execute("SELECT pg_terminate_backend(%s)", (killed,)).fetchone() == (True,)
    wait_for(lambda: _listen_backend(db) not in (None, killed), timeout=10, what="a new LISTEN connection")
    time.sleep(0.5)  # the claim a reconnect makes (notifications may have been missed) is over
    job_id = forge.dispatch(db, jobs.double, {"n": 3})
    wait_for(lambda: completed(db, job_id), timeout=3, what="a job woken through the new LISTEN connection")


def test_an_input_of_the_largest_size_reaches_its_job(supervisor, db):
    supervisor(workers=1)
    job_id = forge.dispatch(db, jobs.measure, "x" * (MAX_INPUT_BYTES - 2))  # its JSON is exactly the limit
    wait_for(lambda: completed(db, job_id), what="the job of the largest input")
    assert job_row(db, job_id)["result"] == MAX_INPUT_BYTES - 2
