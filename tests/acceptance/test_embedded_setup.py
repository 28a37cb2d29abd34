"""The embedded default on a machine that cannot run it: no PostgreSQL binaries, or forge run as root where no
`postgres` user exists to run PostgreSQL as. forge-supervisor says so in one line (no traceback), exits with a
status of its own for each (not 4, the database unreachable), and leaves no data folder behind; `forge db start`
says the same in one line. $FORGE_PG_BIN and $FORGE_PG_USER point the test at an empty folder and a user that
does not exist, leaving the machine as it is."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from forge.cli.main import cli
from forge.supervisor.main import EXIT_NO_POSTGRES, EXIT_NO_SERVICE_USER

from ..supervisors import SUPERVISOR, embedded_folder, forge_toml
from .conftest import APPS

NO_USER = "forge-no-such-user"


@pytest.fixture
def folder() -> Iterator[Path]:
    """A short /tmp config folder (the postgres user can reach into it); a cluster started there is stopped."""
    with embedded_folder("forge-setup-") as path:
        yield path


def _boot(folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """forge-supervisor on the embedded default of `folder`, to its exit."""
    (folder / "forge.toml").write_text(forge_toml(None, ["testapp.jobs"], {"workers": 1}))
    inherited = {k: v for k, v in os.environ.items() if k not in ("FORGE_DATABASE_URL", "FORGE_CONFIG")}
    return subprocess.run([SUPERVISOR, "-c", str(folder / "forge.toml")], capture_output=True, text=True,
                          timeout=60, env={**inherited, "PYTHONPATH": str(APPS), **env})


def _the_error(result: subprocess.CompletedProcess[str]) -> str:
    """The one error line of a supervisor's output, which has no traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, result.stderr
    return errors[0]


def _db_start(folder: Path, env: dict[str, str]) -> str:
    """`forge db start` on `folder`: its one line on stderr (it fails, exit 1)."""
    result = CliRunner().invoke(cli, ["db", "start", "-c", str(folder / "forge.toml")],
                                env={"FORGE_DATABASE_URL": None, **env})
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception  # no traceback
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_missing_postgresql_binaries(folder):
    empty = folder / "bin"
    empty.mkdir()
    result = _boot(folder, {"FORGE_PG_BIN": str(empty)})
    assert result.returncode == EXIT_NO_POSTGRES == 7, result.stderr
    error = _the_error(result)
    assert f"PostgreSQL binaries (initdb, pg_ctl) not found in {empty}" in error, error
    assert "database.url" in error, error
    assert not (folder / ".forge" / "postgres").exists()
    assert "not found" in _db_start(folder, {"FORGE_PG_BIN": str(empty)})
    assert not (folder / ".forge" / "postgres").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="PostgreSQL runs as another user only when forge runs as root")
def test_root_without_the_postgres_user(folder):
    result = _boot(folder, {"FORGE_PG_USER": NO_USER})
    assert result.returncode == EXIT_NO_SERVICE_USER == 8, result.stderr
    error = _the_error(result)
    assert f"no user {NO_USER!r}" in error and "database.url" in error, error
    assert not (folder / ".forge" / "postgres").exists()
    assert f"no user {NO_USER!r}" in _db_start(folder, {"FORGE_PG_USER": NO_USER})
