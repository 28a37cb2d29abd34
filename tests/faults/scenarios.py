"""Helpers the scenarios share: enqueueing, waiting, diagnostics, the final check."""

from __future__ import annotations

import json
import time
from typing import Any

import psycopg

from . import ledger
from .harness import Node

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


def final_check(url: str, name: str, **kwargs: Any) -> ledger.Report:
    report = ledger.check(url, **kwargs)
    print(f"\n[{name}] invariants:\n{report.text}")
    return report


def db_now(url: str) -> Any:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
