"""`forge status --json` on a 1,000,000-row forge_jobs: live states counted exactly, completed ones estimated
from a page sample; and on 1,000,000 pending jobs (a backlog), every one counted exactly. The time each took is
printed (run with -s to see it; a timing is no test's to assert here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from forge.status import QueueStatus, read_status
from tests.job_rows import has_column

ROWS = 1_000_000
# Of every 100 rows: 94 completed, then one each pending, retry, failed, dead_letter, and cancelled.
MIX = """CASE WHEN n % 100 < 94 THEN 'completed' WHEN n % 100 = 94 THEN 'pending' WHEN n % 100 = 95 THEN 'retry'
              WHEN n % 100 = 96 THEN 'failed' WHEN n % 100 = 97 THEN 'dead_letter' ELSE 'cancelled' END"""
LIVE = {"pending": 10_000, "retry": 10_000, "failed": 10_000, "dead_letter": 10_000}
COMPLETED = 940_000


def fill(conn) -> None:
    cancelled_at = has_column(conn, "cancelled_at")  # 0005's, tied to the status by a CHECK
    conn.execute(f"""
        INSERT INTO forge_jobs (job_type, status, priority, input, scheduled_at, claimed_by, failed_at,
                                dead_lettered_at, completed_at{', cancelled_at' if cancelled_at else ''})
        SELECT 'type_' || (n % 5), s, n % 4, jsonb_build_object('n', n), now() - (n % 3600) * interval '1 second',
               CASE WHEN s IN ('pending', 'retry') THEN NULL ELSE '00000000-0000-0000-0000-000000000001'::uuid END,
               CASE WHEN s IN ('failed', 'dead_letter') THEN now() END,
               CASE WHEN s = 'dead_letter' THEN now() END,
               CASE WHEN s = 'completed' THEN now() END
               {", CASE WHEN s = 'cancelled' THEN now() END" if cancelled_at else ''}
        FROM generate_series(1, {ROWS}) AS n, LATERAL (SELECT {MIX}) AS m(s)""")
    conn.execute("VACUUM ANALYZE forge_jobs")


def timed_status(conn, database_url: str, rows: str) -> tuple[QueueStatus, dict]:
    """read_status, then the whole `forge status --json` command, each timed (printed); both answers."""
    started = time.perf_counter()
    found = read_status(conn, heartbeat_timeout=30)
    read_seconds = time.perf_counter() - started

    started = time.perf_counter()
    command = subprocess.run([Path(sys.executable).parent / "forge", "status", "--json"], capture_output=True,
                             text=True, timeout=60, env={**os.environ, "FORGE_DATABASE_URL": database_url})
    command_seconds = time.perf_counter() - started
    print(f"\nforge status on {rows}: read_status {read_seconds:.3f} s, the whole command {command_seconds:.3f} s")
    assert command.returncode == 0, command.stderr
    return found, json.loads(command.stdout)


def test_status_on_a_million_rows(conn, database_url):
    fill(conn)
    found, shown = timed_status(conn, database_url, f"{ROWS} rows")
    assert {state: shown["by_status"][state] for state in LIVE} == LIVE
    assert shown["estimated"] == found.estimated and "completed" in found.estimated
    assert abs(shown["by_status"]["completed"] - COMPLETED) < COMPLETED * 0.05
    assert set(shown["oldest_pending_seconds"]) == {"type_4", "type_0"}  # n % 100 = 94 or 95: n % 5 = 4 or 0


def test_status_on_a_million_pending_jobs(conn, database_url):
    # As dispatch writes them (status, priority, input, scheduled_at), due over the last hour. No VACUUM: a
    # backlog just dispatched has had none, and the count reads the rows themselves, not the visibility map.
    conn.execute(f"""
        INSERT INTO forge_jobs (job_type, priority, input, scheduled_at)
        SELECT 'type_' || (n % 5), n % 4, jsonb_build_object('n', n), now() - (n % 3600) * interval '1 second'
        FROM generate_series(1, {ROWS}) AS n""")
    conn.execute("ANALYZE forge_jobs")
    found, shown = timed_status(conn, database_url, f"{ROWS} pending jobs")
    assert shown["by_status"]["pending"] == found.by_status["pending"] == ROWS
    assert {job_type: counts["pending"] for job_type, counts in shown["by_type"].items()} == {
        f"type_{n}": ROWS // 5 for n in range(5)}
    assert shown["estimated"] == [] and len(shown["oldest_pending_seconds"]) == 5
