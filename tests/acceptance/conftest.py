"""Real forge-supervisor processes on a per-test database, running tests/apps/testapp."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import psycopg
from psycopg.rows import dict_row
import pytest

from ..polling import wait_for
from ..supervisor_log import core_totals

APPS = Path(__file__).resolve().parent.parent / "apps"
if str(APPS) not in sys.path:  # the tests import the test app's jobs to dispatch them
    sys.path.insert(0, str(APPS))
SUPERVISOR = str(Path(sys.executable).with_name("forge-supervisor"))

EVENTS_TABLE = """
CREATE TABLE IF NOT EXISTS test_events (
    job_id bigint NOT NULL, job_type text NOT NULL, attempt int NOT NULL,
    event text NOT NULL, pid int NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())
"""


class Supervisor:
    """One forge-supervisor process with its own forge.toml and log file."""

    def __init__(self, folder: Path, database_url: str, node: dict[str, Any]) -> None:
        self.folder = folder
        self.database_url = database_url
        self.config = folder / "forge.toml"
        self.log_path = folder / "supervisor.log"
        # failed jobs stay 'failed' (not yet dead letters) unless a test asks otherwise
        settings = {"workers": 2, "poll_interval": "200ms", "shutdown_grace": "5s", "dead_letter_after": "1h", **node}
        lines = [f'{k} = {_toml(v)}' for k, v in settings.items()]
        self.config.write_text(
            f'[database]\nurl = "{database_url}"\n\n[app]\nmodules = ["testapp.jobs"]\n\n'
            "[node]\n" + "\n".join(lines) + "\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "Supervisor":
        env = {**os.environ, "PYTHONPATH": str(APPS)}
        env.pop("FORGE_DATABASE_URL", None)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([SUPERVISOR, "-c", str(self.config)], stdout=log, stderr=log, env=env)
        wait_for(self._registered, what=f"supervisor to register (log: {self.log()})")
        return self

    def _registered(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"supervisor exited with {self.proc.returncode}: {self.log()}")
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM forge_nodes WHERE pid = %s", (self.proc.pid,)).fetchone()
        return bool(row and row[0])

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        return self.proc.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def core_totals(self) -> dict[str, int]:
        """The core's totals, logged when this supervisor stopped cleanly."""
        (totals,) = core_totals(self.log())
        return totals


def _toml(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


@pytest.fixture
def app_db(database_url: str) -> str:
    """The per-test database, with the table test jobs record their events in."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(EVENTS_TABLE)
    return database_url


@pytest.fixture
def supervisor(app_db: str, tmp_path: Path) -> Iterator[Callable[..., Supervisor]]:
    """Factory: supervisor(workers=1, ...) starts one; every one is stopped at the end."""
    started: list[Supervisor] = []

    def start(**node: Any) -> Supervisor:
        folder = tmp_path / f"node{len(started)}"
        folder.mkdir()
        sup = Supervisor(folder, app_db, node).start()
        started.append(sup)
        return sup

    yield start
    for sup in started:
        if sup.proc is not None and sup.proc.poll() is None:
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
    row = conn.execute(
        "SELECT count(*) FROM forge_jobs WHERE id = ANY(%s) AND status IN ('completed', 'failed', 'dead_letter')",
        (list(job_ids),),
    ).fetchone()
    return bool(row and row[0] == len(job_ids))
