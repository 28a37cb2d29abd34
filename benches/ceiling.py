"""The SQL ceiling: Forge's table and indexes driven by plain SQL, no job system at all.

Two processes (one per core, as many as Forge's supervisor uses database
connections for claiming and reporting) each loop: claim a batch of
CLAIM_BATCH rows with FOR UPDATE SKIP LOCKED, then mark them completed, then
close the batch's forge_claims row, each statement its own transaction, as
Forge's core does. The statements are the claim, complete and close_claims
blocks of python/forge/db/sql/engine.sql themselves (the join form: WITH due
AS (SELECT ... FOR UPDATE SKIP LOCKED LIMIT n) UPDATE ... FROM due); the
schema is Forge's own, applied by forge.db.migrate.
Rows per second from the moment both processes are connected to the moment
the table has none left to claim.
"""

from __future__ import annotations

import multiprocessing
import queue
import time
import uuid

import psycopg

from forge._core import planner_options
from forge.db.queries import load_queries
from forge_adapter import CLAIM_BATCH
from harness import Bench, checkpoint

SECTION = "ceiling"
CONNECTIONS = 2

FILL = (
    "INSERT INTO forge_jobs (job_type, input, max_attempts)"
    " SELECT 'noop', '{}'::jsonb, 1 FROM generate_series(1, %s)"
)

_SQL = load_queries("engine.sql")
# The same statements as Forge's core, run with the same planner settings as
# its main connection (rust/src/session.rs): one generic plan per statement,
# every join a nested loop over index lookups, so the ceiling is not lowered
# by plans Forge never uses.
SESSION_OPTIONS = planner_options("main")


def run(bench: Bench) -> None:
    rows = bench.sizes.ceiling_rows

    def once(_run: int) -> float:
        with bench.database("ceiling") as url:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(FILL, (rows,))
            checkpoint(url)
            return _drain(url, rows)

    bench.record(
        "ceiling.sql",
        f"plain SQL claim+complete, batch {CLAIM_BATCH}, {CONNECTIONS} connections",
        "jobs/s",
        bench.repeat_run(once),
        section=SECTION,
        note=f"{rows:,} rows",
    )


def _drain(url: str, rows: int) -> float:
    context = multiprocessing.get_context("fork")
    ready = context.Barrier(CONNECTIONS + 1)
    results = context.Queue()
    procs = [
        context.Process(target=_claimer, args=(url, ready, results))
        for _ in range(CONNECTIONS)
    ]
    for proc in procs:
        proc.start()
    ready.wait()
    started = time.time()
    finished = []
    while len(finished) < len(procs):
        try:
            finished.append(results.get(timeout=1))
        except queue.Empty:
            failed = [proc.exitcode for proc in procs if proc.exitcode not in (None, 0)]
            if failed:
                raise RuntimeError(f"a SQL ceiling claimer failed (exit status {failed[0]}); its error is above")
    for proc in procs:
        proc.join()
    done = sum(count for count, _ in finished)
    if done != rows:
        raise RuntimeError(f"SQL ceiling completed {done} of {rows} rows")
    return rows / (max(end for _, end in finished) - started)


def _claimer(url: str, ready, results) -> None:
    """One connection's loop: claim a batch, complete it, until nothing is left."""
    owner = uuid.uuid4()
    claim = (CLAIM_BATCH, ["general"], owner, ["noop"], False)  # False: no peers to tell (engine.sql claim)
    done = 0
    with psycopg.connect(url, autocommit=True, options=SESSION_OPTIONS) as conn, psycopg.RawCursor(conn) as cur:
        ready.wait()
        while True:
            # a claim that took nothing returns one row of nulls
            batch = [row for row in cur.execute(_SQL["claim"], claim, prepare=True).fetchall() if row[0] is not None]
            if not batch:
                break
            ids, attempts = [row[0] for row in batch], [row[2] for row in batch]
            # the core's completion: results, and when each job started and ended (ms ago)
            zeros = [0.0] * len(batch)
            cur.execute(_SQL["complete"], (ids, attempts, [None] * len(batch), owner, zeros, zeros), prepare=True)
            claim_id = batch[0][7]  # the claim statement's last column
            cur.execute(_SQL["close_claims"], ([claim_id], owner), prepare=True)
            done += len(batch)
    results.put((done, time.time()))
