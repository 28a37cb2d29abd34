"""The `forge` command: exit codes and `forge migrate` against real databases."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import psycopg
from click.testing import CliRunner

from forge.cli.main import cli
from forge.db.embedded import EmbeddedPostgres
from forge.db.migrate import available

ALL = ", ".join(f"{m.version:04d}" for m in available())


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


def test_migrate_starts_and_stops_the_embedded_cluster():
    folder = Path(tempfile.mkdtemp(prefix="forge-cli-"))
    cluster = EmbeddedPostgres(folder / ".forge" / "postgres")
    try:
        path = write_config(folder)
        result = CliRunner().invoke(cli, ["migrate", "-c", str(path)], env={"FORGE_DATABASE_URL": None})
        assert (result.exit_code, result.stdout.strip()) == (0, f"applied migrations: {ALL}"), result.stderr
        assert not cluster.running()  # it was not running before, so migrate stopped it

        with psycopg.connect(cluster.start()) as conn:  # the schema is in the embedded cluster
            assert conn.execute("SELECT count(*) FROM forge_migrations").fetchone() == (len(available()),)
        result = CliRunner().invoke(cli, ["migrate", "-c", str(path)], env={"FORGE_DATABASE_URL": None})
        assert result.stdout.strip() == "database schema is up to date"
        assert cluster.running()  # it was running before, so migrate left it running
    finally:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)
