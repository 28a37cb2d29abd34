"""Rows in every job state, written straight into a test database, for the CLI's tests.

Each row gets the columns the schema's CHECKs tie to its status: claimable rows (pending, retry) have neither
an owner nor a failure; held and ended ones have an owner; failed, dead_letter and discarded ones a failure;
and, where the schema has them (migration 0005), cancelled rows a cancelled_at and discarded ones a discarded_at.
"""

from __future__ import annotations

import uuid

import psycopg

OWNER = uuid.UUID(int=7)

_CLAIMABLE = ("pending", "retry")
_FAILED = ("failed", "dead_letter", "discarded")


def insert(conn: psycopg.Connection, job_type: str, status: str, *, count: int = 1, priority: int = 2,
           due: str = "now()", owner: uuid.UUID | None = OWNER, attempts: int = 0, max_attempts: int = 3) -> list[int]:
    """`count` rows of `job_type` in `status` (due at the SQL expression `due`); their ids."""
    columns = {
        "claimed_by": "NULL" if status in _CLAIMABLE else "%(owner)s",
        "failed_at": "now()" if status in _FAILED else "NULL",
        "dead_lettered_at": "now()" if status == "dead_letter" else "NULL",
        "completed_at": "now()" if status == "completed" else "NULL",
        "last_error": """'{"type": "NetworkError", "message": "down", "traceback": "Traceback: boom"}'"""
                      if status in _FAILED else "NULL",
    }
    for column, state in (("cancelled_at", "cancelled"), ("discarded_at", "discarded")):
        if has_column(conn, column):
            columns[column] = "now()" if status == state else "NULL"
    rows = conn.execute(
        f"""INSERT INTO forge_jobs (job_type, status, priority, input, scheduled_at, attempts, max_attempts,
                                    {", ".join(columns)})
            SELECT %(type)s, %(status)s, %(priority)s, jsonb_build_object('n', n), {due}, %(attempts)s,
                   %(max_attempts)s, {", ".join(columns.values())}
            FROM generate_series(1, %(count)s) AS n
            RETURNING id""",
        {"type": job_type, "status": status, "priority": priority, "owner": owner, "count": count,
         "attempts": attempts, "max_attempts": max_attempts},
    ).fetchall()
    return [row[0] for row in rows]


def has_column(conn: psycopg.Connection, column: str) -> bool:
    found = conn.execute(
        "SELECT 1 FROM information_schema.columns WHERE table_name = 'forge_jobs' AND column_name = %s", (column,)
    ).fetchone()
    return found is not None


def hold(conn: psycopg.Connection, ids: list[int], owner: uuid.UUID = OWNER) -> None:
    """List held jobs in a claim row of their owner, as the claim statement does."""
    conn.execute("INSERT INTO forge_claims (owner, job_ids) VALUES (%s, %s)", (owner, ids))


def register_node(conn: psycopg.Connection, node_id: uuid.UUID, *, heartbeat: str = "now()",
                  stopped: bool = False, job_types: tuple[str, ...] = ("emails", "reports")) -> None:
    conn.execute(
        f"""INSERT INTO forge_nodes (id, hostname, pid, roles, capabilities, workers, job_types, heartbeat_at,
                                     stopped_at)
            VALUES (%s, 'host-a', 4242, '{{worker}}', '{{general,gpu}}', 4, %s, {heartbeat},
                    {'now()' if stopped else 'NULL'})""",
        (node_id, list(job_types)),
    )


def states(conn: psycopg.Connection) -> dict[int, str]:
    """Every job's status, by id."""
    return dict(conn.execute("SELECT id, status FROM forge_jobs ORDER BY id").fetchall())
