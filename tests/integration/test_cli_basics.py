"""The `forge` command's frame: --version (both commands, one version), `python -m forge`, `forge db url`, usage
errors in one line, and every command's --help."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

import forge
from forge.cli.main import cli
from forge.db.embedded import EmbeddedPostgres
from tests.integration.test_cli import embedded_folder, write_config  # noqa: F401  (a fixture, and a helper)

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_the_version_is_pyprojects_everywhere():
    assert forge.__version__ == VERSION
    for command in ("forge", "forge-supervisor"):
        shown = subprocess.run([BIN / command, "--version"], capture_output=True, text=True, timeout=60)
        assert (shown.returncode, shown.stdout) == (0, f"{command} {VERSION}\n"), shown.stderr


def test_python_dash_m_forge_runs_the_cli():
    shown = subprocess.run([sys.executable, "-m", "forge", "--version"], capture_output=True, text=True, timeout=60)
    assert (shown.returncode, shown.stdout) == (0, f"forge {VERSION}\n"), shown.stderr


@pytest.mark.parametrize("words", [
    ["status"], ["dispatch"], ["jobs", "list"], ["jobs", "show"], ["jobs", "watch"], ["jobs", "retry"],
    ["jobs", "retry-all"], ["jobs", "discard"], ["jobs", "discard-all"], ["jobs", "cancel"], ["queues", "pause"],
    ["queues", "resume"], ["queues", "list"], ["db", "url"], ["migrate"],
])
def test_every_command_has_help(words):
    result = CliRunner().invoke(cli, [*words, "--help"])
    assert result.exit_code == 0, result.output
    assert "-c, --config PATH" in result.stdout


def test_a_usage_error_is_one_line_naming_the_value():
    result = CliRunner().invoke(cli, ["jobs", "show", "abc"], env={"FORGE_DATABASE_URL": "postgresql://x/y"})
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "'abc' is not a job id" in result.stderr, result.stderr


def test_a_group_alone_shows_its_help():
    result = CliRunner().invoke(cli, ["jobs"])
    assert "Commands:" in result.output and "retry-all" in result.output


def test_db_url_prints_the_running_embedded_clusters_url(embedded_folder):  # noqa: F811
    path = str(write_config(embedded_folder))
    env = {"FORGE_DATABASE_URL": None}
    stopped = CliRunner().invoke(cli, ["db", "url", "-c", path], env=env)
    assert stopped.exit_code == 1 and "not running" in stopped.stderr and "forge db start" in stopped.stderr
    url = CliRunner().invoke(cli, ["db", "start", "-c", path], env=env).stdout.strip()
    shown = CliRunner().invoke(cli, ["db", "url", "-c", path], env=env)
    assert (shown.exit_code, shown.stdout.strip()) == (0, url)
    assert url == EmbeddedPostgres(embedded_folder / ".forge" / "postgres").url
    psql = subprocess.run(["psql", url, "-Atc", "SELECT 1"], capture_output=True, text=True, timeout=60)
    assert psql.stdout.strip() == "1", psql.stderr


def test_db_url_with_a_database_url_configured_exits_2(database_url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["db", "url"], env={"FORGE_DATABASE_URL": database_url, "FORGE_CONFIG": None})
    assert result.exit_code == 2 and "FORGE_DATABASE_URL" in result.stderr, result.output
