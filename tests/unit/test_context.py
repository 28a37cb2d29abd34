"""JobContext without a worker: progress() takes 0-100 only, ctx.log hands lines at or above the log level to its
sink with the job's id and attempt, and is made only when used."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from forge.completion import Completion, JobLease
from forge.context import JobContext
from forge.errors import ForgeError


def context(reports: list[tuple[Any, ...]], lines: list[tuple[Any, ...]] | None = None) -> JobContext:
    def connect() -> Any:
        raise AssertionError("no database here")

    sink = None if lines is None else (lambda *line: lines.append(line))
    completion = Completion(JobLease(job_id=7, attempt=2, owner="", started=0.0))
    return JobContext(job_id=7, job_type="t", attempt=2, parent_id=None, report=lambda *r: reports.append(r),
                      connect=connect, completion=completion, log_sink=sink)


@pytest.mark.parametrize("percent", [-1, 101, 50.0, True, "50", None])
def test_progress_outside_0_to_100_is_a_clear_error_and_reports_nothing(percent):
    reports: list[tuple[Any, ...]] = []
    with pytest.raises(ForgeError, match=r"must be an integer from 0 to 100"):
        context(reports).progress(percent)
    assert reports == []


def test_progress_reports_percent_and_message():
    reports: list[tuple[Any, ...]] = []
    ctx = context(reports)
    ctx.progress(0)
    ctx.progress(100, "done")
    assert reports == [("progress", 0, None), ("progress", 100, "done")]


def test_log_lines_reach_the_sink_with_the_job_at_or_above_the_log_level(caplog):
    lines: list[tuple[Any, ...]] = []
    ctx = context([], lines)
    with caplog.at_level(logging.INFO, logger="forge.job"):
        ctx.log.debug("hidden", a=1)
        ctx.log.info("shown", a=1)
        ctx.log.warn("careful")
        ctx.log.warning("careful too")
        ctx.log.error("broken", code=3)
    assert lines == [(7, 2, "info", "shown", {"a": 1}), (7, 2, "warn", "careful", {}),
                     (7, 2, "warn", "careful too", {}), (7, 2, "error", "broken", {"code": 3})]
    assert [r.forge_fields for r in caplog.records][0] == {"job_id": 7, "job_type": "t", "attempt": 2, "a": 1}


def test_a_job_that_does_not_log_makes_no_logger():
    ctx = context([], [])
    assert "log" not in vars(ctx)
    ctx.log.info("now")
    assert "log" in vars(ctx)
