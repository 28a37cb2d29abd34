"""No-op throughput with a big table: 1M pending jobs, or 1M completed rows not yet pruned.

The filler rows are written by SQL (INSERT ... SELECT generate_series), which
is far faster than dispatching them; they look like what dispatch and
completion leave behind. Compare with forge.noop.w2 (same worker count, empty table).
"""

from __future__ import annotations

import time

import psycopg

from forge_adapter import Forge, ForgeMonitor, Producer
from harness import Bench, checkpoint
from workloads import alive, wait_until

SECTION = "backlog"
WORKERS = 2

FILL_PENDING = """
INSERT INTO forge_jobs (job_type, input, max_attempts)
SELECT 'noop', '{}'::jsonb, 1 FROM generate_series(1, %s)
"""

# Completed an hour ago by a node long gone: what a busy queue holds before
# pruning (within [retention] completed, 24 h by default, so the retention
# sweep leaves them be during the measurement). The benchmark's own
# completions are told apart by id (ForgeMonitor counts above the highest
# completed id).
FILL_COMPLETED = """
INSERT INTO forge_jobs (job_type, input, max_attempts, status, attempts, progress, claimed_by,
                        created_at, scheduled_at, claimed_at, started_at, completed_at, heartbeat_at)
SELECT 'noop', '{}'::jsonb, 1, 'completed', 1, 100, node,
       t, t, t, t, t, t
FROM generate_series(1, %s),
     LATERAL (SELECT now() - interval '1 hour' AS t, gen_random_uuid() AS node) AS past
"""


def run(bench: Bench) -> None:
    rows, jobs = bench.sizes.backlog_rows, bench.sizes.backlog_jobs
    pending = bench.repeat_run(
        lambda _run: _measure(bench, FILL_PENDING, rows, jobs, dispatch=False)
    )
    bench.record(
        "forge.backlog.pending",
        f"no-op, {WORKERS} workers, {rows:,} pending: first {jobs:,}",
        "jobs/s",
        pending,
        section=SECTION,
    )
    done = bench.repeat_run(
        lambda _run: _measure(bench, FILL_COMPLETED, rows, jobs, dispatch=True)
    )
    bench.record(
        "forge.backlog.completed",
        f"no-op, {WORKERS} workers, {rows:,} completed rows + {jobs:,} new",
        "jobs/s",
        done,
        section=SECTION,
    )


def _measure(bench: Bench, fill: str, rows: int, jobs: int, *, dispatch: bool) -> float:
    with bench.database("forge_backlog") as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(fill, (rows,))
        if dispatch:
            producer = Producer(url)
            producer.dispatch_many("noop", jobs)
            producer.close()
        checkpoint(url)
        monitor = ForgeMonitor(url, nth=jobs)
        started = time.time()
        supervisor = Forge(bench.scratch, WORKERS).start(url, {})
        try:
            wait_until(
                lambda: alive(supervisor) and monitor.completed() >= jobs,
                what=f"{jobs} backlog jobs",
            )
            last = monitor.last_completion()
        finally:
            supervisor.stop()
            monitor.close()
        return jobs / (last - started)
