"""The ledger (what happened, recorded by PostgreSQL itself) and the invariant checker.

Tables, created in each scenario's database after the migrations:

ledger_transitions   one row per status change of forge_jobs, written by an
                     AFTER INSERT OR UPDATE OF status trigger in the same
                     transaction as the change: old/new status, attempts,
                     max_attempts, claimed_by and crashes, the new last_error
                     type, the database clock (clock_timestamp()), the txid
                     and the writer: the session's application_name, which
                     for the core's connections is "forge <owner> <role>"
                     (role: claim, main, heartbeat, maintenance).
ledger_executions    'start'/'end' rows the fault jobs write in their own
                     autocommit statements (tests/faults/app/faultwork.py),
                     and for each process a job starts, a 'child' row
                     (pid: the child's) once it is started and a 'child_end'
                     row once the job has reaped it.
ledger_acked         the ids dispatch acknowledged to the test's producer
                     (scenarios.enqueue): "no job lost" is checked against
                     them, so a row that vanished is a lost job.
ledger_writes        every update of a job row that changes its status,
                     lease, heartbeat, progress or result, with the writer's
                     application_name ("forge <node id> <connection>", set by
                     the core) and the lease (attempts, claimed_by) the row
                     had before: "no stale write" checks that a node wrote
                     only rows it held the lease of.
ledger_faults        what the test did and saw: kills (with the pid and the
                     supervisor it belonged to), observed process deaths,
                     pauses, partitions, PostgreSQL restarts; `at` is the
                     database clock, taken just after the action.

Every timestamp is the one database clock, so they compare across processes.

How an execution's interval is defined (for "no two overlapping executions"):
  start = its 'start' row. end = its 'end' row if it has one. A killed
  execution has no 'end'; its end is bounded from above by, in this order:
    1. the earliest observed death of its pid (ledger_faults kind 'died',
       written by the nemesis or a watcher that saw /proc/<pid> vanish, or
       'kill_worker' for a SIGKILL sent to that pid: a SIGKILL is immediate),
       also one recorded up to 2 s (START_ROW_LAG) before the 'start' row: the job
       writes that row after it has begun, and a row already sent when the
       process is killed still commits, after the kill's record; a pid dies
       once, and is not reused within seconds;
    2. the transition that closed its attempt (old attempts = its attempt,
       leaving claimed/running), *if* that transition is its own supervisor's
       report after reaping the worker, i.e. its error type is not NodeLost
       (a rescue by another node proves nothing about the worker's death:
       that is exactly the case the check is for);
    3. otherwise unknown: +infinity, and the execution is reported as
       unbounded (a violation if another execution of the job started later).
  An execution is its process tree: a job's children do its work too, and
  may outlive its worker. So its end is the latest of the worker's end (above)
  and each of its children's: the child's 'child_end' row or the earliest
  observed death of its pid (ledger_faults 'died' or 'kill_worker', written by
  a watcher of the pids in 'child' rows: harness.DeathWatcher, watch_deaths),
  whichever comes first, also one recorded up to START_ROW_LAG before its
  'child' row; a child with neither is unbounded (+infinity), whatever became
  of its worker: the worker's end proves nothing about its children's.
  Two executions of one job overlap when one starts before the other's
  (bounded) end. Bounds are upper bounds, so the check errs towards
  reporting an overlap, never towards hiding one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg

LEDGER_SQL = """
CREATE TABLE ledger_transitions (
    seq            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id         bigint NOT NULL,
    job_type       text NOT NULL,
    old_status     text,
    new_status     text NOT NULL,
    old_attempts   int,
    new_attempts   int NOT NULL,
    old_max_attempts int,
    max_attempts   int NOT NULL,
    old_claimed_by uuid,
    new_claimed_by uuid,
    old_crashes    int,
    new_crashes    int NOT NULL,
    error_type     text,
    at             timestamptz NOT NULL DEFAULT clock_timestamp(),
    txid           bigint NOT NULL DEFAULT txid_current(),
    backend_pid    int NOT NULL DEFAULT pg_backend_pid(),
    writer         text NOT NULL DEFAULT current_setting('application_name')
);
CREATE INDEX ledger_transitions_job ON ledger_transitions (job_id, seq);

