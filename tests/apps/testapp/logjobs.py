"""Jobs of the job log tests (tests/acceptance/test_job_logs.py): ones that log lines through ctx.log, long, many,
unencodable or with NUL characters, then complete or fail; one that logs until its lease is taken."""

import time

import msgspec

import forge

from .jobs import record


class Lines(msgspec.Struct):
    n: int = 1
    size: int = 0  # the first line's message is this long (0: "line 0")
    fail: bool = False  # raise once the lines are logged
    query: bool = False  # use ctx.db first, logging the connection and a refused query's error
    seconds: float = 0.0  # a line every 50 ms for this long, after the n lines


class Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


@forge.job(retry=forge.Retry(max_attempts=1))
def log_lines(ctx: forge.JobContext, input: Lines) -> int:
    record(ctx, "start")
    if input.query:
        ctx.log.info("connected", db=ctx.db)
        try:
            ctx.db.execute("SELECT * FROM no_such_table")
        except Exception as exc:
            ctx.log.error("query refused", error=exc)
    for i in range(input.n):
        message = "x" * input.size if i == 0 and input.size else f"line {i}"
        ctx.log.warn(message, i=i)
    ticks = 0
    ends = time.monotonic() + input.seconds
    while time.monotonic() < ends:
        ctx.log.info(f"tick {ticks}")
        ticks += 1
        time.sleep(0.05)
    if input.fail:
        raise RuntimeError(f"job {ctx.job_id} fails after logging")
    return input.n


@forge.job(retry=forge.Retry(max_attempts=1))
def log_odd_values(ctx: forge.JobContext, input: Lines) -> None:
    """Lines no encoder takes as they are: objects, a repr() that raises, NUL characters, a lone surrogate."""
    ctx.log.info("objects", thing=object(), when=time.gmtime(0), bad=Unprintable())
    ctx.log.info("nul\x00inside", text="a\x00b")
    ctx.log.info("surrogate \ud800", text="\udfff")
    ctx.log.debug("below the log level")


@forge.job(timeout="1m", retry=forge.Retry(max_attempts=2, backoff="fixed", base="0.1s"))
def log_progress(ctx: forge.JobContext, input: Lines) -> None:
    """Reports progress 1..n, one step every input.seconds, recording each call's time in test_events."""
    for step in range(1, input.n + 1):
        ctx.progress(step, f"step {step}")
        record(ctx, f"progress {step}")
        time.sleep(input.seconds)
