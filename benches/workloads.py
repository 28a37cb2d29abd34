"""The workloads every system is put through, written once against a small adapter.

An adapter (forge_adapter.Forge, peers/*_peer.py) says how its system enqueues,
starts its workers and records completions; the functions here do the timing,
so Forge and each peer are measured the same way. This module needs only the
standard library and psycopg: it is imported from the Forge venv and from the
peers' venv alike.

Every time is wall-clock epoch seconds (time.time() here, clock_timestamp()
or now() as epoch in the database): one machine, one clock.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Protocol

import psycopg

# Seconds between "how many are done?" looks. Each look counts every completed
# row so far (for every system measured), so looking often takes CPU from the
# system under test (at 20 ms, 10 us per Forge no-op job, a sixth of a run's
# CPU); results never depend on it: the end of a run is the last completion's
# time as recorded in the database, not the look that noticed it.
POLL_INTERVAL = 0.2
LATENCY_SPACING = 0.020  # seconds between two latency dispatches
WARMUP_JOBS = 5


class Producer(Protocol):
    def dispatch(self, task: str, seq: int) -> float:
        """Enqueue one job in its own transaction; return time.time() just after the commit."""

    def dispatch_many(self, task: str, count: int) -> None:
        """Enqueue `count` jobs the system's bulk way, committed."""

    def close(self) -> None: ...


class Workers(Protocol):
    def check(self) -> None:
        """Raise if the workers died."""

    def stop(self) -> None: ...


class Monitor(Protocol):
    def completed(self) -> int:
        """How many jobs have completed."""

    def last_completion(self) -> float:
        """Epoch seconds of the latest completion."""

    def close(self) -> None: ...


class Adapter(Protocol):
    name: str
    on_postgres: bool  # whether its queue lives in the database (so commits/WAL per job mean something)

    def setup(self, url: str) -> None:
        """Install the system's schema in the fresh database `url`."""

    def teardown(self) -> None:
        """Remove what the run left outside its database (Celery's Redis keys)."""

    def producer(self, url: str) -> Producer: ...

    def start(self, url: str, env: dict[str, str]) -> Workers:
        """Start the system's workers (extra environment `env`) and return a handle."""

    def monitor(self, url: str) -> Monitor: ...


def throughput(
    adapter: Adapter, url: str, jobs: int, *, task: str = "noop", checkpoint: Any = None
) -> dict:
    """Pre-enqueue `jobs` jobs of `task`, start the workers, time their start -> last completion.

    Also returns database commits and WAL bytes per job (PostgreSQL systems).
    `checkpoint(url)`, if given, runs between the enqueue and the start.
    """
    producer = adapter.producer(url)
    try:
        producer.dispatch_many(task, jobs)
    finally:
        producer.close()
    if checkpoint is not None:
        checkpoint(url)
    before = DbCounters.read(url) if adapter.on_postgres else None
    monitor = adapter.monitor(url)
    started = time.time()
    workers = adapter.start(url, {})
    try:
        polls = wait_until(
            lambda: alive(workers) and monitor.completed() >= jobs,
            what=f"{adapter.name}: {jobs} jobs",
        )
        last = monitor.last_completion()
    finally:
        workers.stop()
        monitor.close()
    result = {"jobs_per_s": jobs / (last - started)}
    if before is not None:
        # The harness's own transactions: each poll, the last-completion read, the "before" read.
        result.update(
            DbCounters.read(url, settle=True).per_job(
                before, jobs, own_transactions=polls + 3
            )
        )
    return result


def latency(adapter: Adapter, url: str, jobs: int, stamps: Path) -> dict:
    """Idle workers; `jobs` single dispatches LATENCY_SPACING apart; commit -> job start, in ms.

    The job appends "<seq> <time.time()>" to `stamps` as its first act.
    """
    stamps.unlink(missing_ok=True)
    workers = adapter.start(url, {"BENCH_STAMPS": str(stamps)})
    producer = adapter.producer(url)
    try:
        # Warm-up jobs (negative seqs) prove the workers are up and take
        # first-call costs (imports, prepared statements) out of the samples.
        for seq in range(-WARMUP_JOBS, 0):
            producer.dispatch("stamp", seq)
            time.sleep(0.1)
        wait_until(
            lambda: alive(workers) and len(read_stamps(stamps)) >= WARMUP_JOBS,
            what=f"{adapter.name}: warm-up jobs",
            timeout=120,
        )
        committed = {}
        begin = time.time()
        for seq in range(jobs):
            pause = begin + seq * LATENCY_SPACING - time.time()
            if pause > 0:
                time.sleep(pause)
            committed[seq] = producer.dispatch("stamp", seq)
        wait_until(
            lambda: alive(workers) and len(read_stamps(stamps)) >= WARMUP_JOBS + jobs,
            what=f"{adapter.name}: latency jobs",
        )
    finally:
        producer.close()
        workers.stop()
    started = read_stamps(stamps)
    delays = sorted((started[seq] - committed[seq]) * 1000 for seq in committed)
    return {
        "p50_ms": percentile(delays, 50),
        "p99_ms": percentile(delays, 99),
        "max_ms": delays[-1],
    }


