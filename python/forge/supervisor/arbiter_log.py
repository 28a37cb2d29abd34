"""What the arbiter writes to the log about its work: failed attempts, a periodic throughput summary, its state.

Only logging: nothing here changes a job, a slot or the core.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import msgspec

from .._core import ClaimedJob, Core
from ..job import Job
from .protocol import Failed
from .slot import Slot

_log = logging.getLogger("forge.arbiter")

#: How often throughput is summarised in the log, in seconds.
SUMMARY_EVERY = 10.0


def log_failure(job: ClaimedJob, message: Failed, definition: Job[Any] | None, dead_letter_after: float) -> None:
    """A job raised: its type, the error, and what becomes of the job (see fate)."""
    error = msgspec.json.decode(message.error)
    _log.warning(
        "job %s (%s) raised %s: %s; %s",
        job.id,
        job.job_type,
        error.get("type"),
        error.get("message"),
        fate(job, message.retryable, definition, dead_letter_after),
    )


def fate(job: ClaimedJob, retryable: bool, definition: Job[Any] | None, dead_letter_after: float) -> str:
    """What becomes of `job` once this failed attempt is recorded, in an operator's words: retried, or failed for
    good (its last attempt, or an error its retry policy does not retry) and when it moves to the dead letter
    queue: after the job type's dead_letter_after, else the node's `dead_letter_after` (maintenance.rs)."""
    attempts = f"{job.attempt}/{job.max_attempts}"
    if retryable and job.attempt < job.max_attempts:
        return f"attempt {attempts}, retried"
    why = f"after {attempts} attempts" if job.attempt >= job.max_attempts else f"at attempt {attempts} (not retryable)"
    own = definition.dead_letter_after if definition is not None else None
    after = dead_letter_after if own is None else own
    when = "at the next maintenance sweep" if after <= 0 else f"in {_duration(after)}"
    return f"failed for good {why}; it goes to the dead letter queue {when}"


def _duration(seconds: float) -> str:
    """`seconds` in the largest unit that divides it (as forge.toml would write it): 7d, 1h, 90s, 0.5s."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def log_take_back(head: ClaimedJob, running: float, taken: list[ClaimedJob]) -> None:
    """The jobs queued behind a short job type's job that runs long were taken back for other workers."""
    if taken:
        _log.info(
            "job %s (%s) has run %.0f ms: %d jobs queued behind it go to other workers",
            head.id,
            head.job_type,
            running * 1000,
            len(taken),
        )


class Throughput:
    """Every SUMMARY_EVERY seconds in which jobs ended: how many completed, were retried and failed, at debug level:
    at info, a busy node's log would be these lines (every failure has a line of its own already)."""

    def __init__(self, now: float) -> None:
        self._next_summary = now + SUMMARY_EVERY
        self._last_stats: dict[str, int] = {}

    def summarise(self, now: float, core: Core, slots: Sequence[Slot]) -> None:
        if now < self._next_summary:
            return
        self._next_summary = now + SUMMARY_EVERY
        stats = core.stats()
        delta = {k: v - self._last_stats.get(k, 0) for k, v in stats.items()}
        self._last_stats = stats
        if delta.get("completed") or delta.get("failed") or delta.get("retried"):
            _log.debug(
                "last %.0fs: %d completed, %d retried, %d failed; %d running",
                SUMMARY_EVERY,
                delta.get("completed", 0),
                delta.get("retried", 0),
                delta.get("failed", 0),
                sum(1 for s in slots if s.jobs),
            )


def dump_state(
    state: str, fenced: bool, core: Core, queued: int, requested: int, received: int, slots: Sequence[Slot]
) -> None:
    """SIGUSR1: log what every slot is doing, the lease and the core's counters."""
    _log.info(
        "state %s, fenced %s, lease age %dms, queue %d, credits asked %d received %d",
        state,
        fenced,
        core.lease_age_ms(),
        queued,
        requested,
        received,
    )
    for slot in slots:
        _log.info(
            "slot %d: pid %s, socket %s, jobs %s, kill %s, retiring %s",
            slot.index,
            slot.pid,
            None if slot.sock is None else slot.sock.fileno(),
            [f"{job.id}/{job.attempt}" for job in slot.jobs],
            slot.kill_reason,
            slot.retiring,
        )
    _log.info("core: %s", " ".join(f"{k}={v}" for k, v in sorted(core.stats().items())))
