"""No-op throughput: N pre-dispatched jobs processed by one supervisor with 1, 2 and 4 workers.

Runs on its own throwaway PostgreSQL cluster (durable settings: fsync and
synchronous_commit on). Jobs/s is measured from the supervisor's start to the
last completion (completed_at by the database clock). Prints a table and writes
benches/results/throughput-<time>.json.

    .venv/bin/python benches/throughput.py [--jobs 20000] [--workers 1,2,4] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import psycopg

import forge
from forge.db.embedded import EmbeddedPostgres, create_database, drop_database
from forge.db.migrate import migrate

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from app import jobs  # noqa: E402


def main() -> None:
    args = _arguments()
    with tempfile.TemporaryDirectory(prefix="forge-bench-", dir="/tmp") as scratch:
        cluster = EmbeddedPostgres(Path(scratch) / "pg", durable=True)
        admin = cluster.start()
        try:
            rows = [_measure(admin, Path(scratch), workers, args) for workers in args.workers]
        finally:
            cluster.stop()
    _report(rows, args)


def _measure(admin: str, scratch: Path, workers: int, args: argparse.Namespace) -> dict:
    rates = []
    for run in range(args.repeat):
        name = f"bench_{workers}_{run}"
        url = create_database(admin, name)
        try:
            migrate(url)
            with psycopg.connect(url) as conn:
                forge.dispatch_many(conn, jobs.noop, [jobs.Empty()] * args.jobs)
            rates.append(_run_supervisor(url, scratch, workers, args.jobs))
        finally:
            drop_database(admin, name)
    return {
        "workers": workers,
        "jobs": args.jobs,
        "jobs_per_s_median": statistics.median(rates),
        "jobs_per_s_min": min(rates),
        "jobs_per_s_max": max(rates),
        "runs": rates,
    }


def _run_supervisor(url: str, scratch: Path, workers: int, count: int) -> float:
    config = scratch / f"forge-{workers}.toml"
    config.write_text(
        f'[database]\nurl = "{url}"\n[app]\nmodules = ["app.jobs"]\n'
        f'[node]\nworkers = {workers}\n[log]\nlevel = "warning"\n'
    )
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    supervisor = Path(sys.executable).with_name("forge-supervisor")
    with psycopg.connect(url, autocommit=True) as conn:
        started = conn.execute("SELECT now()").fetchone()[0]
        proc = subprocess.Popen([str(supervisor), "-c", str(config)], env=env)
        try:
            while conn.execute("SELECT count(*) FROM forge_jobs WHERE status = 'completed'").fetchone()[0] < count:
                if proc.poll() is not None:
                    raise SystemExit(f"supervisor exited with {proc.returncode}")
                time.sleep(0.05)
            last = conn.execute("SELECT max(completed_at) FROM forge_jobs").fetchone()[0]
        finally:
            proc.terminate()
            proc.wait(60)
    return count / (last - started).total_seconds()


def _report(rows: list[dict], args: argparse.Namespace) -> None:
    print(f"\nno-op throughput, {args.jobs} jobs, median of {args.repeat} (min-max)")
    print(f"{'workers':>8} {'jobs/s':>10} {'range':>20}")
    for row in rows:
        spread = f"{row['jobs_per_s_min']:.0f}-{row['jobs_per_s_max']:.0f}"
        print(f"{row['workers']:>8} {row['jobs_per_s_median']:>10.0f} {spread:>20}")
    sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout.strip()
    result = {
        "benchmark": "noop_throughput",
        "when": datetime.now(timezone.utc).isoformat(),
        "git_sha": sha,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "rows": rows,
    }
    out = HERE / "results" / f"throughput-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out.relative_to(HERE.parent)}")


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--workers", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4])
    parser.add_argument("--repeat", type=int, default=3)
    return parser.parse_args()


if __name__ == "__main__":
    main()
