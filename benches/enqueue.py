"""Enqueue speed: forge.dispatch one per transaction, forge.dispatch_many in one call."""

from __future__ import annotations

from forge_adapter import Forge
from harness import Bench
from workloads import enqueue_bulk, enqueue_single

SECTION = "enqueue"


def run(bench: Bench) -> None:
    forge = Forge(
        bench.scratch, workers=1
    )  # no supervisor runs: only the producer is used
    single = bench.sizes.single_dispatches

    def one_by_one(_run: int) -> float:
        with bench.database("forge_dispatch") as url:
            return enqueue_single(forge, url, single)

    bench.record(
        "forge.enqueue.single",
        f"dispatch, one per transaction ({single:,})",
        "jobs/s",
        bench.repeat_run(one_by_one),
        section=SECTION,
    )
    for size in bench.sizes.many_sizes:

        def bulk(_run: int, size: int = size) -> float:
            with bench.database("forge_dispatch_many") as url:
                return enqueue_bulk(forge, url, size)

        bench.record(
            f"forge.enqueue.many{size}",
            f"dispatch_many of {size:,}",
            "jobs/s",
            bench.repeat_run(bulk),
            section=SECTION,
        )
