"""Jobs that ask for resources (forge.Resources), for tests/acceptance/test_resources.py. Each records in
test_events what it was given: "start <CPUs>|<CUDA_VISIBLE_DEVICES>" and "end", with the database clock."""

import os
import time

import msgspec

import forge

from .jobs import record


class Hold(msgspec.Struct):
    seconds: float


def _started(ctx: forge.JobContext) -> None:
    cpus = ",".join(map(str, sorted(os.sched_getaffinity(0))))
    record(ctx, f"start {cpus}|{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}")


def _hold(ctx: forge.JobContext, input: Hold) -> None:
    _started(ctx)
    time.sleep(input.seconds)
    record(ctx, "end")


@forge.job(resources=forge.Resources(cpu=2), timeout="30s")
def two_cpus(ctx: forge.JobContext, input: Hold) -> None:
    _hold(ctx, input)


@forge.job(timeout="30s")
def no_request(ctx: forge.JobContext, input: Hold) -> None:
    _hold(ctx, input)


@forge.job(resources=forge.Resources(gpu=1), timeout="30s")
def one_gpu(ctx: forge.JobContext, input: Hold) -> None:
    _hold(ctx, input)


@forge.job(resources=forge.Resources(memory="256MiB"), timeout="30s", retry=forge.Retry(max_attempts=1))
def greedy(ctx: forge.JobContext, input: Hold) -> None:
    """Touches 1 GiB (every page written), four times what it asked for."""
    _started(ctx)
    hog = b"x" * (1 << 30)
    record(ctx, f"allocated {len(hog)}")


@forge.job(resources=forge.Resources(memory="256MiB"), timeout="30s")
def modest(ctx: forge.JobContext, input: Hold) -> None:
    """Touches 64 MiB, well within what it asked for."""
    _started(ctx)
    hog = b"x" * (64 << 20)
    record(ctx, f"allocated {len(hog)}")


@forge.job(resources=forge.Resources(cpu=64), timeout="30s")
def too_big(ctx: forge.JobContext, input: Hold) -> None:
    _hold(ctx, input)
