"""Jobs of the lifecycle and retention tests: ones that fail for good at their first attempt, with and
without their own dead_letter_after, and a no-op that records that it ran (in test_events)."""

import forge

from .jobs import N, record


def _fails(ctx: forge.JobContext, input: N) -> None:
    raise RuntimeError(f"job {ctx.job_id} fails for good")


fails_for_good = forge.job(name="fails_for_good", retry=forge.Retry(max_attempts=1))(_fails)
dead_letters_at_once = forge.job(
    name="dead_letters_at_once", retry=forge.Retry(max_attempts=1), dead_letter_after=0
)(_fails)
dead_letters_late = forge.job(
    name="dead_letters_late", retry=forge.Retry(max_attempts=1), dead_letter_after="1h", dead_letter_retain="2d"
)(_fails)


@forge.job
def ran(ctx: forge.JobContext, input: N) -> None:
    record(ctx, "start")
