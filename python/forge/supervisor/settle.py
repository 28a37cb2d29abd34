"""How the arbiter records a job that did not end by itself: its worker died or was killed under it, or no job
of that type is registered here."""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

from .._core import ClaimedJob, Core
from ..errors import JobCancelled, JobTimeout, LeaseLost, UnknownJobType, WorkerCrashed, WorkerDisconnected
from ..job import Job
from .arbiter_log import fate
from .confine import out_of_memory
from .protocol import error_payload
from .worker import EXIT_CANNOT_REPORT

_log = logging.getLogger("forge.arbiter")

#: Kill reasons whose job is handed back unrun, its attempt not charged.
HAND_BACK = frozenset({"shutdown"})
#: Endings that count towards the job's crash limit (poison pills): "oom", the OOM killer in its memory cgroup.
CRASH_CLASS = frozenset({None, "fenced", "lost", "oom"})


def settle_head(core: Core, job: ClaimedJob, started: bool, reason: str | None, status: int | None,
                definition: Job[Any] | None, fence_after: float, dead_letter_after: float) -> None:
    """Record the head job of a worker that ended for `reason` (None: on its own) with wait `status`.

    Handed back uncharged if the worker never read its frame whole (it cannot
    have run it) or the kill hands it back; else failed, a crash if it is one.
    Either end of a job an operator cancelled is recorded cancelled (0007).
    """
    if not started or reason in HAND_BACK:
        core.release(job.id, job.attempt)
        return
    error = killed_job_error(job, reason, status, definition, fence_after)
    retryable = definition.retry.retries(error) if definition else True
    # The error names the job already: the line adds its type there, once, and what becomes of it.
    named = str(error).replace(f"job {job.id}", f"job {job.id} ({job.job_type})", 1)
    outcome = "cancelled, never retried" if reason == "cancelled" else fate(job, retryable, definition,
                                                                            dead_letter_after)
    _log.warning("%s; %s", named, outcome)
    core.fail(job.id, job.attempt, retryable, error_json(error, job.attempt), crashed=reason in CRASH_CLASS)


def fail_unknown(core: Core, job: ClaimedJob) -> None:
    """Claims are filtered by job type, so this only happens if the registry changed under the arbiter."""
    error = UnknownJobType(f"job {job.id} has job_type {job.job_type!r}, which no job on this node is registered as")
    _log.error("%s", error)
    core.fail(job.id, job.attempt, True, error_json(error, job.attempt))


def killed_job_error(job: ClaimedJob, reason: str | None, status: int | None, definition: Job[Any] | None,
                     fence_after: float) -> Exception:
    """The error recorded for `job`, whose worker ended for `reason` (None: on its own)."""
    if reason == "timeout":
        timeout = definition.timeout if definition is not None and definition.timeout is not None else 0.0
        return JobTimeout(f"job {job.id} ran past its timeout of {timeout:g}s; its worker was killed")
    if reason == "cancelled":
        return JobCancelled(f"job {job.id} was cancelled by an operator while it ran; its worker was killed")
    if reason == "oom":
        limit = definition.resources.memory if definition is not None and definition.resources is not None else 0
        return out_of_memory(job.id, limit or 0, "the kernel's OOM killer killed its worker (or a process it started) "
                             "in the job's memory cgroup")
    if reason == "hung":
        return JobTimeout(f"job {job.id} sent no heartbeat within its heartbeat_timeout; its worker was killed")
    if reason == "fenced":
        return LeaseLost(
            f"this node could not renew the lease of job {job.id} for {fence_after:g}s "
            "(database unreachable or node paused); its worker was killed so the job never runs twice"
        )
    if reason == "lost":
        return LeaseLost(
            f"the lease of job {job.id} is no longer this node's (rescued by another node, changed by hand, or "
            "its row locked by another session until the node gave the lease up); its worker was killed"
        )
    disconnected = status is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) == EXIT_CANNOT_REPORT
    return (WorkerDisconnected if disconnected else WorkerCrashed)(
        f"the worker running job {job.id} {describe_exit(status)}"
    )


def describe_exit(status: int | None) -> str:
    """How a worker process ended, in words, from its wait status."""
    if status is None:
        return "vanished without an exit status"
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        name = signal.Signals(signum).name if signum in signal.Signals._value2member_map_ else str(signum)
        hint = " (possibly the OOM killer)" if signum == signal.SIGKILL else ""
        return f"was killed by signal {signum} ({name}){hint}"
    code = os.WEXITSTATUS(status)
    if code == EXIT_CANNOT_REPORT:
        return (f"exited with status {code} because the job closed or broke the worker's socket to the supervisor "
                "(an os.close or os.closerange of the worker's file descriptors), so the worker could not report "
                "how the job ended (the supervisor's log names the file descriptor)")
    return f"exited with status {code} in the middle of the job"


def error_json(error: BaseException, attempt: int) -> bytes:
    """last_error for an error raised or built by the supervisor (no traceback)."""
    cls = type(error)
    return error_payload(f"{cls.__module__}.{cls.__qualname__}", str(error), attempt)
