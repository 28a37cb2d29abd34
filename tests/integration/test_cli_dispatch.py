"""`forge dispatch TYPE --input JSON`: the app is imported to check the input; every refusal exits 2 with one
line naming the bad value, and inserts nothing."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from forge.cli.main import cli

APP = '''
import msgspec
import forge

class Email(msgspec.Struct):
    to: str
    retries: int = 0

@forge.job(priority="low")
def cli_send_email(ctx, input: Email) -> None: ...
'''


@pytest.fixture
def app_config(tmp_path: Path) -> Path:
    (tmp_path / "cli_dispatch_app.py").write_text(APP)
    path = tmp_path / "forge.toml"
    path.write_text('[app]\nmodules = ["cli_dispatch_app"]\n')
    return path


def dispatch(database_url: str, config: Path, *args: str):
    return CliRunner().invoke(cli, ["dispatch", "-c", str(config), *args], env={"FORGE_DATABASE_URL": database_url})


def jobs(conn) -> list[tuple]:
    return conn.execute(
        "SELECT id, job_type, input, priority, scheduled_at, scheduled_at - created_at FROM forge_jobs ORDER BY id"
    ).fetchall()


def test_dispatch_inserts_one_checked_job_and_prints_its_id(conn, database_url, app_config):
    result = dispatch(database_url, app_config, "cli_send_email", "--input", '{"to": "a@example.com"}')
    assert result.exit_code == 0, result.output
    ((job_id, job_type, input, priority, _, _),) = jobs(conn)
    assert result.stdout.strip() == str(job_id)
    assert (job_type, input, priority) == ("cli_send_email", {"to": "a@example.com", "retries": 0}, 3)


def test_dispatch_takes_a_priority_a_delay_and_a_time(conn, database_url, app_config):
    at = datetime.now(timezone.utc) + timedelta(days=1)
    args = ["cli_send_email", "--input", '{"to": "b"}']
    assert dispatch(database_url, app_config, *args, "--priority", "high", "--delay", "10m").exit_code == 0
    assert dispatch(database_url, app_config, *args, "--at", at.isoformat()).exit_code == 0
    (_, _, _, priority, _, delay), (_, _, _, _, scheduled, _) = jobs(conn)
    assert priority == 1 and timedelta(minutes=10) <= delay < timedelta(minutes=10, seconds=5)
    assert abs(scheduled - at) < timedelta(milliseconds=1)


@pytest.mark.parametrize(("args", "named"), [
    (["cli_send_email", "--input", "{not json"], "not valid JSON"),
    (["cli_send_email", "--input", '{"to": 5}'], "Expected `str`, got `int` - at `$.to`"),
    (["cli_send_email", "--input", "{}"], "missing required field `to`"),
    (["no_such_job", "--input", "{}"], "no job type 'no_such_job'"),
    (["cli_send_email", "--input", '{"to": "c"}', "--delay", "soon"], "'soon'"),
    (["cli_send_email", "--input", '{"to": "c"}', "--at", "tomorrow"], "'tomorrow' is not an ISO 8601 time"),
    (["cli_send_email", "--input", '{"to": "c"}', "--priority", "urgent"], "'urgent' is not one of"),
    (["cli_send_email", "--input", '{"to": "c"}', "--delay", "1m", "--at", "2030-01-01T00:00:00Z"], "not both"),
])
def test_dispatch_refusals_exit_2_naming_the_value_and_insert_nothing(conn, database_url, app_config, args, named):
    result = dispatch(database_url, app_config, *args)
    assert result.exit_code == 2, result.output
    assert result.stdout == "" and result.stderr.count("\n") == 1, result.stderr
    assert named in result.stderr
    assert jobs(conn) == []


def test_dispatch_needs_the_app_config(database_url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no forge.toml here: only $FORGE_DATABASE_URL
    result = CliRunner().invoke(cli, ["dispatch", "x", "--input", "{}"], env={"FORGE_DATABASE_URL": database_url,
                                                                             "FORGE_CONFIG": None})
    assert result.exit_code == 2 and "[app] modules" in result.stderr, result.output


def test_an_app_that_fails_to_import_exits_2_in_one_line(database_url, tmp_path):
    (tmp_path / "cli_broken_app.py").write_text("raise RuntimeError('boom at import')\n")
    path = tmp_path / "forge.toml"
    path.write_text('[app]\nmodules = ["cli_broken_app"]\n')
    result = dispatch(database_url, path, "x", "--input", "{}")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert "RuntimeError: boom at import" in result.stderr


def test_dispatched_job_reads_back_as_json_with_status(conn, database_url, app_config):
    job_id = int(dispatch(database_url, app_config, "cli_send_email", "--input", '{"to": "d"}').stdout)
    found = CliRunner().invoke(cli, ["status", "--json"], env={"FORGE_DATABASE_URL": database_url})
    assert json.loads(found.stdout)["by_type"] == {"cli_send_email": {"pending": 1}}
    assert job_id > 0
