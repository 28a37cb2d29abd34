"""The `forge` command: exit codes, `forge migrate` against real databases, and `forge db` on the embedded one."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from forge.cli.main import cli
from forge.db.embedded import EmbeddedPostgres
from forge.db.migrate import available

ALL = ", ".join(f"{m.version:04d}" for m in available())
NO_URL = {"FORGE_DATABASE_URL": None}  # the embedded default, whatever the test run's environment says


def write_config(folder: Path, extra: str = "") -> Path:
    path = folder / "forge.toml"
    path.write_text('[app]\nmodules = ["myapp.jobs"]\n' + extra)
    return path


def test_help_lists_migrate():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    assert "migrate" in result.output


def test_bad_config_exits_2_with_one_line_message(tmp_path):
    path = write_config(tmp_path, "[node]\nwrokers = 3\n")
    result = CliRunner().invoke(cli, ["migrate", "-c", str(path)], env={"FORGE_DATABASE_URL": None})
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert "unknown key 'node.wrokers'" in result.stderr and "did you mean 'workers'?" in result.stderr


def test_unreachable_database_exits_1(tmp_path):
    path = write_config(tmp_path)
    env = {"FORGE_DATABASE_URL": "postgresql://127.0.0.1:1/x"}
    result = CliRunner().invoke(cli, ["migrate", "-c", str(path)], env=env)
    assert result.exit_code == 1
    assert "cannot connect" in result.stderr


def test_migrate_uses_forge_database_url(tmp_path, empty_database_url):
    path = write_config(tmp_path, '[database]\nurl = "postgresql://127.0.0.1:1/not-this-one"\n')
    env = {"FORGE_DATABASE_URL": empty_database_url}
    first = CliRunner().invoke(cli, ["migrate", "-c", str(path)], env=env)
    assert (first.exit_code, first.stdout.strip()) == (0, f"applied migrations: {ALL}")
    again = CliRunner().invoke(cli, ["migrate", "-c", str(path)], env=env)
    assert (again.exit_code, again.stdout.strip()) == (0, "database schema is up to date")


def test_a_schema_newer_than_this_forge_exits_3(tmp_path, empty_database_url):
    path = write_config(tmp_path)
    env = {"FORGE_DATABASE_URL": empty_database_url}
    assert CliRunner().invoke(cli, ["migrate", "-c", str(path)], env=env).exit_code == 0
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO forge_migrations (version, name) VALUES (9999, 'from_a_newer_forge')")
    result = CliRunner().invoke(cli, ["migrate", "-c", str(path)], env=env)
    assert result.exit_code == 3, result.output
    assert result.stderr.count("\n") == 1
    assert "schema is newer than this Forge" in result.stderr and "9999" in result.stderr


@pytest.fixture
def embedded_folder() -> Iterator[Path]:
    """A short /tmp config folder; its embedded cluster is stopped before the folder is removed."""
    folder = Path(tempfile.mkdtemp(prefix="forge-cli-"))
    try:
        yield folder
    finally:
        EmbeddedPostgres(folder / ".forge" / "postgres").stop()
        shutil.rmtree(folder, ignore_errors=True)


def test_migrate_starts_the_embedded_cluster_and_leaves_it_running(embedded_folder):
    cluster = EmbeddedPostgres(embedded_folder / ".forge" / "postgres")
    path = write_config(embedded_folder)
    result = CliRunner().invoke(cli, ["migrate", "-c", str(path)], env=NO_URL)
    assert (result.exit_code, result.stdout.strip()) == (0, f"applied migrations: {ALL}"), result.stderr
    url = cluster.url
    assert url is not None, "forge migrate stopped the embedded cluster it started"
    with psycopg.connect(url) as conn:  # the schema is in the embedded cluster
        assert conn.execute("SELECT count(*) FROM forge_migrations").fetchone() == (len(available()),)

    result = CliRunner().invoke(cli, ["migrate", "-c", str(path)], env=NO_URL)
    assert result.stdout.strip() == "database schema is up to date"
    assert cluster.url == url


def test_forge_db_starts_shows_and_stops_the_embedded_cluster(embedded_folder):
    cluster = EmbeddedPostgres(embedded_folder / ".forge" / "postgres")
    path = str(write_config(embedded_folder))
    status = CliRunner().invoke(cli, ["db", "status", "-c", path], env=NO_URL)
    assert (status.exit_code, status.stdout.strip()) == (0, "stopped"), status.output

    started = CliRunner().invoke(cli, ["db", "start", "-c", path], env=NO_URL)
    assert started.exit_code == 0, started.output
    url = cluster.url
    assert url is not None and started.stdout.strip() == url
    status = CliRunner().invoke(cli, ["db", "status", "-c", path], env=NO_URL)
    assert (status.exit_code, status.stdout.strip()) == (0, f"running at {url}"), status.output

    with cluster.used():  # what a supervisor holds while it runs on the cluster
        status = CliRunner().invoke(cli, ["db", "status", "-c", path], env=NO_URL)
        assert status.stdout.strip() == f"running at {url}, in use", status.output
        refused = CliRunner().invoke(cli, ["db", "stop", "-c", path], env=NO_URL)
        assert refused.exit_code == 1 and refused.stderr.count("\n") == 1, refused.output
        assert "in use" in refused.stderr and str(cluster.users_file) in refused.stderr
        assert cluster.url == url

    stopped = CliRunner().invoke(cli, ["db", "stop", "-c", path], env=NO_URL)
    assert (stopped.exit_code, stopped.stdout.strip()) == (0, "stopped"), stopped.output
    assert not cluster.running()
    assert CliRunner().invoke(cli, ["db", "start", "-c", path], env=NO_URL).stdout.strip() == url  # same port


def test_forge_db_refuses_a_config_with_a_database_url(tmp_path, empty_database_url):
    path = write_config(tmp_path)
    result = CliRunner().invoke(cli, ["db", "stop", "-c", str(path)], env={"FORGE_DATABASE_URL": empty_database_url})
    assert result.exit_code == 2, result.output
    assert "embedded" in result.stderr and "FORGE_DATABASE_URL" in result.stderr
