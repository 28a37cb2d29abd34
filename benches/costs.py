"""What Forge costs per job: supervisor CPU and memory, workers' memory, database work.

A supervisor with 2 workers is started on an empty queue and left to settle;
then N no-op jobs are dispatched and processed. CPU is the supervisor
process's own utime+stime (all its threads, /proc/<pid>/stat) from the moment
it is idle and ready to the last completion, so start-up (imports, migrations,
forking) is left out. RSS is the peak (VmHWM). Database work is read from
pg_stat_database (commits), pg_stat_user_tables (forge_jobs row writes) and
the WAL position.
"""

from __future__ import annotations

import time

import psycopg

from forge_adapter import Forge, ForgeMonitor, Producer
from harness import Bench, checkpoint
from workloads import DbCounters, alive, wait_until

SECTION = "costs"
WORKERS = 2
MB = 1024 * 1024

ROW_WRITES = "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'forge_jobs'"


def run(bench: Bench) -> None:
    jobs = bench.sizes.cost_jobs
    runs = bench.repeat_run(lambda _run: _measure(bench, jobs))
    rows = [
        (
            "forge.cost.cpu_ms_per_1k",
            "supervisor CPU per 1,000 jobs",
            "ms",
            "cpu_ms_per_1k",
        ),
        (
            "forge.cost.core_pct_at_10k",
            "supervisor share of a core at 10,000 jobs/s",
            "%",
            "core_pct_at_10k",
        ),
        ("forge.cost.supervisor_rss", "supervisor peak RSS", "MB", "supervisor_rss_mb"),
        (
            "forge.cost.worker_rss",
            "largest worker/zygote peak RSS",
            "MB",
            "worker_rss_mb",
        ),
        (
            "forge.cost.commits_per_job",
            "database commits per job",
            "commits",
            "commits_per_job",
        ),
        (
            "forge.cost.updates_per_job",
            "forge_jobs row updates per job",
            "rows",
            "updates_per_job",
        ),
        ("forge.cost.hot_share", "of which HOT updates", "%", "hot_pct"),
        ("forge.cost.wal_per_job", "WAL per job", "bytes", "wal_bytes_per_job"),
    ]
    for key, label, unit, field in rows:
        bench.record(
            key,
            label,
            unit,
            [r[field] for r in runs],
            section=SECTION,
            note=f"{WORKERS} workers, {jobs:,} jobs",
        )


def _measure(bench: Bench, jobs: int) -> dict:
    with (
        bench.database("forge_costs") as url,
        psycopg.connect(url, autocommit=True) as conn,
    ):
        supervisor = Forge(bench.scratch, WORKERS).start(url, {})
        try:
            wait_until(
                lambda: alive(supervisor) and _registered(conn),
                what="supervisor registration",
                timeout=60,
            )
            time.sleep(1.0)  # let start-up finish: workers forked, LISTEN up
            checkpoint(url)
            before = DbCounters.read(url)
            updates_before = conn.execute(ROW_WRITES).fetchone()
            cpu_before, wall_before = supervisor.cpu_seconds(), time.time()
            monitor = ForgeMonitor(url)
            producer = Producer(url)
            producer.dispatch_many("noop", jobs)
            producer.close()
            polls = wait_until(
                lambda: alive(supervisor) and monitor.completed() >= jobs,
                what=f"{jobs} jobs",
            )
            cpu = supervisor.cpu_seconds() - cpu_before
            wall = monitor.last_completion() - wall_before
            rss = supervisor.peak_rss()
            monitor.close()
        finally:
            supervisor.stop()
        # Own transactions: polls, last-completion read, the "before" reads, the dispatch.
        db = DbCounters.read(url, settle=True).per_job(
            before, jobs, own_transactions=polls + 4
        )
        conn.execute("SELECT pg_stat_clear_snapshot()")
        updates_after = conn.execute(ROW_WRITES).fetchone()
    updates = updates_after[0] - updates_before[0]
    return {
        "cpu_ms_per_1k": cpu / jobs * 1000 * 1000,
        # CPU seconds per job x 10,000 jobs/s = cores busy at that rate.
        "core_pct_at_10k": cpu / jobs * 10_000 * 100,
        "supervisor_rss_mb": rss["supervisor"] / MB,
        "worker_rss_mb": rss["worker"] / MB,
        "updates_per_job": updates / jobs,
        "hot_pct": 100 * (updates_after[1] - updates_before[1]) / max(updates, 1),
        "jobs_per_s": jobs / wall,
        **db,
    }


def _registered(conn: psycopg.Connection) -> bool:
    return (
        conn.execute(
            "SELECT count(*) FROM forge_nodes WHERE stopped_at IS NULL"
        ).fetchone()[0]
        > 0
    )