CREATE FUNCTION ledger_record() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO ledger_transitions (job_id, job_type, old_status, new_status, old_attempts, new_attempts,
            max_attempts, old_claimed_by, new_claimed_by, old_crashes, new_crashes, error_type)
        VALUES (NEW.id, NEW.job_type, NULL, NEW.status, NULL, NEW.attempts, NEW.max_attempts, NULL,
            NEW.claimed_by, NULL, NEW.crashes, NEW.last_error->>'type');
    ELSE
        INSERT INTO ledger_transitions (job_id, job_type, old_status, new_status, old_attempts, new_attempts,
            old_max_attempts, max_attempts, old_claimed_by, new_claimed_by, old_crashes, new_crashes, error_type)
        VALUES (NEW.id, NEW.job_type, OLD.status, NEW.status, OLD.attempts, NEW.attempts, OLD.max_attempts,
            NEW.max_attempts, OLD.claimed_by, NEW.claimed_by, OLD.crashes, NEW.crashes, NEW.last_error->>'type');
    END IF;
    RETURN NULL;
END $$;

CREATE TABLE ledger_acked (
    job_id   bigint PRIMARY KEY,
    at       timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE ledger_writes (
    seq            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id         bigint NOT NULL,
    old_status     text NOT NULL,
    new_status     text NOT NULL,
    old_attempts   int NOT NULL,
    new_attempts   int NOT NULL,
    old_claimed_by uuid,
    new_claimed_by uuid,
    writer         text NOT NULL DEFAULT current_setting('application_name'),
    at             timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE FUNCTION ledger_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ledger_writes (job_id, old_status, new_status, old_attempts, new_attempts,
                               old_claimed_by, new_claimed_by)
    VALUES (NEW.id, OLD.status, NEW.status, OLD.attempts, NEW.attempts, OLD.claimed_by, NEW.claimed_by);
    RETURN NULL;
END $$;

CREATE TRIGGER ledger_insert AFTER INSERT ON forge_jobs
    FOR EACH ROW EXECUTE FUNCTION ledger_record();
CREATE TRIGGER ledger_update AFTER UPDATE OF status ON forge_jobs
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION ledger_record();
CREATE TRIGGER ledger_write AFTER UPDATE ON forge_jobs
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.claimed_by IS DISTINCT FROM NEW.claimed_by
                       OR OLD.attempts IS DISTINCT FROM NEW.attempts
                       OR OLD.heartbeat_at IS DISTINCT FROM NEW.heartbeat_at
                       OR OLD.progress IS DISTINCT FROM NEW.progress
                       OR OLD.progress_message IS DISTINCT FROM NEW.progress_message
                       OR OLD.result IS DISTINCT FROM NEW.result)
    EXECUTE FUNCTION ledger_write();

CREATE TABLE ledger_executions (
    seq      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    exec_id  uuid NOT NULL,
    job_id   bigint NOT NULL,
    attempt  int NOT NULL,
    event    text NOT NULL CHECK (event IN ('start', 'end', 'child', 'child_end')),
    pid      int NOT NULL,
    sup_pid  int NOT NULL,
    at       timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX ledger_executions_job ON ledger_executions (job_id);

CREATE TABLE ledger_faults (
    seq      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind     text NOT NULL,
    pid      int,
    sup_pid  int,
    detail   text,
    at       timestamptz NOT NULL DEFAULT clock_timestamp()
);
"""

LEGAL = {
    (None, "pending"),
    ("pending", "claimed"), ("retry", "claimed"),
    ("claimed", "running"),
    ("claimed", "pending"), ("running", "pending"),
    ("claimed", "completed"), ("running", "completed"),
    ("claimed", "retry"), ("running", "retry"),
    ("claimed", "failed"), ("running", "failed"),
    ("pending", "failed"), ("retry", "failed"),
    ("failed", "dead_letter"),
    ("dead_letter", "pending"),
}

_LEGAL_VALUES = ", ".join(
    f"({repr(a or '')}, {repr(b)})" for a, b in sorted(LEGAL, key=str)
)

# Each check: (name, SQL returning offending rows (at most 20), description).
# %(expected_failed)s is an array of job ids allowed to end failed/dead_letter.
CHECKS: list[tuple[str, str, str]] = [
    (
        "no job lost",
        """SELECT a.job_id, j.job_type, coalesce(j.status, 'no row'), j.attempts, j.crashes,
                  j.last_error->>'type' AS error
           FROM ledger_acked a FULL JOIN forge_jobs j ON j.id = a.job_id
           WHERE j.id IS NULL
              OR (j.status <> 'completed'
                  AND NOT (j.id = ANY(%(expected_failed)s) AND j.status IN ('failed', 'dead_letter')))
           ORDER BY 1 LIMIT 20""",
        "every job dispatch acknowledged still exists and ends completed (failed/dead_letter only where the"
        " scenario expects it), and so does every other row",
    ),
    (
        "at most one completion",
        """SELECT job_id, count(*) AS completions FROM ledger_transitions WHERE new_status = 'completed'
           GROUP BY job_id HAVING count(*) > 1 ORDER BY job_id LIMIT 20""",
        "at most one -> completed transition per job",
    ),
    (
        "legal transitions",
        f"""SELECT t.seq, t.job_id, t.old_status, t.new_status FROM ledger_transitions t
           WHERE (coalesce(t.old_status, ''), t.new_status) NOT IN (SELECT * FROM (VALUES {_LEGAL_VALUES}) AS l(a, b))
           ORDER BY t.seq LIMIT 20""",
        "only the transitions of the lifecycle",
    ),
    (
        "attempts accounting",
        """SELECT seq, job_id, old_status, new_status, old_attempts, new_attempts, old_max_attempts, max_attempts,
                  old_crashes, new_crashes, writer FROM ledger_transitions
           WHERE old_status IS NOT NULL AND NOT (CASE
               WHEN new_status = 'claimed' THEN new_attempts = old_attempts + 1
               WHEN new_status = 'pending' AND old_status IN ('claimed', 'running')
                   THEN new_attempts = old_attempts - 1
               ELSE new_attempts = old_attempts END
             AND CASE
               WHEN writer LIKE 'forge %% maintenance' AND old_status = 'claimed'
                    AND new_status NOT IN ('claimed', 'running')
                   THEN max_attempts = old_max_attempts + 1 AND new_crashes = old_crashes
               ELSE max_attempts = old_max_attempts END)
           ORDER BY seq LIMIT 20""",
        "a claim charges one attempt, a hand-back refunds it, nothing else changes it; a rescue (a maintenance"
        " connection's write) of a claim that never started charges nothing: no crash, and its run given back"
        " (max_attempts + 1)",
    ),
    (
        "attempts within bounds",
        """SELECT seq, job_id, new_status, new_attempts, max_attempts, new_crashes FROM ledger_transitions
           WHERE new_attempts < 0 OR new_attempts > max_attempts OR new_crashes > %(max_crashes)s
           ORDER BY seq LIMIT 20""",
        "0 <= attempts <= max_attempts and crashes <= max_crashes at every transition",
    ),
    (
        "nothing left leased",
        """SELECT id, status, claimed_by, heartbeat_at FROM forge_jobs WHERE status IN ('claimed', 'running')
           ORDER BY id LIMIT 20""",
        "no job left claimed or running at the end",
    ),
    (
        "completed by its owner",
        """SELECT seq, job_id, old_claimed_by, new_claimed_by FROM ledger_transitions
           WHERE new_status = 'completed' AND (old_claimed_by IS NULL
                 OR new_claimed_by IS DISTINCT FROM old_claimed_by)
           ORDER BY seq LIMIT 20""",
        "a completion is written by the lease owner of that attempt",
    ),
    (
        "no stale write",
        """SELECT seq, job_id, old_status, new_status, old_attempts, old_claimed_by, writer
           FROM (SELECT w.*, substring(w.writer FROM '^forge ([0-9a-f-]{36}) ')::uuid AS node,
                        substring(w.writer FROM '^forge [0-9a-f-]{36} (\\w+)$') AS connection
                 FROM ledger_writes w) w
           WHERE CASE
               WHEN node IS NULL THEN old_claimed_by IS NOT NULL OR new_claimed_by IS NOT NULL
               WHEN connection = 'maintenance' THEN false
               WHEN old_claimed_by IS NULL THEN NOT (new_status = 'claimed' AND new_claimed_by = node)
               ELSE NOT (old_claimed_by = node AND old_status IN ('claimed', 'running'))
           END
           ORDER BY seq LIMIT 20""",
        "a node writes a job row only as its claim, or while it holds the row's lease (its own id in claimed_by,"
        " claimed or running), except its maintenance sweeps; and no write to a held row comes from an"
        " unidentified session",
    ),
]

# Executions with their bounded end (see the module docstring): the worker's, then its children's.
EXECUTIONS_SQL = """
DROP TABLE IF EXISTS fault_execs;
CREATE TEMP TABLE fault_execs AS
WITH s AS (
    SELECT exec_id, job_id, attempt, pid, sup_pid, at AS started FROM ledger_executions WHERE event = 'start'
), e AS (
    SELECT exec_id, min(at) AS ended FROM ledger_executions WHERE event = 'end' GROUP BY exec_id
)
SELECT s.*, e.ended,
    (SELECT min(f.at) FROM ledger_faults f
      WHERE f.pid = s.pid AND f.kind IN ('died', 'kill_worker')
        AND f.at >= s.started - interval '2 seconds') AS died,  -- START_ROW_LAG
    (SELECT min(t.at) FROM ledger_transitions t
      WHERE t.job_id = s.job_id AND t.old_attempts = s.attempt AND t.at >= s.started
        AND t.old_status IN ('claimed', 'running')
        AND t.new_status NOT IN ('claimed', 'running')
        AND coalesce(t.error_type, '') <> 'forge.errors.NodeLost') AS settled
FROM s LEFT JOIN e USING (exec_id);
ALTER TABLE fault_execs ADD COLUMN bound timestamptz, ADD COLUMN children int, ADD COLUMN children_end timestamptz;
UPDATE fault_execs SET bound = coalesce(ended, died, settled, 'infinity');

DROP TABLE IF EXISTS fault_children;
CREATE TEMP TABLE fault_children AS
SELECT c.exec_id, c.pid, c.at AS started,
    coalesce(least(
        (SELECT min(r.at) FROM ledger_executions r
          WHERE r.exec_id = c.exec_id AND r.pid = c.pid AND r.event = 'child_end'),
        (SELECT min(f.at) FROM ledger_faults f
          WHERE f.pid = c.pid AND f.kind IN ('died', 'kill_worker')
            AND f.at >= c.at - interval '2 seconds')),  -- START_ROW_LAG
        'infinity') AS bound
FROM ledger_executions c WHERE c.event = 'child';
UPDATE fault_execs x SET children = c.n, children_end = c.bound, bound = greatest(x.bound, c.bound)
FROM (SELECT exec_id, count(*) AS n, max(bound) AS bound FROM fault_children GROUP BY exec_id) c
WHERE c.exec_id = x.exec_id;
"""

EXEC_CHECKS: list[tuple[str, str, str]] = [
    (
        "no overlapping executions",
        """SELECT a.job_id, a.attempt AS attempt_a, a.pid AS pid_a, a.started AS start_a, a.bound::text AS end_a,
                  a.children AS children_a, a.children_end::text AS children_end_a,
                  b.attempt AS attempt_b, b.pid AS pid_b, b.started AS start_b
           FROM fault_execs a JOIN fault_execs b
             ON a.job_id = b.job_id AND a.exec_id <> b.exec_id
            AND (a.started, a.exec_id) < (b.started, b.exec_id)
           WHERE b.started < a.bound
           ORDER BY a.job_id LIMIT 20""",
        "no execution of a job starts before an earlier one of the same job, its worker and every child it"
        " started, has (provably) ended",
    ),
    (
        "extra executions only where a fault cut an attempt",
        """SELECT x.job_id, x.attempt, x.pid, x.sup_pid, x.started, x.ended FROM fault_execs x
           WHERE EXISTS (SELECT 1 FROM fault_execs later WHERE later.job_id = x.job_id
                                                        AND later.started > x.started)
             AND x.ended IS NOT NULL
             AND NOT EXISTS (SELECT 1 FROM ledger_faults f
                  WHERE (f.pid = x.pid OR f.sup_pid = x.sup_pid OR f.kind LIKE 'pg_%%')
                    AND f.at >= x.started - interval '50 ms'
                    AND f.at <= (SELECT min(later.started) FROM fault_execs later
                                 WHERE later.job_id = x.job_id AND later.started > x.started))
             AND NOT EXISTS (SELECT 1 FROM ledger_transitions t
                  WHERE t.job_id = x.job_id AND t.old_attempts = x.attempt AND t.at >= x.started
                    AND t.new_status IN ('retry', 'failed'))
           ORDER BY x.job_id LIMIT 20""",
        "an execution that ran to its end is repeated only if a fault hit its worker or node (or PostgreSQL)"
        " between its start and the next execution's, or it failed",
    ),
]


@dataclass
class Report:
    ok: bool
    text: str
    figures: dict[str, Any] = field(default_factory=dict)


def install(conn: psycopg.Connection[Any]) -> None:
    conn.execute(LEDGER_SQL)


def record_acked(conn: psycopg.Connection[Any], job_ids: list[int]) -> None:
    """The ids dispatch acknowledged (returned) to the test's producer."""
    conn.execute("INSERT INTO ledger_acked (job_id) SELECT unnest(%s::bigint[])", (job_ids,))


def record_fault(conn: psycopg.Connection[Any], kind: str, *, pid: int | None = None,
                 sup_pid: int | None = None, detail: str | None = None, at: datetime | None = None) -> None:
    """A fault the test caused or saw; `at` when it was seen, if not now (the database runs on this machine's
    clock, so a time taken here compares with its clock_timestamp())."""
    conn.execute(
        "INSERT INTO ledger_faults (kind, pid, sup_pid, detail, at)"
        " VALUES (%s, %s, %s, %s, coalesce(%s, clock_timestamp()))",
        (kind, pid, sup_pid, detail, at),
    )


def check(url: str, *, expected_failed: list[int] | None = None, max_crashes: int = 3,
          allow_crash_capped: bool = False, require_executions: bool = True) -> Report:
    """Run every invariant; a readable report and the figures (executions, duplicates...).

    allow_crash_capped: jobs that reached the crash cap (crashes >= max_crashes, failed or
    dead_letter) are expected too (the nemesis may hit one job that often by chance); they
    are counted in the figures.
    """
    lines: list[str] = []
    ok = True
    with psycopg.connect(url, autocommit=True) as conn:
        expected = list(expected_failed or [])
        if allow_crash_capped:
            capped = [r[0] for r in conn.execute(
                "SELECT id FROM forge_jobs WHERE status IN ('failed', 'dead_letter') AND crashes >= %s",
                (max_crashes,))]
            expected += capped
        params = {"expected_failed": expected, "max_crashes": max_crashes}
        for name, query, description in CHECKS:
            rows = conn.execute(query, params).fetchall()
            ok &= _line(lines, name, description, rows)
        conn.execute(EXECUTIONS_SQL)
        if require_executions:
            for name, query, description in EXEC_CHECKS:
                rows = conn.execute(query, params).fetchall()
                ok &= _line(lines, name, description, rows)
        figures = _figures(conn)
        unbounded = conn.execute(
            "SELECT job_id, attempt, pid, started FROM fault_execs WHERE bound = 'infinity' LIMIT 5").fetchall()
        if unbounded:
            lines.append(f"  note: {figures['unbounded_executions']} executions with no known end (of the worker or"
                         f" of a child), e.g. "
                         f"{unbounded}")
    lines.append("  figures: " + json.dumps(figures, default=str))
    return Report(ok, "\n".join(lines), figures)


def _line(lines: list[str], name: str, description: str, rows: list[Any]) -> bool:
    if not rows:
        lines.append(f"  ok    {name}")
        return True
    lines.append(f"  FAIL  {name}: {description}; offending rows (first {len(rows)}):")
    lines.extend(f"          {tuple(r)}" for r in rows)
    return False


def _figures(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    one = lambda q: conn.execute(q).fetchone()[0]  # noqa: E731
    by_status = dict(conn.execute("SELECT status, count(*) FROM forge_jobs GROUP BY status").fetchall())
    return {
        "jobs": one("SELECT count(*) FROM forge_jobs"),
        "by_status": by_status,
        "executions": one("SELECT count(*) FROM fault_execs"),
        "killed_executions": one("SELECT count(*) FROM fault_execs WHERE ended IS NULL"),
        "child_processes": one("SELECT count(*) FROM fault_children"),
        "unbounded_children": one("SELECT count(*) FROM fault_children WHERE bound = 'infinity'"),
        "unbounded_executions": one("SELECT count(*) FROM fault_execs WHERE bound = 'infinity'"),
        "duplicate_executions": one(
            "SELECT coalesce(sum(n - 1), 0)::bigint FROM (SELECT count(*) n FROM fault_execs GROUP BY job_id) x"),
        "duplicate_completed_executions": one(
            "SELECT coalesce(sum(n - 1), 0)::bigint FROM (SELECT count(*) n FROM fault_execs WHERE ended IS NOT NULL"
            " GROUP BY job_id) x"),
        "retried_attempts": one("SELECT count(*) FROM ledger_transitions WHERE new_status = 'retry'"),
        "rescued_node_lost": one(
            "SELECT count(*) FROM ledger_transitions WHERE error_type = 'forge.errors.NodeLost'"
            " AND old_status IN ('claimed', 'running') AND new_status IN ('retry', 'failed')"),
        "handed_back": one("SELECT count(*) FROM ledger_transitions WHERE new_status = 'pending'"
                           " AND old_status IS NOT NULL"),
        "ledger_faults": dict(conn.execute("SELECT kind, count(*) FROM ledger_faults GROUP BY kind").fetchall()),
    }
