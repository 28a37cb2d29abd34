"""The words of a failed attempt's log line (arbiter_log.fate): retried, or failed for good and when the job
goes to the dead letter queue."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from forge.supervisor.arbiter_log import SUMMARY_EVERY, Throughput, fate


def _job(attempt: int, max_attempts: int = 3) -> SimpleNamespace:
    return SimpleNamespace(id=12, job_type="send_email", attempt=attempt, max_attempts=max_attempts)


@pytest.mark.parametrize(
    ("attempt", "retryable", "own", "node", "words"),
    [
        (1, True, None, 0.0, "attempt 1/3, retried"),
        (2, True, 60.0, 0.0, "attempt 2/3, retried"),
        (3, True, None, 0.0, "failed for good after 3/3 attempts; it goes to the dead letter queue at the next "
                             "maintenance sweep"),
        (3, False, None, 3600.0, "failed for good after 3/3 attempts; it goes to the dead letter queue in 1h"),
        (1, False, None, 3600.0, "failed for good at attempt 1/3 (not retryable); it goes to the dead letter queue "
                                 "in 1h"),
        (3, True, 60.0, 3600.0, "failed for good after 3/3 attempts; it goes to the dead letter queue in 1m"),
        (3, True, 0.0, 3600.0, "failed for good after 3/3 attempts; it goes to the dead letter queue at the next "
                               "maintenance sweep"),
    ],
)
def test_fate(attempt, retryable, own, node, words):
    definition = SimpleNamespace(dead_letter_after=own)
    assert fate(_job(attempt), retryable, definition, node) == words


@pytest.mark.parametrize(("seconds", "words"), [(604800.0, "7d"), (5400.0, "90m"), (90.0, "90s"), (0.5, "0.5s")])
def test_the_delay_is_written_as_forge_toml_would(seconds, words):
    assert fate(_job(3), True, None, seconds).endswith(f"dead letter queue in {words}")


def test_without_its_definition_the_node_setting_counts():
    assert fate(_job(3), True, None, 120.0).endswith("in 2m")


class _Counters:
    """Stands in for the core's stats(): the counters Throughput reads."""

    def __init__(self) -> None:
        self.counts = {"completed": 0, "failed": 0, "retried": 0}

    def stats(self) -> dict[str, int]:
        return dict(self.counts)


def test_the_throughput_summary_is_at_debug_level(caplog):
    counters = _Counters()
    throughput = Throughput(0.0)
    counters.counts["completed"] = 5
    with caplog.at_level(logging.INFO, logger="forge.arbiter"):
        throughput.summarise(SUMMARY_EVERY, counters, [])
    assert caplog.records == []
    counters.counts["failed"] = 1
    with caplog.at_level(logging.DEBUG, logger="forge.arbiter"):
        throughput.summarise(2 * SUMMARY_EVERY, counters, [])
    assert [r.getMessage() for r in caplog.records] == ["last 10s: 0 completed, 0 retried, 1 failed; 0 running"]
