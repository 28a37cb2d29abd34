"""Retention keeps the queue table flat: 1,000,000 no-op jobs through with [retention] completed = "10s".

The engine of one supervisor (a Rust core, without its workers: each job is
completed as soon as it is taken, as in the wakeups section) runs the jobs
while this process keeps a backlog of them dispatched (batches of 5,000 while
fewer than 20,000 wait). Its maintenance sweep deletes completed rows 10 s
after they completed (prune_finished in engine.sql: a walk of the primary
key in windows of 1,000 rows), so in a steady state the table holds about
10 s of completions plus what autovacuum has not yet made reusable.
pg_total_relation_size('forge_jobs') (heap, indexes, TOAST) is sampled after
every 10 % of the jobs. It grows until autovacuum (every autovacuum_naptime,
1 min by default) has made the pruned rows' space reusable, then stays flat:
the steady state holds about 10 s plus one naptime of jobs. Recorded: the
job rate, the size empty, after half of the jobs and at the end, and the
growth over the second half (0 % when flat); the note has every sample and
how many rows the sweep pruned.
"""

from __future__ import annotations

import selectors
import threading
import time
import uuid

import psycopg

import forge
from app import jobs
from forge._core import Core
from forge.config import NodeConfig, RetentionConfig
from forge.supervisor.main import core_settings
from harness import Bench

SECTION = "retention"
RETAIN = 10.0  # [retention] completed, seconds
BATCH = 5_000  # jobs a dispatch inserts
BACKLOG = 20_000  # most jobs waiting before the next dispatch
CREDITS = 2_000  # room the core holds
SAMPLES = 10
STALL = 30.0  # seconds without a completion: the run is stuck
SIZE = "SELECT pg_total_relation_size('forge_jobs')"


def run(bench: Bench) -> None:
    total = 1_000_000 if bench.sizes.backlog_rows >= 1_000_000 else 50_000  # --quick: a smoke run
    with bench.database("retention") as url:
        result = _measure(url, total)
    mib = 1 << 20
    bench.record("retention.jobs_per_second", f"{total:,} no-op jobs, completed kept {RETAIN:g} s: rate",
                 "jobs/s", [result["rate"]], section=SECTION)
    for key, label in (("empty", "empty"), ("half", f"after {total // 2:,} jobs"),
                       ("end", f"after {total:,} jobs")):
        bench.record(f"retention.size.{key}", f"pg_total_relation_size('forge_jobs'), {label}", "MiB",
                     [result[key] / mib], section=SECTION)
    bench.record("retention.size.second_half_growth", "forge_jobs growth over the second half of the jobs", "%",
                 [100 * (result["end"] / result["half"] - 1)], section=SECTION)
    bench.note(f"retention: {result['pruned']:,} completed rows pruned during the run, "
               f"{result['left']:,} rows left at the end; sizes (MiB) by tenth: "
               + ", ".join(f"{s / mib:.1f}" for s in result["samples"]))


def _measure(url: str, total: int) -> dict:
    core = Core(core_settings(NodeConfig(workers=1), url, uuid.uuid4(), {jobs.noop.name: jobs.noop},
                              RetentionConfig(completed=RETAIN)))
    core.request(CREDITS)
    stop = threading.Event()
    runner = threading.Thread(target=_complete_what_is_taken, args=(core, stop), daemon=True)
    runner.start()
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            empty = conn.execute(SIZE).fetchone()[0]
            began = time.monotonic()
            samples = _run_through(conn, total, core)
            rate = total / (time.monotonic() - began)
            left = conn.execute("SELECT count(*) FROM forge_jobs").fetchone()[0]
        pruned = core.stats()["pruned_completed"]
    finally:
        stop.set()
        runner.join()
        core.close()
    return {"rate": rate, "empty": empty, "half": samples[SAMPLES // 2 - 1], "end": samples[-1],
            "samples": samples, "pruned": pruned, "left": left}


def _run_through(conn: psycopg.Connection, total: int, core: Core) -> list[int]:
    """Dispatch `total` jobs, keeping at most BACKLOG waiting, until all completed; the table's size after
    every tenth of them completed. RuntimeError if no job completes for STALL seconds."""
    dispatched, samples, progress = 0, [], (0, time.monotonic())
    done = "SELECT count(*) FROM forge_jobs WHERE claimed_by IS NULL AND failed_at IS NULL"
    while len(samples) < SAMPLES:
        waiting = conn.execute(done).fetchone()[0]
        completed = dispatched - waiting  # claimed ones complete at once
        if completed > progress[0]:
            progress = (completed, time.monotonic())
        elif time.monotonic() - progress[1] > STALL:
            raise RuntimeError(f"retention: stalled at {completed:,} jobs completed; core stats {core.stats()}")
        if completed >= (len(samples) + 1) * total // SAMPLES:
            samples.append(conn.execute(SIZE).fetchone()[0])
            continue
        if waiting < BACKLOG and dispatched < total:
            n = min(BATCH, total - dispatched)
            forge.dispatch_many(conn, jobs.noop, [jobs.Empty()] * n)
            dispatched += n
        else:
            time.sleep(0.05)
    return samples


def _complete_what_is_taken(core: Core, stop: threading.Event) -> None:
    """The core's taken jobs are started and completed at once, and their credit given back."""
    selector = selectors.DefaultSelector()
    selector.register(core.fileno(), selectors.EVENT_READ)
    while not stop.is_set():
        selector.select(0.1)
        core.lease_age_ms()  # the loop's proof of life, as the supervisor's (else the core stops claiming)
        for level, message in core.logs():
            print(f"  core {level}: {message}", flush=True)
        taken = core.take()
        if taken:
            for job in taken:
                core.start(job.id, job.attempt)
                core.complete(job.id, job.attempt, None)
            core.request(len(taken))
    selector.close()
