"""A second fault app (module `faultjobs_other`): one job type that only the nodes importing this module run, for
scenarios where nodes run different job types (rolling restarts, unknown types)."""

from __future__ import annotations

from faultwork import Work, work

import forge


@forge.job(retry=forge.Retry(max_attempts=25, backoff="fixed", base="0.1s"), timeout="5m")
def fault_other_work(ctx: forge.JobContext, input: Work) -> None:
    """fault_work's workload, under a type of its own."""
    work(ctx, input)
