"""Jobs the benchmarks run on Forge (the peers define the same ones in benches/peers/)."""

import time

import msgspec

import forge
from stamps import write_stamp


class Empty(msgspec.Struct):
    pass


class Seq(msgspec.Struct):
    seq: int


# One attempt: a benchmark job that fails is a bug to see, not to retry.
ONCE = forge.Retry(max_attempts=1)


@forge.job(retry=ONCE)
def noop(ctx: forge.JobContext, input: Empty) -> None:
    return None


@forge.job(retry=ONCE)
def stamp(ctx: forge.JobContext, input: Seq) -> None:
    write_stamp(input.seq)


@forge.job(retry=ONCE)
def sleep_10ms(ctx: forge.JobContext, input: Empty) -> None:
    time.sleep(0.010)


@forge.job(retry=ONCE)
def burn_1ms(ctx: forge.JobContext, input: Empty) -> None:
    # CPU time of this thread, so the job burns 1 ms of CPU however busy the machine is.
    end = time.thread_time() + 0.001
    while time.thread_time() < end:
        pass
