"""Forge throughput: no-op jobs with 1, 2 and 4 workers; I/O-bound and CPU-bound jobs."""

from __future__ import annotations

from forge_adapter import Forge
from harness import Bench, checkpoint
from workloads import throughput

SECTION = "forge"


def run(bench: Bench) -> None:
    sizes = bench.sizes
    for workers in sizes.worker_counts:
        runs = _measure(bench, "noop", workers, sizes.noop_jobs)
        bench.record(
            f"forge.noop.w{workers}",
            f"no-op, {workers} worker(s), {sizes.noop_jobs:,} jobs",
            "jobs/s",
            [r["jobs_per_s"] for r in runs],
            section=SECTION,
        )
        if (
            workers == 2
        ):  # one worker per core: the configuration compared on database cost
            bench.record(
                "forge.noop.commits_per_job",
                "no-op, 2 workers: commits per job",
                "commits",
                [r["commits_per_job"] for r in runs],
                section=SECTION,
            )
            bench.record(
                "forge.noop.wal_per_job",
                "no-op, 2 workers: WAL per job",
                "bytes",
                [r["wal_bytes_per_job"] for r in runs],
                section=SECTION,
            )
    runs = _measure(bench, "sleep_10ms", sizes.io_workers, sizes.work_jobs)
    bench.record(
        "forge.sleep10ms",
        f"sleep 10 ms, {sizes.io_workers} workers, {sizes.work_jobs:,} jobs",
        "jobs/s",
        [r["jobs_per_s"] for r in runs],
        section=SECTION,
        note=f"ideal {sizes.io_workers / 0.010:,.0f} jobs/s",
    )
    runs = _measure(bench, "burn_1ms", sizes.cpu_workers, sizes.work_jobs)
    bench.record(
        "forge.cpu1ms",
        f"1 ms CPU, {sizes.cpu_workers} workers, {sizes.work_jobs:,} jobs",
        "jobs/s",
        [r["jobs_per_s"] for r in runs],
        section=SECTION,
        note=f"ideal {sizes.cpu_workers / 0.001:,.0f} jobs/s",
    )


def _measure(bench: Bench, task: str, workers: int, jobs: int) -> list[dict]:
    def once(_run: int) -> dict:
        with bench.database(f"forge_{task}_w{workers}") as url:
            return throughput(
                Forge(bench.scratch, workers),
                url,
                jobs,
                task=task,
                checkpoint=checkpoint,
            )

    return bench.repeat_run(once)
