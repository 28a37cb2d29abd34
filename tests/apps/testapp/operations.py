"""Jobs for the tests of operating jobs by hand (forge.Jobs: retry, cancel, pause): module testapp.operations."""

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
