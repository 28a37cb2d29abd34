"""The worker's side of a job's resources: it runs the job confined to what the supervisor gave it (protocol.Limits),
and undoes that after the job.

- CPUs: sched_setaffinity to the CPU ids given; the worker's own affinity is put back after.
- Memory, on the whole process tree: in a memory cgroup of its own (cgroup v1: the node's group made by
  machine.MemoryCgroups, then one child per attempt, `job-<id>-<attempt>`, limit in memory.limit_in_bytes and
  memory.memsw.limit_in_bytes), which the worker joins before the job and leaves after; the job's children are
  born in it. Over the limit, the kernel's OOM killer kills the largest process in the group (the worker, or a
  child of the job); the supervisor finds the kill in the group's memory.oom_control and records
  errors.JobOutOfMemory. Without such a cgroup, RLIMIT_AS: the job may map `memory` bytes more than the worker
  had; an allocation past that raises MemoryError, recorded as JobOutOfMemory (each child has its own limit).
- GPUs: CUDA_VISIBLE_DEVICES set to exactly the ids given (on a GPU node, "" for every other job: set when the
  worker starts); a worker that ran a GPU job retires after it, since a CUDA runtime reads the variable once.
Jobs without a request never come here (worker.py): they pay nothing.
"""

from __future__ import annotations

import logging
import os
import resource
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import msgspec

from ..errors import JobOutOfMemory
from ..job import registry
from .protocol import Completed, Failed, Limits, RunJob, error_payload

_log = logging.getLogger("forge.worker")

GPU_VARIABLE = "CUDA_VISIBLE_DEVICES"


def job_cgroup(base: str, job_id: int, attempt: int) -> Path:
    """The memory cgroup an attempt runs in, under the node's group `base`."""
    return Path(base) / f"job-{job_id}-{attempt}"


def worker_started(gpu_node: bool) -> None:
    """On a GPU node, jobs that ask for no GPU see none."""
    if gpu_node:
        os.environ[GPU_VARIABLE] = ""


def run_confined(run: Callable[[RunJob], Completed | Failed], frame: RunJob, base: str | None) -> Completed | Failed:
    """Run the job of `frame` (which carries Limits) confined; then undo it all. A MemoryError under an address
    space limit becomes JobOutOfMemory; a worker that ran a GPU job retires."""
    limits = frame.limits
    assert limits is not None
    with ExitStack() as undo:
        if limits.cores:
            undo.callback(os.sched_setaffinity, 0, os.sched_getaffinity(0))
            os.sched_setaffinity(0, limits.cores)
        if limits.gpus:
            undo.callback(os.environ.__setitem__, GPU_VARIABLE, os.environ.get(GPU_VARIABLE, ""))
            os.environ[GPU_VARIABLE] = ",".join(limits.gpus)
        rlimited = limits.memory and _limit_memory(undo, frame, limits, base)
        outcome = run(frame)
    if rlimited and isinstance(outcome, Failed) and msgspec.json.decode(outcome.error)["type"] == "MemoryError":
        error = out_of_memory(frame.id, limits.memory, "an allocation past its address space limit (RLIMIT_AS) failed")
        definition = registry().get(frame.job_type)
        outcome = Failed(frame.id, frame.attempt, definition is None or definition.retry.retries(error),
                         error_payload("forge.errors.JobOutOfMemory", str(error), frame.attempt))
    outcome.retiring = bool(limits.gpus)
    return outcome


def _limit_memory(undo: ExitStack, frame: RunJob, limits: Limits, base: str | None) -> bool:
    """Put the worker under the job's memory limit until `undo`; True if that is an address space limit."""
    if base is not None:
        group = job_cgroup(base, frame.id, frame.attempt)
        try:
            group.mkdir(exist_ok=True)
            undo.callback(_leave, group, Path(base))
            _write(group / "memory.limit_in_bytes", str(limits.memory))
            if (group / "memory.memsw.limit_in_bytes").exists():  # with swap accounting: no swapping past it either
                _write(group / "memory.memsw.limit_in_bytes", str(limits.memory))
            _write(group / "cgroup.procs", str(os.getpid()))
            return False
        except OSError as exc:  # the group was removed under the node, or the kernel refused: not a job's failure
            _log.warning("job %s: cannot confine it in the memory cgroup %s (%s); RLIMIT_AS instead", frame.id,
                         group, exc)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    undo.callback(resource.setrlimit, resource.RLIMIT_AS, (soft, hard))
    mapped = int(Path("/proc/self/statm").read_bytes().split()[0]) * resource.getpagesize()
    wanted = mapped + limits.memory
    resource.setrlimit(resource.RLIMIT_AS, (wanted if hard == resource.RLIM_INFINITY else min(wanted, hard), hard))
    return True


def _leave(group: Path, base: Path) -> None:
    """Back to the node's group; the job's group goes unless something the job started is still in it."""
    _write(base / "cgroup.procs", str(os.getpid()))
    try:
        group.rmdir()
    except OSError:
        pass  # a child of the job lives on in it (until the worker ends); the supervisor removes it at its stop


def _write(path: Path, value: str) -> None:
    with open(path, "w") as file:
        file.write(value)


def out_of_memory(job_id: int, limit: int, how: str) -> JobOutOfMemory:
    """The error of an attempt that went over its memory limit (forge.Retry decides whether it is retried)."""
    return JobOutOfMemory(f"job {job_id} went over its memory limit of {limit} bytes ({limit / 2**20:g} MiB): {how}")
