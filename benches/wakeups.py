"""Idle nodes woken by NOTIFY: what each dispatch costs the database as nodes are added.

Every dispatch sends one NOTIFY, which every listening node receives. It
announces the job (rust/src/announce.rs): about one of the idle nodes that
run it claims at once, and the others claim only if no cleared notice of a
peer's claim arrives within their share of a short wait. (Before, every node
claimed on every NOTIFY: with N idle nodes a job cost N claim statements,
N - 1 of them empty.) This section runs N Rust cores (Sizes.wakeup_nodes)
(the engine of N supervisors, without their workers: each job is completed
as soon as it is taken) in this process, dispatches single jobs at a steady
rate, and measures claims per job and the database's CPU per job (the bench
cluster's postmaster and the backends that live through the measurement: the
cores' connections, not the dispatcher's, so the figure is what waking the
nodes costs, not the inserts). It includes what the idle nodes cost anyway
(heartbeats, one poll a second each, maintenance), which at 10 dispatches a
second is most of it.
"""

from __future__ import annotations

import selectors
import threading
import time
import uuid

import psycopg

import forge
import procs
from app import jobs
from forge._core import Core
from forge.config import NodeConfig
from forge.supervisor.main import core_settings
from harness import Bench

SECTION = "wakeups"
RATES = (10, 100)  # single dispatches per second
CREDITS = 1_000  # room each node holds: idle nodes always claim when woken


def run(bench: Bench) -> None:
    postmaster = int((bench.scratch / "pg" / "postmaster.pid").read_text().split()[0])
    for nodes in bench.sizes.wakeup_nodes:
        runs = bench.repeat_run(lambda _run: _measure(bench, postmaster, nodes, 0))
        bench.record(f"wakeups.n{nodes}.idle.db_cpu_share", f"{nodes} idle node(s), no dispatches: database CPU",
                     "% of a core", [r["db_cpu_percent"] for r in runs], section=SECTION)
    for rate in RATES:
        for nodes in bench.sizes.wakeup_nodes:
            runs = bench.repeat_run(lambda _run: _measure(bench, postmaster, nodes, rate))
            label = f"{nodes} idle node(s), {rate} dispatches/s"
            bench.record(f"wakeups.n{nodes}.r{rate}.claims_per_job", f"{label}: claims per job", "claims",
                         [r["claims_per_job"] for r in runs], section=SECTION)
            bench.record(f"wakeups.n{nodes}.r{rate}.db_cpu_per_job", f"{label}: database CPU per job", "ms",
                         [r["db_cpu_ms_per_job"] for r in runs], section=SECTION)
            bench.record(f"wakeups.n{nodes}.r{rate}.db_cpu_share", f"{label}: database CPU", "% of a core",
                         [r["db_cpu_percent"] for r in runs], section=SECTION)


def _measure(bench: Bench, postmaster: int, nodes: int, rate: int) -> dict:
    """One run: `rate` dispatches a second (0: none, what the idle nodes cost on their own)."""
    with bench.database(f"wakeups_n{nodes}_r{rate}") as url:
        cores = [_idle_core(url) for _ in range(nodes)]
        stop = threading.Event()
        runner = threading.Thread(target=_complete_what_is_taken, args=(cores, stop), daemon=True)
        runner.start()
        try:
            time.sleep(3.0)  # registered, LISTENing, first empty claims made, peers read by a heartbeat (2 s)
            claims_before = _claims(cores)
            cpu_before = _database_cpu(postmaster)
            began = time.monotonic()
            if rate:
                count = _dispatch_steadily(url, rate, bench.sizes.wakeup_seconds)
                _wait_completed(url, count)
            else:
                count = 0
                time.sleep(bench.sizes.wakeup_seconds)
            wall = time.monotonic() - began
            claims = _claims(cores) - claims_before
            cpu = _database_cpu(postmaster) - cpu_before
        finally:
            stop.set()
            runner.join()
            for core in cores:
                core.close()
    return {
        "claims_per_job": claims / max(count, 1),
        "db_cpu_ms_per_job": 1000 * cpu / max(count, 1),
        "db_cpu_percent": 100 * cpu / wall,
    }


def _idle_core(url: str) -> Core:
    core = Core(core_settings(NodeConfig(workers=1), url, uuid.uuid4(), {jobs.noop.name: jobs.noop}))
    core.request(CREDITS)
    return core


def _complete_what_is_taken(cores: list[Core], stop: threading.Event) -> None:
    """Each core's taken jobs are started and completed at once, and their credit given back."""
    selector = selectors.DefaultSelector()
    for core in cores:
        selector.register(core.fileno(), selectors.EVENT_READ, core)
    while not stop.is_set():
        for key, _ in selector.select(0.1):
            core = key.data
            core.logs()
            taken = core.take()
            for job in taken:
                core.start(job.id, job.attempt)
                core.complete(job.id, job.attempt, None)
            if taken:
                core.request(len(taken))
    selector.close()


def _dispatch_steadily(url: str, rate: int, seconds: float) -> int:
    """One dispatch per transaction, `rate` a second; how many were dispatched."""
    count = int(rate * seconds)
    with psycopg.connect(url, autocommit=True) as conn:
        began = time.monotonic()
        for n in range(count):
            time.sleep(max(0.0, began + n / rate - time.monotonic()))
            forge.dispatch(conn, jobs.noop, jobs.Empty())
    return count


def _wait_completed(url: str, count: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        deadline = time.monotonic() + 60
        while conn.execute("SELECT count(*) FROM forge_jobs WHERE status = 'completed'").fetchone()[0] < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"wakeups: {count} jobs not completed within 60 s")
            time.sleep(0.05)


def _claims(cores: list[Core]) -> int:
    return sum(core.stats()["claims"] for core in cores)


def _database_cpu(postmaster: int) -> float:
    """CPU seconds of the bench cluster: its postmaster and every backend and helper under it."""
    total = 0.0
    for pid in [postmaster, *procs.descendants(postmaster)]:
        try:
            total += procs.cpu_seconds(pid)
        except OSError:
            pass  # a backend that ended meanwhile
    return total

