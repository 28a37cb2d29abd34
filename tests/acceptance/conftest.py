"""Real forge-supervisor processes on a per-test database, running tests/apps/testapp."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import psycopg
import pytest
from psycopg.rows import dict_row

from ..polling import wait_for  # noqa: F401 (the tests import it from here)
from ..supervisors import SUPERVISOR, Supervisor  # noqa: F401 (test_boot imports SUPERVISOR from here)

APPS = Path(__file__).resolve().parent.parent / "apps"
if str(APPS) not in sys.path:  # the tests import the test app's jobs to dispatch them
    sys.path.insert(0, str(APPS))

EVENTS_TABLE = """
CREATE TABLE IF NOT EXISTS test_events (
    job_id bigint NOT NULL, job_type text NOT NULL, attempt int NOT NULL,
    event text NOT NULL, pid int NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())
"""


DEFAULT_NODE: dict[str, Any] = {
    "workers": 2,
    "poll_interval": "200ms",
    "shutdown_grace": "5s",
    "dead_letter_after": "1h",  # failed jobs stay 'failed' (not yet dead letters) unless a test asks otherwise
}


@pytest.fixture
def app_db(database_url: str) -> str:
    """The per-test database, with the table test jobs record their events in."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(EVENTS_TABLE)
    return database_url


@pytest.fixture
def supervisor(app_db: str, tmp_path: Path) -> Iterator[Callable[..., Supervisor]]:
    """Factory: supervisor(workers=1, ...) starts one; every one is stopped at the end.

    modules: the app modules it imports; url: where it reaches PostgreSQL (e.g. a proxy), if not directly;
    new_session: in a session and process group of its own; output: a file descriptor for its stdout and
    stderr instead of its log file; env: variables added to its environment; retention: its [retention]
    table; node_defaults: False for the node's own defaults (dead_letter_after included) where DEFAULT_NODE
    would set them, only workers and poll_interval as there.
    """
    started: list[Supervisor] = []

    def start(*, modules: Sequence[str] = ("testapp.jobs",), url: str | None = None, new_session: bool = False,
              output: int | None = None, env: Mapping[str, str] | None = None,
              retention: Mapping[str, str] | None = None, node_defaults: bool = True, **node: Any) -> Supervisor:
        defaults = DEFAULT_NODE if node_defaults else {key: DEFAULT_NODE[key] for key in ("workers", "poll_interval")}
        sup = Supervisor(tmp_path / f"node{len(started)}", url or app_db, modules=modules, direct_url=app_db,
                         node={**defaults, **node}, app_path=APPS, start_timeout=15.0)
        if retention:
            table = "".join(f'{key} = "{value}"\n' for key, value in retention.items())
            sup.config.write_text(sup.config.read_text() + f"\n[retention]\n{table}")
        started.append(sup)
        return sup.start(start_new_session=new_session, output=output, env=env)

    yield start
    for sup in started:
        if sup.running():
            sup.stop(signal.SIGKILL)


@pytest.fixture
def db(app_db: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the per-test database."""
    with psycopg.connect(app_db, autocommit=True) as conn:
        yield conn


def job_row(conn: psycopg.Connection[Any], job_id: int) -> dict[str, Any]:
    cur = conn.cursor(row_factory=dict_row)
    row = cur.execute("SELECT * FROM forge_jobs WHERE id = %s", (job_id,)).fetchone()
    assert row is not None, f"job {job_id} not found"
    return row


def finished(conn: psycopg.Connection[Any], *job_ids: int) -> bool:
    """Whether every job ended, one way or another: for tests that expect failures, and check them."""
    row = conn.execute(
        "SELECT count(*) FROM forge_jobs WHERE id = ANY(%s) AND status IN ('completed', 'failed', 'dead_letter')",
        (list(job_ids),),
    ).fetchone()
    return bool(row and row[0] == len(job_ids))


def completed(conn: psycopg.Connection[Any], *job_ids: int) -> bool:
    """Whether every job completed. AssertionError at once, naming one, if any ended otherwise: a run whose
    jobs fail must not pass by merely finishing."""
    row = conn.execute(
        """SELECT count(*) FILTER (WHERE status = 'completed'),
                  count(*) FILTER (WHERE status IN ('failed', 'dead_letter')),
                  (array_agg(jsonb_build_object('id', id, 'status', status, 'error', last_error))
                       FILTER (WHERE status IN ('failed', 'dead_letter')))[1]
           FROM forge_jobs WHERE id = ANY(%s)""",
        (list(job_ids),),
    ).fetchone()
    assert row is not None
    done, ended_otherwise, example = row
    assert not ended_otherwise, f"{ended_otherwise} of {len(job_ids)} jobs did not complete, e.g. {example}"
    return bool(done == len(job_ids))
