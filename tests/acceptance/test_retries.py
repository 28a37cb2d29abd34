"""Retry counts and backoff spacing for each backoff kind, and `on` filtering."""

from __future__ import annotations

import pytest
from testapp import jobs

import forge
from forge.job import registry

from .conftest import finished, job_row, wait_for

SLACK = 0.4  # seconds a retry may start after it is due (loop and statement latency)


def _gaps(db, job_id: int) -> list[float]:
    """Seconds from each attempt's end to the next attempt's start."""
    rows = db.execute(
        "SELECT attempt, event, extract(epoch FROM at) FROM test_events WHERE job_id = %s ORDER BY at", (job_id,)
    ).fetchall()
    ends = {a: t for a, e, t in rows if e == "end"}
    starts = {a: t for a, e, t in rows if e == "start"}
    return [float(starts[a + 1] - ends[a]) for a in sorted(ends) if a + 1 in starts]


@pytest.mark.parametrize(
    ("job_type", "delays"),
    [
        ("fail_exponential", [0.3, 0.6, 1.2]),
        ("fail_linear", [0.3, 0.6, 0.9]),
        ("fail_fixed", [0.3, 0.3, 0.3]),
        ("fail_capped", [0.3, 0.5, 0.5]),
    ],
)
def test_backoff_spacing_and_attempt_count(supervisor, db, job_type, delays):
    supervisor(workers=1)
    job = registry()[job_type]
    job_id = forge.dispatch(db, job, jobs.Fail())
    wait_for(lambda: finished(db, job_id), timeout=20, what=f"{job_type} to exhaust its attempts")
    row = job_row(db, job_id)
    assert row["status"] == "failed"
    assert row["attempts"] == 4
    assert row["failed_at"] is not None
    assert row["last_error"]["type"] == "testapp.jobs.NetworkError"
    assert row["last_error"]["message"] == "attempt 4 failed"
    assert "Traceback" in row["last_error"]["traceback"]
    gaps = _gaps(db, job_id)
    assert len(gaps) == 3
    for gap, delay in zip(gaps, delays):
        assert delay <= gap <= delay + SLACK, (gaps, delays)


@pytest.mark.parametrize(
    ("error", "attempts"),
    [("NetworkError", 3), ("RateLimitError", 3), ("ValidationProblem", 1)],
)
def test_only_errors_named_in_on_are_retried(supervisor, db, error, attempts):
    supervisor(workers=1)
    picky = registry()["picky"]
    job_id = forge.dispatch(db, picky, jobs.Fail(error=error))
    wait_for(lambda: finished(db, job_id), what="the picky job")
    row = job_row(db, job_id)
    assert (row["status"], row["attempts"]) == ("failed", attempts)
    assert row["last_error"]["type"] == f"testapp.jobs.{error}"
