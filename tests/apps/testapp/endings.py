"""Jobs whose attempts end the hard ways (module testapp.endings), for the rescue, crash-cap and stop tests.

Unlike testapp.jobs, none of them touches the database while it runs, so a database outage cannot change
how they end. Each records its start in test_events first (like testapp.jobs' record()).
"""

import os
import time

import msgspec

import forge

from .jobs import record


class Seconds(msgspec.Struct):
    seconds: float


@forge.job(retry=forge.Retry(max_attempts=1), timeout="2m")
def run_once(ctx: forge.JobContext, input: Seconds) -> float:
    """One attempt only: a rescue of it has no attempt left to retry."""
    record(ctx, "start")
    time.sleep(input.seconds)
    return input.seconds


@forge.job(retry=forge.Retry(max_attempts=10, backoff="fixed", base="0.05s"))
def crash_always(ctx: forge.JobContext, input: Seconds) -> None:
    """Kills its worker every time: only the crash cap ([node] max_crashes) stops it."""
    record(ctx, "start")
    os._exit(3)


@forge.job(timeout="2m")
def sleep_quietly(ctx: forge.JobContext, input: Seconds) -> float:
    """Sleeps after recording its start: its end needs nothing but the supervisor."""
    record(ctx, "start")
    time.sleep(input.seconds)
    return input.seconds
