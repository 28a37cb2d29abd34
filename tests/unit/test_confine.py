"""The worker's confinement of a job that asks for resources (supervisor/confine.py), in this process: CPU affinity
and CUDA_VISIBLE_DEVICES for the job and put back after, and the RLIMIT_AS fallback for memory."""

from __future__ import annotations

import os
import resource

import msgspec

from forge.supervisor.confine import GPU_VARIABLE, run_confined
from forge.supervisor.protocol import Completed, Failed, Limits, RunJob
from forge.supervisor.worker import _failure


def _frame(limits: Limits) -> RunJob:
    return RunJob(7, 1, "unit_confined", b"null", None, limits)


def test_the_job_runs_on_its_cpus_and_gpus_and_the_worker_gets_its_own_back(monkeypatch):
    monkeypatch.setenv(GPU_VARIABLE, "")
    before = os.sched_getaffinity(0)
    seen = {}

    def run(frame: RunJob) -> Completed:
        seen["cpus"], seen["gpus"] = os.sched_getaffinity(0), os.environ[GPU_VARIABLE]
        return Completed(frame.id, frame.attempt, None)

    outcome = run_confined(run, _frame(Limits([min(before)], 0, ["1", "3"])), None)
    assert seen == {"cpus": {min(before)}, "gpus": "1,3"}
    assert (os.sched_getaffinity(0), os.environ[GPU_VARIABLE]) == (before, "")
    assert outcome.retiring  # a CUDA runtime reads CUDA_VISIBLE_DEVICES once: the next job gets a fresh worker
    assert not run_confined(run, _frame(Limits([min(before)], 0, [])), None).retiring


def test_without_a_memory_cgroup_an_allocation_past_the_limit_fails_the_job_out_of_memory():
    before = resource.getrlimit(resource.RLIMIT_AS)

    def run(frame: RunJob) -> Failed:
        try:
            hog = b"x" * (1 << 30)
        except MemoryError as exc:
            return _failure(frame, exc, False)
        raise AssertionError(f"allocated {len(hog)} bytes past the limit")

    outcome = run_confined(run, _frame(Limits([], 256 << 20, [])), None)
    assert isinstance(outcome, Failed)
    error = msgspec.json.decode(outcome.error)
    assert error["type"] == "forge.errors.JobOutOfMemory"
    assert "memory limit of 268435456 bytes (256 MiB)" in error["message"]
    assert "RLIMIT_AS" in error["message"]
    assert resource.getrlimit(resource.RLIMIT_AS) == before  # put back after the job
    assert len(b"x" * (300 << 20)) == 300 << 20  # the worker may allocate again
