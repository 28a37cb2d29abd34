"""The peers, side by side with Forge: the same no-op, latency and enqueue workloads.

Runs in Forge's venv: makes each repetition's database on the shared cluster,
then hands the workload to peers/driver.py in the peers' own venv.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

from harness import Bench
from latency import record_latency
from peers import bootstrap

SECTION = "peers"
HERE = Path(__file__).resolve().parent
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
# Celery publishes one message per task even in "bulk": past this it only costs time.
CELERY_BULK_MAX = 20_000

PEERS = {
    "pgqueuer": (
        "PgQueuer 1.6.0",
        "2 processes, batch_size 250; jobs run inside its own process (no isolation)",
    ),
    "procrastinate": (
        "Procrastinate 3.10.0",
        "2 processes, concurrency 10 (async); jobs run in its event loop",
    ),
    "celery": (
        "Celery 5.7.0 + Redis",
        "prefork, 2 children, prefetch x64, results ignored; Redis broker",
    ),
}


def run(bench: Bench) -> None:
    python = bootstrap.ensure()
    for peer, (label, how) in PEERS.items():
        if peer == "celery" and not redis_reachable(REDIS_URL):
            bench.note(f"Celery skipped: no Redis answering at {REDIS_URL}")
            continue
        print(f"  -- {label}: {how}", flush=True)
        _run_peer(bench, python, peer, label, how)


def _run_peer(bench: Bench, python: Path, peer: str, label: str, how: str) -> None:
    sizes = bench.sizes
    runs = _repeat(bench, python, peer, "throughput", sizes.noop_jobs)
    bench.record(
        f"{peer}.noop",
        f"{label} no-op, {sizes.noop_jobs:,} jobs",
        "jobs/s",
        [r["jobs_per_s"] for r in runs],
        section=SECTION,
        note=how,
    )
    if "commits_per_job" in runs[0]:
        bench.record(
            f"{peer}.commits_per_job",
            f"{label} no-op: commits per job",
            "commits",
            [r["commits_per_job"] for r in runs],
            section=SECTION,
        )
        bench.record(
            f"{peer}.wal_per_job",
            f"{label} no-op: WAL per job",
            "bytes",
            [r["wal_bytes_per_job"] for r in runs],
            section=SECTION,
        )
    runs = _repeat(bench, python, peer, "latency", sizes.latency_jobs)
    record_latency(bench, peer, label, runs, sizes.latency_jobs, section=SECTION)
    runs = _repeat(bench, python, peer, "single", sizes.single_dispatches)
    bench.record(
        f"{peer}.enqueue.single",
        f"{label} enqueue one per transaction ({sizes.single_dispatches:,})",
        "jobs/s",
        [r["jobs_per_s"] for r in runs],
        section=SECTION,
    )
    for size in sizes.many_sizes:
        if peer == "celery" and size > CELERY_BULK_MAX:
            bench.note(
                f"Celery bulk enqueue of {size:,} skipped (one publish per task; see {CELERY_BULK_MAX:,})"
            )
            continue
        runs = _repeat(bench, python, peer, "bulk", size)
        bench.record(
            f"{peer}.enqueue.many{size}",
            f"{label} bulk enqueue of {size:,}",
            "jobs/s",
            [r["jobs_per_s"] for r in runs],
            section=SECTION,
        )


def _repeat(
    bench: Bench, python: Path, peer: str, workload: str, jobs: int
) -> list[dict]:
    def once(run: int) -> dict:
        with bench.database(f"peer_{peer}", forge_schema=False) as url:
            out = bench.scratch / f"{peer}-{workload}-{run}.json"
            command = [
                str(python),
                str(HERE / "driver.py"),
                peer,
                workload,
                "--url",
                url,
                "--jobs",
                str(jobs),
                "--out",
                str(out),
                "--stamps",
                str(bench.scratch / f"stamps-{peer}"),
            ]
            subprocess.run(
                command, check=True, env={**os.environ, "BENCH_REDIS_URL": REDIS_URL}
            )
            return json.loads(out.read_text())

    return bench.repeat_run(once)


def redis_reachable(url: str) -> bool:
    """A raw PING (Forge's venv has no Redis client)."""
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or 6379), timeout=2
        ) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False
