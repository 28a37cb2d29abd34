"""What a real supervisor's log tells an operator: a start-up banner, one line per failed attempt saying whether
the job is retried or failed for good (and when it goes to the dead letter queue), and `[log] format = "json"`:
one JSON object a line, from the supervisor, the zygote and the workers alike."""

from __future__ import annotations

import json
import re

from testapp import jobs, log_lines

import forge
from forge.job import registry
from forge.version import version

from ..supervisors import Supervisor
from .conftest import APPS, DEFAULT_NODE, finished, wait_for


def _line(log: str, pattern: str) -> str:
    """The one line of `log` that matches `pattern`."""
    found = [line for line in log.splitlines() if re.search(pattern, line)]
    assert len(found) == 1, (pattern, found, log[-3000:])
    return found[0]


def test_failed_attempts_say_retried_or_failed_for_good(supervisor, db):
    sup = supervisor(workers=1)
    picky = registry()["picky"]
    exhausted = forge.dispatch(db, picky, jobs.Fail(error="NetworkError"))
    refused = forge.dispatch(db, picky, jobs.Fail(error="ValidationProblem"))
    wait_for(lambda: finished(db, exhausted, refused), timeout=20, what="the picky jobs to fail")
    sup.stop()
    log = sup.log()
    for attempt in (1, 2):
        _line(log, rf"job {exhausted} \(picky\) raised testapp\.jobs\.NetworkError: attempt {attempt} failed; "
                   rf"attempt {attempt}/3, retried$")
    _line(log, rf"job {exhausted} \(picky\) raised testapp\.jobs\.NetworkError: attempt 3 failed; failed for good "
               r"after 3/3 attempts; it goes to the dead letter queue in 1h$")
    _line(log, rf"job {refused} \(picky\) raised testapp\.jobs\.ValidationProblem: attempt 1 failed; failed for "
               r"good at attempt 1/3 \(not retryable\); it goes to the dead letter queue in 1h$")
    assert "may be retried" not in log


def test_a_timeout_names_its_job_once_and_says_what_follows(supervisor, db):
    sup = supervisor(workers=1, dead_letter_after="0s")
    retried = forge.dispatch(db, registry()["sleep_then_retry"], jobs.Sleep(seconds=0))
    last = forge.dispatch(db, registry()["sleep_forever"], jobs.Sleep(seconds=0))
    wait_for(lambda: finished(db, retried, last), timeout=30, what="the timed out jobs to end")
    sup.stop()
    log = sup.log()
    first = _line(log, rf"job {retried} \(sleep_then_retry\) ran past its timeout")
    assert first.endswith("ran past its timeout of 1s; its worker was killed; attempt 1/2, retried"), first
    assert first.count(f"job {retried}") == 1, first
    final = _line(log, rf"job {last} \(sleep_forever\) ran past its timeout")
    assert final.endswith("failed for good after 1/1 attempts; it goes to the dead letter queue at the next "
                          "maintenance sweep"), final
    assert final.count(f"job {last}") == 1, final


def test_the_banner_says_what_this_node_is_and_where_its_database_is(supervisor, app_db):
    sup = supervisor(workers=1, worker_capabilities=["gpu"])
    sup.stop()
    log = sup.log()
    banner = _line(log, r"forge\.supervisor\[\d+\]: Forge ")
    assert f"Forge {version()}, config {sup.config}: workers 1, capabilities gpu, job types " in banner, banner
    assert "picky, " in banner and "sleep_forever" in banner, banner
    dbname = app_db.rsplit("/", 1)[1]
    _line(log, rf"forge\.supervisor\[\d+\]: database 127\.0\.0\.1:\d+/{dbname}$")
    assert app_db not in log  # the URL (and its credentials, if any) never


def test_json_format_is_one_object_a_line_from_every_process(app_db, tmp_path, db):
    sup = Supervisor(tmp_path / "node", app_db, modules=["testapp.jobs", "testapp.log_lines"],
                     node={**DEFAULT_NODE, "workers": 1}, app_path=APPS, start_timeout=15.0)
    sup.config.write_text(sup.config.read_text() + '[log]\nformat = "json"\n')
    sup.start()
    logged = forge.dispatch(db, registry()["log_fields"], log_lines.Odd())
    failing = forge.dispatch(db, registry()["picky"], jobs.Fail(error="ValidationProblem"))
    wait_for(lambda: finished(db, logged, failing), timeout=20, what="the jobs to end")
    assert sup.stop() == 0
    entries = [json.loads(line) for line in sup.log().splitlines() if line and not line.startswith("=====")]
    for entry in entries:
        assert {"time", "level", "logger", "pid", "message"} <= entry.keys(), entry
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", entry["time"]), entry
    by_message = {entry["message"]: entry for entry in entries}
    charged = by_message["charged"]
    assert charged["logger"] == "forge.job" and charged["level"] == "info", charged
    assert (charged["amount"], charged["currency"], charged["job_id"]) == (12, "EUR", logged), charged
    assert charged["field.level"] == "a field named like a key", charged
    odd = by_message["odd fields"]
    assert odd["level"] == "warning" and odd["job_id"] == logged, odd
    assert odd["huge"] == 2**70 and odd["keys"] == {"1": 2}, odd
    assert odd["broken"] == "<Unrepresentable object: repr() raised RuntimeError>" and odd["cycle"] == "[[...]]", odd
    assert any(m.startswith("Forge ") for m in by_message), by_message.keys()
    assert any("failed for good at attempt 1/3 (not retryable)" in m for m in by_message), by_message.keys()
    assert {e["pid"] for e in entries if e["logger"] == "forge.job"} != {sup.runs[-1][0]}  # a worker's lines
