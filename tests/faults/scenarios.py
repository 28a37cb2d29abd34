"""Helpers the scenarios share: enqueueing, waiting, diagnostics, the final check."""

from __future__ import annotations

import importlib
import json
import random
import sys
import threading
import time
from typing import Any

import psycopg

import forge

from . import ledger
from .harness import APP_DIR, Node

TERMINAL = ("completed", "failed", "dead_letter")


def enqueue(url: str, n: int, *, job_type: str = "fault_work", ms: int | tuple[int, int] = 0,
            max_attempts: int = 25, input: Any = None) -> list[int]:
    """Insert n jobs with SQL (as forge.dispatch_many would: one statement); their ids, recorded in the ledger as
    acknowledged, so a job that later vanishes is found lost."""
    if isinstance(ms, tuple):
        ms_sql = f"({ms[0]} + floor(random() * {ms[1] - ms[0] + 1}))::int"
    else:
        ms_sql = str(int(ms))
    with psycopg.connect(url, autocommit=True) as conn:
        if input is not None:
            rows = conn.execute(
                "INSERT INTO forge_jobs (job_type, input, max_attempts) SELECT %s, %s::jsonb, %s"
                " FROM generate_series(1, %s) RETURNING id",
                (job_type, json.dumps(input), max_attempts, n)).fetchall()
        else:
            rows = conn.execute(
                f"INSERT INTO forge_jobs (job_type, input, max_attempts)"
                f" SELECT %s, jsonb_build_object('ms', {ms_sql}), %s FROM generate_series(1, %s) RETURNING id",
                (job_type, max_attempts, n)).fetchall()
        ids = [r[0] for r in rows]
        ledger.record_acked(conn, ids)
    return ids


class Producer:
    """Dispatches fault_work jobs with forge.dispatch_many while faults happen, in a thread: a batch every
    `every` seconds, until stop(). Only what dispatch returned counts as acknowledged (recorded in the ledger);
    a batch whose dispatch raised (the database was restarting) is not, and is tried again with new jobs."""

    def __init__(self, url: str, *, batch: int = 10, every: float = 0.5, seed: int = 0) -> None:
        self.url = url
        self.batch = batch
        self.every = every
        self.acknowledged: list[int] = []
        self.refused = 0
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="producer", daemon=True)

    def start(self) -> Producer:
        self._thread.start()
        return self

    def stop(self) -> list[int]:
        """Stop dispatching; the acknowledged ids."""
        self._stop.set()
        self._thread.join(60)
        return self.acknowledged

    def _run(self) -> None:
        job = _fault_job("fault_work")
        while not self._stop.wait(self.every):
            inputs = [{"ms": self._rng.randint(0, 8)} for _ in range(self.batch)]
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=3) as conn:
                    ids = forge.dispatch_many(conn, job, inputs)
                    ledger.record_acked(conn, ids)
            except psycopg.Error:
                self.refused += 1
                continue
            self.acknowledged += ids


def _fault_job(name: str) -> forge.Job[Any]:
    """A job of app/faultjobs.py, imported into the test process to dispatch it."""
    if str(APP_DIR) not in sys.path:
        sys.path.insert(0, str(APP_DIR))
    job: forge.Job[Any] = getattr(importlib.import_module("faultjobs"), name)
    return job


def counts(url: str) -> dict[str, int]:
    with psycopg.connect(url, autocommit=True) as conn:
        return dict(conn.execute("SELECT status, count(*) FROM forge_jobs GROUP BY status").fetchall())


def unfinished(url: str, ids: list[int] | None = None) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        if ids is None:
            row = conn.execute("SELECT count(*) FROM forge_jobs WHERE status NOT IN %s" % (TERMINAL,)).fetchone()
        else:
            row = conn.execute("SELECT count(*) FROM forge_jobs WHERE id = ANY(%s) AND status NOT IN %s"
                               % ("%s", TERMINAL), (ids,)).fetchone()
    assert row is not None
    return int(row[0])


def diagnose(url: str, nodes: list[Node]) -> str:
    """What is stuck and why: status counts, leases held by which (live or dead) run, node log tails."""
    out = [f"status counts: {counts(url)}"]
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            """SELECT j.claimed_by, j.status, count(*), min(j.heartbeat_at), now(),
                      n.pid, n.stopped_at, n.heartbeat_at
               FROM forge_jobs j LEFT JOIN forge_nodes n ON n.id = j.claimed_by
               WHERE j.status IN ('claimed', 'running') GROUP BY 1, 2, 6, 7, 8""").fetchall()
        for r in rows:
            out.append(f"  held by {r[0]} ({r[1]}): {r[2]} jobs, oldest lease {r[3]} (db now {r[4]}); "
                       f"node pid {r[5]} stopped_at {r[6]} node heartbeat {r[7]}")
        sample = conn.execute(
            "SELECT id, status, attempts, crashes, claimed_by, heartbeat_at, scheduled_at, last_error->>'type'"
            " FROM forge_jobs WHERE status NOT IN ('completed') ORDER BY id LIMIT 8").fetchall()
        out.extend(f"  {tuple(r)}" for r in sample)
    for node in nodes:
        state = "running" if node.running() else f"exited {node.proc.returncode if node.proc else None}"
        out.append(f"--- {node.name} (pid {node.pid if node.proc else None}, {state}) log tail:")
        out.append(node.log_tail(15))
    return "\n".join(out)


def wait_finished(url: str, nodes: list[Node], timeout: float, ids: list[int] | None = None,
                  what: str = "every job to finish") -> float:
    """Wait until the jobs (all, or `ids`) are terminal; seconds waited. Fails with a diagnosis."""
    began = time.monotonic()
    while unfinished(url, ids):
        if time.monotonic() - began > timeout:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}\n{diagnose(url, nodes)}")
        time.sleep(0.1)
    return time.monotonic() - began


def stop_all(nodes: list[Node]) -> dict[str, Any]:
    """SIGTERM every node; their exit codes and summed core totals (fenced...)."""
    codes = {n.name: n.stop() for n in nodes}
    totals: dict[str, int] = {}
    for node in nodes:
        for run in node.core_totals():
            for key, value in run.items():
                totals[key] = totals.get(key, 0) + value
    return {"exit_codes": codes, "core_totals": totals}


def final_check(url: str, name: str, **kwargs: Any) -> ledger.Report:
    report = ledger.check(url, **kwargs)
    print(f"\n[{name}] invariants:\n{report.text}")
    return report


def db_now(url: str) -> Any:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
