"""Pickup latency: an idle supervisor, jobs dispatched one by one; dispatch commit -> job start."""

from __future__ import annotations

from forge_adapter import Forge
from harness import Bench
from workloads import latency

SECTION = "latency"
WORKERS = 4  # Forge's default


def run(bench: Bench) -> None:
    jobs = bench.sizes.latency_jobs

    def once(run: int) -> dict:
        with bench.database("forge_latency") as url:
            return latency(
                Forge(bench.scratch, WORKERS),
                url,
                jobs,
                bench.scratch / f"stamps-forge-{run}",
            )

    record_latency(
        bench, "forge", "Forge", bench.repeat_run(once), jobs, section=SECTION
    )


def record_latency(
    bench: Bench, key: str, name: str, runs: list[dict], jobs: int, *, section: str
) -> None:
    """p50, p99 and max rows, each the median (range) of the per-run values."""
    for stat in ("p50", "p99", "max"):
        bench.record(
            f"{key}.latency.{stat}",
            f"{name} pickup {stat}, {jobs} jobs 20 ms apart",
            "ms",
            [r[f"{stat}_ms"] for r in runs],
            section=section,
        )
