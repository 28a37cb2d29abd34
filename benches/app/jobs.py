"""Jobs the benchmarks run."""

import msgspec

import forge


class Empty(msgspec.Struct):
    pass


@forge.job(retry=forge.Retry(max_attempts=1))
def noop(ctx: forge.JobContext, input: Empty) -> None:
    return None
