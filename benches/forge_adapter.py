"""Forge behind the workloads.Adapter interface: its public API and a real forge-supervisor."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg

import forge
import procs
from app import jobs
from workloads import SqlMonitor

HERE = Path(__file__).resolve().parent
SUPERVISOR = Path(sys.executable).with_name("forge-supervisor")

# Forge's default batch; the SQL ceiling claims the same number (ceiling.py).
CLAIM_BATCH = 250


def _input(task: str, seq: int) -> jobs.Empty | jobs.Seq:
    return jobs.Seq(seq=seq) if task == "stamp" else jobs.Empty()


class Supervisor:
    """A forge-supervisor subprocess on `url` with `workers` worker processes."""

    def __init__(
        self, url: str, scratch: Path, workers: int, env: dict[str, str]
    ) -> None:
        config = scratch / f"forge-{os.getpid()}-{time.monotonic_ns()}.toml"
        config.write_text(
            f'[database]\nurl = "{url}"\n'
            '[app]\nmodules = ["app.jobs"]\n'
            f"[node]\nworkers = {workers}\nclaim_batch = {CLAIM_BATCH}\n"
            '[log]\nlevel = "warning"\n'
        )
        self.config = config
        self.proc = subprocess.Popen(
            [str(SUPERVISOR), "-c", str(config)],
            env={**os.environ, "PYTHONPATH": str(HERE), **env},
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"forge-supervisor exited with {self.proc.returncode}")

    def cpu_seconds(self) -> float:
        return procs.cpu_seconds(self.pid)

    def peak_rss(self) -> dict[str, int]:
        """Peak RSS of the supervisor and of its largest child (zygote or worker), bytes."""
        children = [procs.peak_rss(pid) for pid in procs.descendants(self.pid)]
        return {
            "supervisor": procs.peak_rss(self.pid),
            "worker": max(children, default=0),
        }

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.config.unlink(missing_ok=True)


class Producer:
    """Dispatches through one autocommit psycopg connection: each dispatch is one
    statement that commits on its own, as the PgQueuer adapter's asyncpg INSERT
    is (inside an explicit transaction, BEGIN and COMMIT would be two more round
    trips, a workload of its own)."""

    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(url, autocommit=True)

    def dispatch(self, task: str, seq: int) -> float:
        forge.dispatch(self.conn, getattr(jobs, task), _input(task, seq))
        return time.time()

    def dispatch_many(self, task: str, count: int) -> None:
        forge.dispatch_many(self.conn, getattr(jobs, task), [_input(task, 0)] * count)

    def close(self) -> None:
        self.conn.close()


class ForgeMonitor(SqlMonitor):
    """Completions of the jobs above the highest id already completed when the
    monitor was made (older completed rows, e.g. a backlog, are not counted).

    With `nth`, only the `nth` lowest of those ids are watched: the first jobs
    in claim order of a run that goes on past them (a backlog). Both queries
    are primary-key range scans over the run's own rows, whatever the table holds.
    """

    def __init__(self, url: str, nth: int | None = None) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            floor = conn.execute(
                "SELECT coalesce(max(id), 0) FROM forge_jobs WHERE status = 'completed'"
            ).fetchone()[0]
        window = f"id > {floor}" + (f" AND id <= {floor + nth}" if nth else "")
        done = f"FROM forge_jobs WHERE {window} AND status = 'completed'"
        super().__init__(
            url,
            f"SELECT count(*) {done}",
            f"SELECT extract(epoch FROM max(completed_at)) {done}",
        )


class Forge:
    """The adapter; `workers` per supervisor."""

    name = "Forge"
    on_postgres = True

    def __init__(self, scratch: Path, workers: int) -> None:
        self.scratch, self.workers = scratch, workers
        self.last_supervisor: Supervisor | None = None

    def setup(self, url: str) -> None:
        """Nothing to do: Bench.database() has applied forge.db.migrate."""

    def producer(self, url: str) -> Producer:
        return Producer(url)

    def start(self, url: str, env: dict[str, str]) -> Supervisor:
        self.last_supervisor = Supervisor(url, self.scratch, self.workers, env)
        return self.last_supervisor

    def monitor(self, url: str) -> ForgeMonitor:
        return ForgeMonitor(url)
