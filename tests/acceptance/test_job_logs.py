"""Job logs (ctx.log) through a real supervisor: stored in forge_job_logs under the lease guard and in the log
stream with the job's fields, capped per attempt ([node] job_log_lines) and cut at 4 KiB, shown by `forge jobs
show`, never holding the database password; and progress visible from another connection while its job runs."""

from __future__ import annotations

import json
import time
from typing import Any

import msgspec
import psycopg
from click.testing import CliRunner
from testapp import logjobs

import forge
from forge.cli.main import cli

from .conftest import completed, finished, job_row, wait_for

MODULES = ("testapp.jobs", "testapp.logjobs")
CANARY = "canary-pw-123"


def stored(db: psycopg.Connection[Any], job_id: int) -> list[tuple[Any, ...]]:
    """(attempt, level, message, fields) of the job's stored lines, in order."""
    rows = db.execute("SELECT attempt, level, message, fields FROM forge_job_logs WHERE job_id = %s ORDER BY id",
                      (job_id,))
    return rows.fetchall()


def test_log_lines_are_stored_and_streamed_with_the_job_fields(supervisor, db):
    sup = supervisor(modules=MODULES)
    job_id = forge.dispatch(db, logjobs.log_lines, logjobs.Lines(n=3))
    wait_for(lambda: completed(db, job_id), what="the logging job")
    assert stored(db, job_id) == [(1, "warn", f"line {i}", {"i": i}) for i in range(3)]
    node = sup.node_id
    wait_for(lambda: "line 2" in sup.log(), what="the lines in the supervisor's log")
    streamed = [line for line in sup.log().splitlines() if "forge.job" in line and "line " in line]
    assert len(streamed) == 3, streamed
    for part in (f"job_id={job_id}", "job_type=log_lines", "attempt=1", f"node={node}", "WARNING"):
        assert all(part in line for line in streamed), (part, streamed)


def test_odd_values_are_stored_made_storable_and_never_raise_into_the_job(supervisor, db):
    sup = supervisor(modules=MODULES)
    job_id = forge.dispatch(db, logjobs.log_odd_values, logjobs.Lines())
    wait_for(lambda: completed(db, job_id), what="the job logging odd values")
    wait_for(lambda: "surrogate" in sup.log(), what="the lines in the stream")
    assert "Logging error" not in sup.log() and "bad=<Unprintable object: repr() raised RuntimeError>" in sup.log()
    (objects, nul, surrogate) = stored(db, job_id)  # the debug line is below the log level: neither streamed nor stored
    assert objects[2] == "objects"
    assert objects[3]["thing"].startswith("<object object at ")
    assert objects[3]["bad"] == "<Unprintable object: repr() raised RuntimeError>"
    assert nul[2:] == ("nul\ufffdinside", {"text": "a\ufffdb"})
    assert surrogate[2:] == ("surrogate \ufffd", {"text": "\ufffd"})


def test_lines_are_capped_per_attempt_and_cut_at_4_kib(supervisor, db):
    sup = supervisor(modules=MODULES, job_log_lines=5)
    job_id = forge.dispatch(db, logjobs.log_lines, logjobs.Lines(n=12, size=5000, fail=True))
    wait_for(lambda: finished(db, job_id), what="the job logging 12 lines")
    assert job_row(db, job_id)["status"] == "failed"
    lines = stored(db, job_id)
    assert [message for _, _, message, _ in lines[1:5]] == [f"line {i}" for i in range(1, 5)]
    first = lines[0][2]
    assert len(first.encode()) <= 4096 and first.startswith("x" * 4000) and first.endswith(" bytes cut]"), first[-40:]
    assert first == "x" * (5000 - int(first.rsplit("[", 1)[1].split()[0])) + first[first.index(" ["):]
    assert lines[5][:2] == (1, "warn") and lines[5][3] == {"dropped": 7}, lines[5]
    assert "7 more log line(s) of this attempt dropped" in lines[5][2]
    assert len(lines) == 6
    wait_for(lambda: "line 11" in sup.log(), what="every line in the stream: the cap is the table's")


def test_a_cap_of_0_stores_no_line_at_all(supervisor, db):
    sup = supervisor(modules=MODULES, job_log_lines=0)
    job_id = forge.dispatch(db, logjobs.log_lines, logjobs.Lines(n=3))
    wait_for(lambda: completed(db, job_id), what="the logging job")
    assert stored(db, job_id) == []
    assert "line 2" in sup.log()


