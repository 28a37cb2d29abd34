"""Jobs for tests/acceptance/test_operator_log.py: structured fields a JSON log must carry, and ones it cannot
encode as they are."""

from __future__ import annotations

import msgspec

import forge


class Odd(msgspec.Struct):
    pass


class Unrepresentable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


@forge.job(retry=forge.Retry(max_attempts=1))
def log_fields(ctx: forge.JobContext, input: Odd) -> int:
    ctx.log.info("charged", amount=12, currency="EUR", level="a field named like a key")
    cycle: list[object] = []
    cycle.append(cycle)
    ctx.log.warn("odd fields", thing=object(), huge=2**70, cycle=cycle, broken=Unrepresentable(), keys={1: 2})
    return 1
