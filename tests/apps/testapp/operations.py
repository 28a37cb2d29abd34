"""Jobs for the tests of operating jobs by hand (forge.Jobs: retry, cancel, pause): module testapp.operations."""

import signal
import subprocess
import time

import msgspec

import forge

from .jobs import NetworkError, record


class Until(msgspec.Struct):
    attempt: int  # the first attempt that succeeds


@forge.job(retry=forge.Retry(max_attempts=2, backoff="fixed", base="0.1s"))
def fail_until(ctx: forge.JobContext, input: Until) -> int:
    """Fails every attempt before input.attempt: its retries run out first, then a retry by hand succeeds."""
    record(ctx, "start")
    if ctx.attempt < input.attempt:
        raise NetworkError(f"attempt {ctx.attempt} failed")
    return ctx.attempt


@forge.job
def parked(ctx: forge.JobContext, input: None) -> None:
    """A job of its own type, to pause."""
    record(ctx, "start")


class Stubborn(msgspec.Struct):
    ignore_sigterm: bool = False


@forge.job(retry=forge.Retry(max_attempts=3, backoff="fixed", base="0.1s"))
def runs_an_hour(ctx: forge.JobContext, input: Stubborn) -> None:
    """Starts a child in its worker's process group, records both pids, then sleeps an hour (ignoring SIGTERM if
    asked, so only the SIGKILL after kill_grace ends it). Retries are allowed: a cancel must not use them."""
    if input.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen(["sleep", "3600"])
    record(ctx, "start")
    record(ctx, "child", pid=child.pid)
    time.sleep(3600)


class Steps(msgspec.Struct):
    steps: int
    seconds: float  # before each step
    fail: bool = False


@forge.job(retry=forge.Retry(max_attempts=1))
def stepped(ctx: forge.JobContext, input: Steps) -> int:
    """Reports its progress a step at a time, slowly enough for `forge jobs watch` to see each step; then fails
    (not retried) if asked to."""
    for step in range(1, input.steps + 1):
        time.sleep(input.seconds)
        ctx.progress(step * 100 // input.steps, f"step {step} of {input.steps}")
    if input.fail:
        raise NetworkError(f"failed after {input.steps} steps")
    return input.steps


class Operate(msgspec.Struct):
    job_id: int  # another job, retried by this one
    job_type: str  # a type this one pauses, then resumes


@forge.job
def operate(ctx: forge.JobContext, input: Operate) -> dict:
    """Operates on another job and on a job type through ctx.jobs (forge.Jobs on the worker's connection)."""
    other = ctx.jobs.get(input.job_id)
    missing = ctx.jobs.get(input.job_id + 1_000_000)
    retried = ctx.jobs.retry(input.job_id)
    paused = ctx.jobs.pause(input.job_type)
    while_paused = ctx.jobs.paused()
    resumed = ctx.jobs.resume(input.job_type)
    return {"status": None if other is None else other.status, "missing": missing, "retried": retried,
            "paused": paused, "while_paused": while_paused, "resumed": resumed, "after": ctx.jobs.paused()}
