"""The supervisor and its database at boot: it applies the migrations itself, and a database it cannot
reach makes it exit with status 4 (not crash-loop, not hang)."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import psycopg
from testapp import jobs

import forge
from forge.db.migrate import MIGRATIONS_DIR, migrate

from ..supervisors import forge_toml
from .conftest import APPS, DEFAULT_NODE, SUPERVISOR, Supervisor, finished, wait_for


def _closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_database_exits_4(tmp_path: Path):
    config = tmp_path / "forge.toml"
    url = f"postgresql://postgres@127.0.0.1:{_closed_port()}/forge"
    config.write_text(forge_toml(url, ["testapp.jobs"], DEFAULT_NODE))
    began = time.monotonic()
    result = subprocess.run([SUPERVISOR, "-c", str(config)], capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(APPS)})
    assert result.returncode == 4, result.stderr
    assert "cannot connect to the database" in result.stderr and "Traceback" not in result.stderr
    assert time.monotonic() - began < 30


def _applied(url: str) -> list[int]:
    with psycopg.connect(url, autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass('forge_migrations') IS NOT NULL").fetchone()
        if not (exists and exists[0]):
            return []
        return [r[0] for r in conn.execute("SELECT version FROM forge_migrations ORDER BY version")]


def test_the_supervisor_applies_the_migrations_at_start(empty_database_url: str, tmp_path: Path):
    every = list(range(1, len(list(MIGRATIONS_DIR.glob("*.sql"))) + 1))
    sup = Supervisor(tmp_path / "node", empty_database_url, modules=["testapp.jobs"], node=DEFAULT_NODE,
                     app_path=APPS, start_timeout=30.0)
    try:
        sup.start(wait=False)
        wait_for(lambda: _applied(empty_database_url) == every, timeout=30, what="the migrations")
        sup.wait_registered()
        with psycopg.connect(empty_database_url, autocommit=True) as conn:
            job_id = forge.dispatch(conn, jobs.double_async, jobs.N(n=2))
            wait_for(lambda: finished(conn, job_id), what="a job on the database it migrated")
        assert f"applied migrations {every}" in sup.log()
    finally:
        sup.stop()


def test_a_schema_newer_than_this_forge_exits_6(empty_database_url: str, tmp_path: Path):
    migrate(empty_database_url)  # then a newer Forge's migration appears in the ledger
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO forge_migrations (version, name) VALUES (9999, 'from_a_newer_forge')")
    config = tmp_path / "forge.toml"
    config.write_text(forge_toml(empty_database_url, ["testapp.jobs"], DEFAULT_NODE))
    result = subprocess.run([SUPERVISOR, "-c", str(config)], capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(APPS)})
    assert result.returncode == 6, result.stderr
    assert "schema is newer than this Forge" in result.stderr and "Traceback" not in result.stderr
