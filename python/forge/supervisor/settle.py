"""How the arbiter records a job whose worker died or was killed under it."""

from __future__ import annotations

import os
import signal
from typing import Any

from .._core import ClaimedJob
from ..errors import JobTimeout, LeaseLost, WorkerCrashed
from ..job import Job
from .protocol import error_payload

#: Kill reasons whose job is handed back unrun, its attempt not charged.
HAND_BACK = frozenset({"shutdown"})
#: Endings that count towards the job's crash limit (poison pills).
CRASH_CLASS = frozenset({None, "fenced", "lost"})


def killed_job_error(job: ClaimedJob, reason: str | None, status: int | None, definition: Job[Any] | None,
                     fence_after: float) -> Exception:
    """The error recorded for `job`, whose worker ended for `reason` (None: on its own)."""
    if reason == "timeout":
        timeout = definition.timeout if definition is not None and definition.timeout is not None else 0.0
        return JobTimeout(f"job {job.id} ran past its timeout of {timeout:g}s; its worker was killed")
    if reason == "hung":
        return JobTimeout(f"job {job.id} sent no heartbeat within its heartbeat_timeout; its worker was killed")
    if reason == "fenced":
        return LeaseLost(
            f"this node could not renew the lease of job {job.id} for {fence_after:g}s "
            "(database unreachable or node paused); its worker was killed so the job never runs twice"
        )
    if reason == "lost":
        return LeaseLost(f"the lease of job {job.id} was taken over by another node; its worker was killed")
    return WorkerCrashed(f"the worker running job {job.id} {describe_exit(status)}")


def describe_exit(status: int | None) -> str:
    """How a worker process ended, in words, from its wait status."""
    if status is None:
        return "vanished without an exit status"
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        name = signal.Signals(signum).name if signum in signal.Signals._value2member_map_ else str(signum)
        hint = " (possibly the OOM killer)" if signum == signal.SIGKILL else ""
        return f"was killed by signal {signum} ({name}){hint}"
    return f"exited with status {os.WEXITSTATUS(status)} in the middle of the job"


def error_json(error: BaseException, attempt: int) -> bytes:
    """last_error for an error raised or built by the supervisor (no traceback)."""
    cls = type(error)
    return error_payload(f"{cls.__module__}.{cls.__qualname__}", str(error), attempt)
