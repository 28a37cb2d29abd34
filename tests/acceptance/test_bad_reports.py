"""Data PostgreSQL cannot store, handed back by a job: it fails that job at most, never the node.

Text is made storable where it is made (NUL characters and unpaired surrogates in progress messages, error
messages and tracebacks become U+FFFD); a result that cannot be stored fails its job, not retried, with
forge.errors.ResultNotStorable; and a report PostgreSQL refuses anyway (here: a trigger) is found by
splitting its batch and recorded as its job's failure while the rest of the batch is written.
"""

from __future__ import annotations

import pytest
from testapp import jobs

import forge

from .conftest import finished, job_row, wait_for

NOT_STORABLE = "forge.errors.ResultNotStorable"
REFUSE_ROWS = """
CREATE FUNCTION test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'the test trigger refuses job %', NEW.id; END $$;
CREATE TRIGGER test_refuse BEFORE UPDATE ON forge_jobs FOR EACH ROW
WHEN (NEW.result = '"refuse me"'::jsonb OR NEW.progress_message = 'refuse me')
EXECUTE FUNCTION test_refuse();
"""


def _healthy(db, n: int = 10) -> list[int]:
    return forge.dispatch_many(db, jobs.double, [jobs.N(n=i) for i in range(n)])


def _all_completed(db, ids: list[int]) -> None:
    statuses = db.execute("SELECT status, count(*) FROM forge_jobs WHERE id = ANY(%s) GROUP BY 1", (ids,)).fetchall()
    assert statuses == [("completed", len(ids))]


def test_a_progress_message_with_nul_is_stored_and_stalls_nothing(supervisor, db):
    sup = supervisor(workers=2)
    bad = forge.dispatch(db, jobs.bad_data, jobs.Hand(how="progress", text="a{NUL}b", seconds=0.5))
    healthy = _healthy(db)
    wait_for(lambda: finished(db, bad, *healthy), what="every job, the one with a NUL progress message too")
    row = job_row(db, bad)
    assert (row["status"], row["result"], row["progress_message"]) == ("completed", "done", "a\ufffdb")
    _all_completed(db, healthy)
    assert sup.running()


@pytest.mark.parametrize(
    ("hand", "reason"),
    [
        (jobs.Hand(how="return", text="a{NUL}b"), "NUL"),
        (jobs.Hand(how="return_nested", text="{NUL}"), "NUL"),
        (jobs.Hand(how="return_size", size=1024 * 1024), "1048578 bytes"),
        (jobs.Hand(how="return", text="a{SURROGATE}b"), "surrogates not allowed"),
    ],
    ids=["nul", "nul-nested", "over-1-MiB", "surrogate"],
)
def test_a_result_that_cannot_be_stored_fails_its_job_not_retried(supervisor, db, hand, reason):
    sup = supervisor(workers=2)
    bad = forge.dispatch(db, jobs.bad_data, hand)
    healthy = _healthy(db)
    wait_for(lambda: finished(db, bad, *healthy), what="every job")
    row = job_row(db, bad)
    assert (row["status"], row["attempts"], row["result"]) == ("failed", 1, None)
    error = row["last_error"]
    assert error["type"] == NOT_STORABLE
    assert f"result of job {bad} " in error["message"] and reason in error["message"]
    _all_completed(db, healthy)
    assert sup.running()


def test_a_result_of_just_under_the_limit_is_stored(supervisor, db):
    supervisor(workers=1)
    job_id = forge.dispatch(db, jobs.bad_data, jobs.Hand(how="return_size", size=1024 * 1024 - 2))
    wait_for(lambda: finished(db, job_id), what="the large result")
    row = job_row(db, job_id)
    assert row["status"] == "completed" and len(row["result"]) == 1024 * 1024 - 2


@pytest.mark.parametrize("text", ["bad{NUL}", "bad{SURROGATE}"], ids=["nul", "surrogate"])
def test_an_error_message_that_cannot_be_stored_is_made_storable(supervisor, db, text):
    sup = supervisor(workers=2)
    bad = forge.dispatch(db, jobs.bad_data, jobs.Hand(how="raise", text=text))
    healthy = _healthy(db)
    wait_for(lambda: finished(db, bad, *healthy), what="every job")
    row = job_row(db, bad)
    assert (row["status"], row["attempts"]) == ("failed", 2)  # retried per its policy, as any ValueError
    error = row["last_error"]
    assert (error["type"], error["message"]) == ("ValueError", "bad\ufffd")
    assert "ValueError: bad\ufffd" in error["traceback"]
    _all_completed(db, healthy)
    assert sup.running()


def test_an_exception_whose_str_raises_is_recorded_with_a_placeholder(supervisor, db):
    sup = supervisor(workers=1)
    bad = forge.dispatch(db, jobs.bad_data, jobs.Hand(how="raise_unprintable"))
    wait_for(lambda: finished(db, bad), what="the job raising an unprintable exception")
    row = job_row(db, bad)
    assert (row["status"], row["attempts"], row["crashes"]) == ("failed", 2, 0)
    error = row["last_error"]
    assert error["type"] == "testapp.jobs.Unprintable"
    assert error["message"] == "<str() raised RuntimeError>"
    assert "raise Unprintable()" in error["traceback"]
    events = db.execute("SELECT count(DISTINCT pid) FROM test_events WHERE job_id = %s", (bad,)).fetchone()[0]
    assert events == 1  # the same worker ran both attempts: it did not die
    assert sup.running()


def test_a_result_postgresql_refuses_fails_only_its_job(supervisor, db):
    db.execute(REFUSE_ROWS)
    bad = forge.dispatch(db, jobs.bad_data, jobs.Hand(how="return", text="refuse me"))
    healthy = _healthy(db, 30)
    sup = supervisor(workers=2)  # started after dispatch: the bad report shares its flushes with others
    wait_for(lambda: finished(db, bad, *healthy), what="every job, the refused one too")
    row = job_row(db, bad)
    assert (row["status"], row["attempts"]) == ("failed", 1)
    error = row["last_error"]
    assert error["type"] == NOT_STORABLE
    assert f"refused the completion of job {bad} " in error["message"]
    assert f"the test trigger refuses job {bad}" in error["message"]
    _all_completed(db, healthy)
    assert sup.running()


def test_a_progress_report_postgresql_refuses_fails_only_its_job(supervisor, db):
    db.execute(REFUSE_ROWS)
    bad = forge.dispatch(db, jobs.bad_data, jobs.Hand(how="progress", text="refuse me", seconds=30))
    healthy = _healthy(db, 30)
    sup = supervisor(workers=2)
    wait_for(lambda: finished(db, bad, *healthy), what="every job, the refused one too")
    row = job_row(db, bad)
    assert (row["status"], row["attempts"]) == ("failed", 1)
    assert row["last_error"]["type"] == NOT_STORABLE
    assert f"refused the progress of job {bad} " in row["last_error"]["message"]
    _all_completed(db, healthy)
    # its worker is stopped (the lease is gone) rather than left sleeping its 30 s
    wait_for(lambda: "lease lost" in sup.log(), what="the refused job's worker to be killed")
    assert sup.running()
