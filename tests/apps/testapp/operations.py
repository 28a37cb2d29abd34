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
