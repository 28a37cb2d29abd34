"""`forge status` on real rows: exact counts of the live states, sampled counts of finished ones on a big table,
the age of due jobs, paused types (none before the pause table exists), nodes alive; and its refusals."""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest
from click.testing import CliRunner

from forge.cli.main import cli
from forge.status import read_status
from tests.job_rows import hold, insert, register_node


def status_json(database_url: str, *args: str) -> dict:
    result = CliRunner().invoke(cli, ["status", "--json", *args], env={"FORGE_DATABASE_URL": database_url})
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_status_counts_every_state_by_type_and_priority(conn, database_url):
    insert(conn, "emails", "pending", count=3, priority=1)
    insert(conn, "emails", "retry", count=1)
    insert(conn, "emails", "completed", count=5)
    insert(conn, "reports", "failed", count=2, priority=0)
    insert(conn, "reports", "dead_letter", count=4, priority=3)
    insert(conn, "reports", "discarded", count=1)
    insert(conn, "reports", "cancelled", count=2)
    hold(conn, insert(conn, "emails", "running", count=2) + insert(conn, "emails", "claimed", count=1))

    found = status_json(database_url)

    assert found["by_status"] == {"pending": 3, "claimed": 1, "running": 2, "retry": 1, "completed": 5,
                                  "failed": 2, "dead_letter": 4, "discarded": 1, "cancelled": 2}
    assert found["by_type"] == {
        "emails": {"pending": 3, "retry": 1, "completed": 5, "running": 2, "claimed": 1},
        "reports": {"failed": 2, "dead_letter": 4, "discarded": 1, "cancelled": 2},
    }
    assert found["by_priority"]["high"] == {"pending": 3}
    assert found["by_priority"]["critical"] == {"failed": 2}
    assert found["by_priority"]["low"] == {"dead_letter": 4}
    assert found["estimated"] == []
    assert found["paused"] == []  # the schema has no pause table yet: nothing is paused


def test_a_held_job_listed_twice_counts_once_and_an_ended_one_not_at_all(conn, database_url):
    running = insert(conn, "emails", "running", count=2)
    hold(conn, running)
    hold(conn, running[:1])  # handed back and claimed again by the same owner: in two claim rows
    hold(conn, insert(conn, "emails", "completed"))  # a claim row not yet pruned, its job ended
    found = status_json(database_url)
    assert found["by_status"]["running"] == 2
    assert found["by_status"]["completed"] == 1


def test_oldest_pending_seconds_is_the_age_of_the_oldest_due_job_per_type(conn, database_url):
    insert(conn, "emails", "pending", due="now() - interval '90 seconds'")
    insert(conn, "emails", "retry", due="now() - interval '30 seconds'")
    insert(conn, "emails", "pending", due="now() - interval '1 hour' + interval '2 hours'")  # not due yet
    insert(conn, "reports", "pending", due="now() + interval '1 hour'")  # nothing due of this type
    found = status_json(database_url)
    assert 90 <= found["oldest_pending_seconds"]["emails"] < 120
    assert "reports" not in found["oldest_pending_seconds"]


def test_nodes_alive_with_their_busy_slots(conn, database_url):
    alive, silent, stopped = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    register_node(conn, alive)
    register_node(conn, silent, heartbeat="now() - interval '10 minutes'")
    register_node(conn, stopped, stopped=True)
    hold(conn, insert(conn, "emails", "running", count=3, owner=alive), owner=alive)
    hold(conn, insert(conn, "emails", "claimed", count=1, owner=alive), owner=alive)

    (node,) = status_json(database_url)["nodes"]

    assert node["id"] == str(alive)
    assert (node["hostname"], node["pid"], node["workers"]) == ("host-a", 4242, 4)
    assert (node["busy"], node["claimed"]) == (3, 1)
    assert node["capabilities"] == ["general", "gpu"] and node["job_types"] == ["emails", "reports"]
    assert node["heartbeat_at"].endswith("Z") or "+" in node["heartbeat_at"]  # ISO 8601 with its offset


def test_a_big_table_counts_finished_jobs_on_a_sample_and_live_ones_exactly(conn):
    insert(conn, "emails", "completed", count=20_000)
    insert(conn, "emails", "pending", count=7)
    insert(conn, "emails", "dead_letter", count=5)
    conn.execute("VACUUM forge_jobs")
    pages = conn.execute("SELECT pg_relation_size('forge_jobs') / 8192").fetchone()[0]
    assert pages > 40

    found = read_status(conn, heartbeat_timeout=30, sample_pages=pages // 4)

    assert found.estimated == ["completed"]
    assert (found.by_status["pending"], found.by_status["dead_letter"]) == (7, 5)
    assert 10_000 < found.by_status["completed"] < 30_000  # a quarter of the pages, scaled up
    exact = read_status(conn, heartbeat_timeout=30, sample_pages=pages)
    assert (exact.estimated, exact.by_status["completed"]) == ([], 20_000)


def test_status_shows_a_table_for_people(conn, database_url):
    insert(conn, "emails", "pending", count=2)
    register_node(conn, uuid.uuid4())
    result = CliRunner().invoke(cli, ["status"], env={"FORGE_DATABASE_URL": database_url})
    assert result.exit_code == 0, result.output
    assert "emails" in result.stdout and "host-a" in result.stdout and "Paused: none" in result.stdout
    assert "\x1b[" not in result.stdout  # no colours off a terminal


def test_status_on_an_unreachable_database_exits_1_naming_it(tmp_path):
    result = CliRunner().invoke(cli, ["status", "--json"], env={"FORGE_DATABASE_URL": "postgresql://127.0.0.1:1/x"})
    assert result.exit_code == 1
    assert result.stdout == "" and result.stderr.count("\n") == 1
    assert "cannot connect to the database 127.0.0.1:1/x" in result.stderr


def test_status_on_a_database_without_the_schema_says_to_migrate(empty_database_url):
    result = CliRunner().invoke(cli, ["status"], env={"FORGE_DATABASE_URL": empty_database_url})
    assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.output
    assert "forge migrate" in result.stderr


def test_status_without_config_or_database_url_exits_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["status"], env={"FORGE_DATABASE_URL": None, "FORGE_CONFIG": None})
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert "forge.toml not found" in result.stderr


@pytest.mark.parametrize("config_env", ["FORGE_CONFIG", None])
def test_status_reads_the_database_url_of_the_config_file(tmp_path, database_url, config_env):
    path = tmp_path / "forge.toml"
    path.write_text(f'[app]\nmodules = ["myapp.jobs"]\n[database]\nurl = "{database_url}"\n')
    args = [] if config_env else ["-c", str(path)]
    env = {"FORGE_DATABASE_URL": None, "FORGE_CONFIG": str(path) if config_env else None}
    result = CliRunner().invoke(cli, ["status", "--json", *args], env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["by_status"]["pending"] == 0


def test_read_status_inside_the_callers_transaction_reads_it(database_url):
    with psycopg.connect(database_url) as conn:  # not autocommit: the INSERT opens a transaction
        insert(conn, "emails", "pending", count=2)
        found = read_status(conn, heartbeat_timeout=30)  # sees the uncommitted rows, in that transaction
        assert found.by_status["pending"] == 2
        conn.rollback()
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert read_status(conn, heartbeat_timeout=30).by_status["pending"] == 0
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE  # its snapshot ended
