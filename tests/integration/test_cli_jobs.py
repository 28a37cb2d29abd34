"""`forge jobs ...` on real rows, through forge.Jobs: --json parsed, the refusals and their exit statuses, and
that a refused change changes nothing."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime

import psycopg
import pytest

from tests.cli_runner import forge, forge_json
from tests.job_rows import insert, states


def refused(result, status: int, *named: str) -> None:
    """A refusal: exit `status`, nothing on stdout, one line on stderr naming each of `named`."""
    assert result.exit_code == status, result.output
    assert result.stdout == "" and result.stderr.count("\n") == 1, result.stderr
    for word in named:
        assert word in result.stderr, result.stderr


def columns(conn: psycopg.Connection) -> set[str]:
    rows = conn.execute("SELECT column_name FROM information_schema.columns WHERE table_name = 'forge_jobs'")
    return {name for (name,) in rows}


def test_list_prints_jobs_newest_first_as_forge_jobs_columns(conn, database_url):
    first = insert(conn, "emails", "pending", priority=1)
    second = insert(conn, "reports", "dead_letter")
    listed = forge_json(database_url, "jobs", "list")
    assert [job["id"] for job in listed] == second + first
    assert set(listed[0]) == columns(conn)
    assert (listed[1]["priority"], listed[1]["status"], listed[1]["input"]) == ("high", "pending", {"n": 1})
    assert datetime.fromisoformat(listed[0]["failed_at"]).utcoffset() is not None  # ISO 8601, with its offset
    assert listed[0]["last_error"]["type"] == "NetworkError"


def test_list_filters_by_status_type_time_and_limit(conn, database_url):
    pending = insert(conn, "emails", "pending", count=3)
    failed = insert(conn, "emails", "failed")
    reports = insert(conn, "reports", "dead_letter")
    conn.execute("UPDATE forge_jobs SET created_at = now() - interval '2 hours' WHERE id = %s", (pending[0],))

    def ids(*args: str) -> list[int]:
        return sorted(job["id"] for job in forge_json(database_url, "jobs", "list", *args))

    assert ids("--status", "failed", "--status", "dead_letter") == sorted(failed + reports)
    assert ids("--type", "reports") == reports
    assert ids("--type", "emails", "--status", "pending", "--since", "1h") == pending[1:]
    assert ids("--since", "2000-01-01T00:00:00Z", "--type", "emails", "--status", "pending") == pending
    assert len(ids("--limit", "2")) == 2


@pytest.mark.parametrize(("args", "named"), [
    (["--status", "lost"], "'lost' is not one of"),
    (["--since", "yesterday"], "'yesterday' is neither a duration"),
    (["--limit", "0"], "--limit"),
])
def test_list_refuses_bad_values_with_exit_2(database_url, args, named):
    refused(forge(database_url, "jobs", "list", *args), 2, named)


def test_show_prints_one_job(conn, database_url):
    (job_id,) = insert(conn, "reports", "dead_letter", attempts=3)
    shown = forge_json(database_url, "jobs", "show", str(job_id))
    assert (shown["id"], shown["status"], shown["attempts"], shown["priority"]) == (job_id, "dead_letter", 3, "normal")
    text = forge(database_url, "jobs", "show", str(job_id))
    assert text.exit_code == 0, text.output
    for part in ("reports", "dead_letter", "3/3", "NetworkError: down", "Traceback: boom"):
        assert part in text.stdout


def test_show_of_an_unknown_job_exits_1_naming_it(database_url):
    refused(forge(database_url, "jobs", "show", "424242"), 1, "424242", "not found")


def test_watch_exits_0_when_its_job_completes(conn, database_url):
    (job_id,) = insert(conn, "emails", "running")

    def run_the_job() -> None:
        with psycopg.connect(database_url, autocommit=True) as other:
            for percent in (30, 60):
                time.sleep(0.3)
                other.execute("UPDATE forge_jobs SET progress = %s, progress_message = 'halfway' WHERE id = %s",
                              (percent, job_id))
            other.execute("UPDATE forge_jobs SET status = 'completed', progress = 100 WHERE id = %s", (job_id,))

    runner = threading.Thread(target=run_the_job)
    runner.start()
    result = forge(database_url, "jobs", "watch", str(job_id))
    runner.join()
    assert result.exit_code == 0, result.output
    assert "100%" in result.stdout


@pytest.mark.parametrize("status", ["failed", "dead_letter", "cancelled"])
def test_watch_exits_1_when_its_job_ends_otherwise(conn, database_url, status):
    (job_id,) = insert(conn, "emails", status)
    result = forge(database_url, "jobs", "watch", str(job_id))
    assert result.exit_code == 1
    assert f"job {job_id} ended {status}" in result.stderr


def test_watch_json_of_an_ended_job_prints_it_once_and_exits_as_without(conn, database_url):
    (failed,) = insert(conn, "emails", "failed")
    result = forge(database_url, "jobs", "watch", str(failed), "--json")
    assert result.exit_code == 1 and f"job {failed} ended failed" in result.stderr
    (line,) = result.stdout.splitlines()
    shown = forge_json(database_url, "jobs", "show", str(failed))
    assert shown.pop("logs") == [] and json.loads(line) == shown  # the job's object; its log lines are show's
    (done,) = insert(conn, "emails", "completed")
    result = forge(database_url, "jobs", "watch", str(done), "--json")
    assert (result.exit_code, json.loads(result.stdout)["status"]) == (0, "completed"), result.output


def test_watch_of_an_unknown_job_exits_1(database_url):
    assert forge(database_url, "jobs", "watch", "424242").exit_code == 1


def test_retry_sends_failed_jobs_back_keeping_their_attempts(conn, database_url):
    dead = insert(conn, "reports", "dead_letter", attempts=3)
    failed = insert(conn, "reports", "failed", attempts=3)
    result = forge(database_url, "jobs", "retry", *map(str, dead + failed), "--attempts", "2")
    assert result.exit_code == 0, result.output
    for job_id in dead + failed:
        job = forge_json(database_url, "jobs", "show", str(job_id))
        assert (job["status"], job["attempts"], job["max_attempts"]) == ("pending", 3, 5)
        assert job["last_error"]["type"] == "NetworkError"  # kept until the next attempt ends


def test_retry_of_a_completed_an_unknown_or_a_mix_exits_1_and_changes_nothing(conn, database_url):
    dead = insert(conn, "reports", "dead_letter")
    completed = insert(conn, "reports", "completed")
    before = states(conn)
    refused(forge(database_url, "jobs", "retry", str(completed[0])), 1, str(completed[0]), "completed")
    refused(forge(database_url, "jobs", "retry", "424242"), 1, "424242")
    refused(forge(database_url, "jobs", "retry", str(dead[0]), "424242"), 1, "424242")
    refused(forge(database_url, "jobs", "retry", str(dead[0]), str(completed[0])), 1, str(completed[0]))
    assert states(conn) == before


def test_retry_needs_an_id_and_takes_only_ids(database_url):
    refused(forge(database_url, "jobs", "retry"), 2, "ID")
    refused(forge(database_url, "jobs", "retry", "12x"), 2, "'12x' is not a job id")
    refused(forge(database_url, "jobs", "retry", "1", "--attempts", "0"), 2, "--attempts")


def test_retry_all_counts_with_dry_run_then_retries(conn, database_url):
    dead = insert(conn, "reports", "dead_letter", count=4)
    failed = insert(conn, "reports", "failed", count=2)
    other = insert(conn, "emails", "dead_letter")
    before = states(conn)
    dry = forge(database_url, "jobs", "retry-all", "--type", "reports", "--dry-run")
    assert (dry.exit_code, dry.stdout.strip()) == (0, "would retry 4 dead_letter reports job(s)"), dry.output
    assert states(conn) == before
    done = forge(database_url, "jobs", "retry-all", "--type", "reports")
    assert (done.exit_code, done.stdout.strip()) == (0, "retried 4 dead_letter reports job(s)"), done.output
    after = states(conn)
    assert [after[i] for i in dead] == ["pending"] * 4
    assert [after[i] for i in failed + other] == ["failed", "failed", "dead_letter"]
    failed_too = forge(database_url, "jobs", "retry-all", "--type", "reports", "--status", "failed")
    assert failed_too.stdout.strip() == "retried 2 failed reports job(s)", failed_too.output


def test_retry_all_refuses_a_status_it_does_not_take(database_url):
    refused(forge(database_url, "jobs", "retry-all", "--type", "reports", "--status", "completed"), 2, "'completed'")
    refused(forge(database_url, "jobs", "retry-all"), 2, "--type")


def test_discard_gives_failed_jobs_up_and_refuses_others(conn, database_url):
    failed = insert(conn, "reports", "failed")
    pending = insert(conn, "reports", "pending")
    before = states(conn)
    refused(forge(database_url, "jobs", "discard", str(failed[0]), str(pending[0])), 1, str(pending[0]), "pending")
    assert states(conn) == before
    result = forge(database_url, "jobs", "discard", str(failed[0]))
    assert result.exit_code == 0, result.output
    assert forge_json(database_url, "jobs", "show", str(failed[0]))["status"] == "discarded"


def test_discard_all_counts_with_dry_run_then_discards(conn, database_url):
    dead = insert(conn, "reports", "dead_letter", count=3)
    before = states(conn)
    dry = forge(database_url, "jobs", "discard-all", "--type", "reports", "--dry-run")
    assert dry.stdout.strip() == "would discard 3 dead_letter reports job(s)", dry.output
    assert states(conn) == before
    done = forge(database_url, "jobs", "discard-all", "--type", "reports")
    assert done.stdout.strip() == "discarded 3 dead_letter reports job(s)", done.output
    assert {states(conn)[i] for i in dead} == {"discarded"}


def test_cancel_cancels_waiting_jobs_and_refuses_ended_ones(conn, database_url):
    pending = insert(conn, "emails", "pending")
    retrying = insert(conn, "emails", "retry")
    completed = insert(conn, "emails", "completed")
    before = states(conn)
    refused(forge(database_url, "jobs", "cancel", str(pending[0]), str(completed[0])), 1, str(completed[0]))
    assert states(conn) == before
    result = forge(database_url, "jobs", "cancel", str(pending[0]), str(retrying[0]))
    assert result.exit_code == 0, result.output
    assert [states(conn)[i] for i in pending + retrying] == ["cancelled", "cancelled"]
    assert forge_json(database_url, "status")["by_status"]["cancelled"] == 2
