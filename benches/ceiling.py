"""The SQL ceiling: Forge's table and indexes driven by plain SQL, no job system at all.

Two processes (one per core, as many as Forge's supervisor uses database
connections for claiming and reporting) each loop: claim a batch of
CLAIM_BATCH rows with FOR UPDATE SKIP LOCKED, then mark them completed, each
statement its own transaction, as Forge's core does. The statements are
copies of the claim and complete blocks of python/forge/db/sql/engine.sql
(the join form: WITH due AS (SELECT ... FOR UPDATE SKIP LOCKED LIMIT n)
UPDATE ... FROM due); the schema is Forge's own, applied by forge.db.migrate.
Rows per second from the moment both processes are connected to the moment
the table has none left to claim.
"""

from __future__ import annotations

import multiprocessing
import time
import uuid

import psycopg

from forge_adapter import CLAIM_BATCH
from harness import Bench, checkpoint

SECTION = "ceiling"
CONNECTIONS = 2

FILL = "INSERT INTO forge_jobs (job_type, input, max_attempts) SELECT 'noop', '{}'::jsonb, 1 FROM generate_series(1, %s)"

CLAIM = """
WITH due AS (
    SELECT id FROM forge_jobs
    WHERE status IN ('pending', 'retry')
      AND scheduled_at <= now()
      AND capability = ANY(%(capabilities)s::text[])
      AND job_type = ANY(%(types)s::text[])
    ORDER BY priority, scheduled_at, id
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE forge_jobs AS j
    SET status = 'claimed', attempts = j.attempts + 1, claimed_by = %(owner)s,
        claimed_at = now(), heartbeat_at = now(), started_at = NULL
    FROM due
    WHERE j.id = due.id
    RETURNING j.id, j.job_type, j.attempts, j.max_attempts, j.priority,
              j.scheduled_at, j.input::text AS input, j.parent_id
)
SELECT id, job_type, attempts, max_attempts, priority, input, parent_id
FROM claimed
ORDER BY priority, scheduled_at, id
"""

COMPLETE = """
UPDATE forge_jobs AS j
SET status = 'completed', completed_at = now(),
    started_at = coalesce(j.started_at, now()), heartbeat_at = now(),
    result = c.result::jsonb, progress = 100
FROM unnest(%(ids)s::bigint[], %(attempts)s::integer[], %(results)s::text[]) AS c(id, attempt, result)
WHERE j.id = c.id AND j.attempts = c.attempt AND j.claimed_by = %(owner)s
  AND j.status IN ('claimed', 'running')
RETURNING j.id
"""


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
    finished = [results.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join()
    done = sum(count for count, _ in finished)
    if done != rows:
        raise RuntimeError(f"SQL ceiling completed {done} of {rows} rows")
    return rows / (max(end for _, end in finished) - started)


def _claimer(url: str, ready, results) -> None:
    """One connection's loop: claim a batch, complete it, until nothing is left."""
    owner = uuid.uuid4()
    claim = {
        "capabilities": ["general"],
        "types": ["noop"],
        "batch": CLAIM_BATCH,
        "owner": owner,
    }
    done = 0
    with psycopg.connect(url, autocommit=True) as conn:
        ready.wait()
        while True:
            batch = conn.execute(CLAIM, claim, prepare=True).fetchall()
            if not batch:
                break
            conn.execute(
                COMPLETE,
                {
                    "ids": [row[0] for row in batch],
                    "attempts": [row[2] for row in batch],
                    "results": [None] * len(batch),
                    "owner": owner,
                },
                prepare=True,
            )
            done += len(batch)
    results.put((done, time.time()))