def enqueue_single(adapter: Adapter, url: str, jobs: int) -> float:
    """Jobs/s enqueued one per transaction."""
    producer = adapter.producer(url)
    try:
        producer.dispatch("noop", -1)  # connection and statement warm-up
        started = time.perf_counter()
        for seq in range(jobs):
            producer.dispatch("noop", seq)
        return jobs / (time.perf_counter() - started)
    finally:
        producer.close()


def enqueue_bulk(adapter: Adapter, url: str, jobs: int) -> float:
    """Jobs/s enqueued by the system's bulk call, `jobs` in one go."""
    producer = adapter.producer(url)
    try:
        producer.dispatch("noop", -1)
        started = time.perf_counter()
        producer.dispatch_many("noop", jobs)
        return jobs / (time.perf_counter() - started)
    finally:
        producer.close()


# --- helpers ---------------------------------------------------------------


def checkpoint(url: str) -> None:
    """Vacuum and flush dirty pages before a measurement, so neither lands inside it."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        conn.execute("CHECKPOINT")


def alive(workers: Workers) -> bool:
    workers.check()
    return True


def wait_until(done: Any, *, what: str, timeout: float = 900) -> int:
    """Poll `done()` every POLL_INTERVAL until true; return how many polls it took."""
    deadline = time.monotonic() + timeout
    polls = 1
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(POLL_INTERVAL)
        polls += 1
    return polls


def read_stamps(path: Path) -> dict[int, float]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return {}
    stamps = {}
    for line in lines:
        parts = line.split()
        if len(parts) == 2:  # a line being written has no second field yet
            stamps[int(parts[0])] = float(parts[1])
    return stamps


def percentile(sorted_values: list[float], pct: float) -> float:
    if len(sorted_values) == 1:
        return sorted_values[0]
    return statistics.quantiles(sorted_values, n=100, method="inclusive")[int(pct) - 1]


class SqlMonitor:
    """A Monitor answering from two SQL queries on one connection, kept open while polling."""

    def __init__(self, url: str, completed_sql: str, last_sql: str) -> None:
        self._conn = psycopg.connect(url, autocommit=True)
        self._completed_sql, self._last_sql = completed_sql, last_sql

    def completed(self) -> int:
        return int(self._conn.execute(self._completed_sql).fetchone()[0])

    def last_completion(self) -> float:
        return float(self._conn.execute(self._last_sql).fetchone()[0])

    def close(self) -> None:
        self._conn.close()


class DbCounters:
    """Database-wide counters (pg_stat_database, WAL position) to turn into per-job costs."""

    def __init__(self, commits: int, wal_lsn: str, url: str) -> None:
        self.commits, self.wal_lsn, self.url = commits, wal_lsn, url

    @classmethod
    def read(cls, url: str, *, settle: bool = False) -> DbCounters:
        # Backends flush their statistics when they exit; give the stopped
        # workers' backends a moment, then read a fresh snapshot.
        if settle:
            time.sleep(1.0)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT pg_stat_clear_snapshot()")
            commits, lsn = conn.execute(
                "SELECT xact_commit, pg_current_wal_lsn()::text FROM pg_stat_database"
                " WHERE datname = current_database()"
            ).fetchone()
        return cls(commits, lsn, url)

    def per_job(self, before: DbCounters, jobs: int, *, own_transactions: int) -> dict:
        """Commits and WAL bytes per job between `before` and now, less this harness's own reads."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            wal = conn.execute(
                "SELECT pg_wal_lsn_diff(%s, %s)", (self.wal_lsn, before.wal_lsn)
            ).fetchone()[0]
        commits = self.commits - before.commits - own_transactions
        return {
            "commits_per_job": max(commits, 0) / jobs,
            "wal_bytes_per_job": float(wal) / jobs,
        }