def test_lines_of_an_attempt_whose_lease_was_taken_are_not_stored(supervisor, db):
    # Renewals 5 s apart: the worker of attempt 1 goes on logging for up to 5 s after its lease is taken, and
    # this node's core holds that lease meanwhile, so only the statement's lease guard keeps those lines out.
    sup = supervisor(modules=MODULES, heartbeat_interval="5s")
    job_id = forge.dispatch(db, logjobs.log_lines, logjobs.Lines(n=0, seconds=6))
    wait_for(lambda: len(stored(db, job_id)) >= 5, what="the first ticks of attempt 1")
    # What a rescue by another node does: back to retry, nobody's (due later here, so that this node does not
    # claim it again at once: that would end the lease of attempt 1 in its core, which then drops the lines).
    (taken_at,) = db.execute(
        "UPDATE forge_jobs SET status = 'retry', claimed_by = NULL, scheduled_at = now() + interval '1 hour'"
        " WHERE id = %s RETURNING clock_timestamp()", (job_id,)).fetchone()
    wait_for(lambda: "lease lost to another node" in sup.log(), timeout=10, what="the heartbeat to find it lost")
    db.execute("UPDATE forge_jobs SET scheduled_at = now() WHERE id = %s", (job_id,))
    wait_for(lambda: job_row(db, job_id)["attempts"] == 2 and finished(db, job_id), timeout=30,
             what="attempt 2 to end")  # by then whatever the core had queued of attempt 1 was written
    late = db.execute("SELECT count(*) FROM forge_job_logs WHERE job_id = %s AND attempt = 1 AND at > %s",
                      (job_id, taken_at)).fetchone()[0]
    assert late == 0, f"{late} lines of attempt 1 stored after its lease was taken"
    second = [message for attempt, _, message, _ in stored(db, job_id) if attempt == 2]
    assert second[:3] == ["tick 0", "tick 1", "tick 2"] and len(second) >= 60, second


def test_the_database_password_is_in_no_log_line_row_or_error(supervisor, app_db, db):
    # Trust authentication ignores the password; the supervisor and its workers still carry it in their URL.
    sup = supervisor(modules=MODULES, url=psycopg.conninfo.make_conninfo(app_db, password=CANARY))
    lines = logjobs.Lines(n=2, query=True, seconds=1.5)
    ids = [forge.dispatch(db, logjobs.log_lines, msgspec.structs.replace(lines, fail=fail)) for fail in (True, False)]
    wait_for(lambda: all(len(stored(db, job_id)) >= 5 for job_id in ids), what="the jobs' first lines")
    # The core reconnects, saying why in the log: with no password in it either.
    db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE 'forge %'")
    wait_for(lambda: finished(db, *ids), what="the logging jobs")
    assert sup.stop() == 0
    rows = db.execute("SELECT message, fields::text FROM forge_job_logs").fetchall()
    assert any("query refused" in message for message, _ in rows) and any("connected" in m for m, _ in rows), rows
    errors = db.execute("SELECT last_error::text FROM forge_jobs WHERE last_error IS NOT NULL").fetchall()
    assert len(errors) == 1 and "fails after logging" in errors[0][0]
    assert "forge.job" in sup.log()
    for text in [*map(str, rows), *map(str, errors), sup.log()]:
        assert CANARY not in text, text


def _show(app_db: str, *args: str) -> Any:
    result = CliRunner().invoke(cli, ["jobs", "show", *args], env={"FORGE_DATABASE_URL": app_db, "FORGE_CONFIG": None})
    assert result.exit_code == 0, result.output
    return result.stdout


def test_forge_jobs_show_prints_the_lines(supervisor, app_db, db):
    supervisor(modules=MODULES)
    job_id = forge.dispatch(db, logjobs.log_lines, logjobs.Lines(n=2, fail=True))
    wait_for(lambda: finished(db, job_id), what="the logging job")
    text = _show(app_db, str(job_id))
    assert "logs (2)" in text
    assert [line.split("attempt 1")[1].split() for line in text.splitlines() if "attempt 1  warn" in line] == [
        ["warn", "line", "0", '{"i":0}'], ["warn", "line", "1", '{"i":1}']]
    shown = json.loads(_show(app_db, str(job_id), "--json"))
    assert [(line["attempt"], line["level"], line["message"], line["fields"]) for line in shown["logs"]] == [
        (1, "warn", "line 0", {"i": 0}), (1, "warn", "line 1", {"i": 1})]
    assert shown["id"] == job_id and shown["logs"][0]["at"] <= shown["logs"][1]["at"]
    assert {line["node"] for line in shown["logs"]} == {shown["claimed_by"]}  # the node that ran the attempt


def test_progress_is_visible_from_another_connection_within_a_second_while_its_job_runs(supervisor, db):
    supervisor(modules=MODULES)
    job_id = forge.dispatch(db, logjobs.log_progress, logjobs.Lines(n=8, seconds=0.4))
    seen: list[tuple[Any, int]] = []  # (database time, progress) while the job runs
    ends = time.monotonic() + 30
    while (row := db.execute("SELECT clock_timestamp(), progress, status FROM forge_jobs WHERE id = %s",
                             (job_id,)).fetchone())[2] != "completed" and time.monotonic() < ends:
        if row[2] == "running":
            seen.append((row[0], row[1]))
        time.sleep(0.05)
    events = db.execute("SELECT event, at FROM test_events WHERE job_id = %s AND event LIKE 'progress %%'",
                        (job_id,)).fetchall()
    assert len(events) == 8
    for event, at in events:
        step = int(event.split()[1])
        shown = [when for when, progress in seen if progress >= step]
        assert shown, f"progress {step} never seen while the job ran"
        assert (shown[0] - at).total_seconds() < 1.0, f"progress {step} seen {shown[0] - at} after the call"
