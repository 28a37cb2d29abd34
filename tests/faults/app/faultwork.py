"""The evidence every fault job writes (module `faultwork`, no jobs of its own, so an app module can import it
without registering another's job types).

Each execution records itself in `ledger_executions` through its own
autocommit connection to $FORGE_FAULT_LEDGER_URL: a direct connection to
PostgreSQL, never through the node's proxy, so a partitioned node's workers
still leave evidence of what they ran and when. Rows:

    exec_id   a uuid per execution (one call of the job function)
    event     'start' before the work, 'end' after it (a killed execution has no 'end'); 'child' once the job
              started a process, 'child_end' once it reaped it (the execution lasts as long as its children)
    pid       the worker (the child, in 'child' and 'child_end' rows); sup_pid its supervisor (the zygote's parent)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
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


def record(ctx: forge.JobContext, exec_id: str, event: str, pid: int | None = None) -> None:
    """One row of the execution `exec_id`; pid: the child's, for 'child' and 'child_end' (the worker's if None)."""
    for attempt in range(50):  # survive a PostgreSQL restart: the evidence matters
        try:
            _ledger().execute(
                "INSERT INTO ledger_executions (exec_id, job_id, attempt, event, pid, sup_pid)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                (exec_id, ctx.job_id, ctx.attempt, event, pid or os.getpid(), _supervisor_pid()),
            )
            return
        except psycopg.OperationalError:
            if attempt == 49:
                raise
            time.sleep(0.2)


def work(ctx: forge.JobContext, input: Work) -> None:
    exec_id = str(uuid.uuid4())
    record(ctx, exec_id, "start")
    if input.ms:
        time.sleep(input.ms / 1000)
    record(ctx, exec_id, "end")


Spawn = Callable[[str], list[subprocess.Popen[bytes]]]  # the children of a job working `seconds`, started


def work_with_children(ctx: forge.JobContext, input: Work, spawn: Spawn) -> None:
    """work(), with the children spawn(seconds) starts working as long beside the worker, each recorded ('child'
    once started, 'child_end' once reaped): the execution is the whole tree."""
    exec_id = str(uuid.uuid4())
    record(ctx, exec_id, "start")
    children = spawn(str(input.ms / 1000))
    for child in children:
        record(ctx, exec_id, "child", child.pid)
    time.sleep(input.ms / 1000)
    for child in children:
        child.wait()
        record(ctx, exec_id, "child_end", child.pid)
    record(ctx, exec_id, "end")


def chatty_work(ctx: forge.JobContext, input: Work, line: bytes = b"x" * 4095 + b"\n") -> None:
    """work(), printing 4 KB to stdout (the supervisor's, inherited) every 50 ms meanwhile: on a pipe nobody reads,
    the worker soon blocks in the write, alive."""
    exec_id = str(uuid.uuid4())
    record(ctx, exec_id, "start")
    until = time.monotonic() + input.ms / 1000
    while time.monotonic() < until:
        sys.stdout.buffer.write(line)
        sys.stdout.buffer.flush()
        time.sleep(0.05)
    record(ctx, exec_id, "end")
