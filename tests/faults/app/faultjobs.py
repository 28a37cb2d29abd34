"""Jobs the fault-injection tests run under real supervisors (module `faultjobs`).

Every job records its execution in `ledger_executions` through its own
autocommit connection to $FORGE_FAULT_LEDGER_URL: a direct connection to
PostgreSQL, never through the node's proxy, so a partitioned node's workers
still leave evidence of what they ran and when. Rows:

    exec_id   a uuid per execution (one call of the job function)
    event     'start' before the work, 'end' after it (a killed execution has no 'end')
    pid       the worker; sup_pid its supervisor (the zygote's parent)

All names start with `fault_`, so this module never collides with tests/apps/testapp.
"""

from __future__ import annotations

import ctypes
import os
import time
import uuid
from typing import Any

import msgspec
import psycopg

import forge

LEDGER_URL_ENV = "FORGE_FAULT_LEDGER_URL"

_conn: psycopg.Connection[Any] | None = None
_sup_pid: int | None = None


class Work(msgspec.Struct):
    ms: int = 0  # how long the job works, in milliseconds


def _ledger() -> psycopg.Connection[Any]:
    global _conn
    if _conn is None or _conn.closed or _conn.broken:
        _conn = psycopg.connect(os.environ[LEDGER_URL_ENV], autocommit=True, connect_timeout=5)
    return _conn


def _supervisor_pid() -> int:
    """The zygote's parent: the supervisor this worker belongs to."""
    global _sup_pid
    if _sup_pid is None:
        zygote = os.getppid()
        with open(f"/proc/{zygote}/stat") as stat:
            _sup_pid = int(stat.read().rsplit(")", 1)[1].split()[1])
    return _sup_pid


def record(ctx: forge.JobContext, exec_id: str, event: str) -> None:
    for attempt in range(50):  # survive a PostgreSQL restart: the evidence matters
        try:
            _ledger().execute(
                "INSERT INTO ledger_executions (exec_id, job_id, attempt, event, pid, sup_pid)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                (exec_id, ctx.job_id, ctx.attempt, event, os.getpid(), _supervisor_pid()),
            )
            return
        except psycopg.OperationalError:
            if attempt == 49:
                raise
            time.sleep(0.2)


def _work(ctx: forge.JobContext, input: Work) -> None:
    exec_id = str(uuid.uuid4())
    record(ctx, exec_id, "start")
    if input.ms:
        time.sleep(input.ms / 1000)
    record(ctx, exec_id, "end")


@forge.job(retry=forge.Retry(max_attempts=25, backoff="fixed", base="0.1s"), timeout="5m")
def fault_work(ctx: forge.JobContext, input: Work) -> None:
    """The plain workload: sleeps input.ms. Many attempts, so only the crash cap can fail it."""
    _work(ctx, input)


@forge.job(retry=forge.Retry(max_attempts=10, backoff="fixed", base="0.1s"))
def fault_segfault(ctx: forge.JobContext, input: Work) -> None:
    """A poison pill: dereferences NULL on every attempt. max_attempts 10 > max_crashes 3."""
    record(ctx, str(uuid.uuid4()), "start")
    ctypes.string_at(0)


@forge.job(heartbeat_timeout="2s", timeout="5m", retry=forge.Retry(max_attempts=3, backoff="fixed", base="0.1s"))
def fault_hang(ctx: forge.JobContext, input: Work) -> str:
    """Hangs without heartbeats on its first attempt; later attempts heartbeat and finish."""
    exec_id = str(uuid.uuid4())
    record(ctx, exec_id, "start")
    if ctx.attempt == 1:
        time.sleep(3600)
    for _ in range(3):
        ctx.heartbeat()
        time.sleep(0.1)
    record(ctx, exec_id, "end")
    return "finished"
