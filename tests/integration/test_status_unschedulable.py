"""`forge status` on jobs that need a worker capability no live node has: listed in `unschedulable` (JSON) and
one line each in the text, never hidden; a capability a live node has, or a node long silent, tells them apart."""

from __future__ import annotations

import uuid

from click.testing import CliRunner

from forge.cli.main import cli
from tests.job_rows import insert, register_node

from .test_cli_status import status_json


def with_capability(conn, ids: list[int], capability: str) -> None:
    conn.execute("UPDATE forge_jobs SET capability = %s WHERE id = ANY(%s)", (capability, ids))


def test_waiting_jobs_no_live_node_can_claim_are_reported_by_type_and_capability(conn, database_url):
    register_node(conn, uuid.uuid4())  # capabilities general, gpu
    register_node(conn, uuid.uuid4(), heartbeat="now() - interval '1 hour'")  # silent: not alive
    conn.execute("UPDATE forge_nodes SET capabilities = '{media}' WHERE heartbeat_at < now() - interval '1 minute'")
    with_capability(conn, insert(conn, "emails", "pending", count=2) + insert(conn, "emails", "retry"), "media")
    with_capability(conn, insert(conn, "reports", "pending", due="now() + interval '1 hour'"), "media")
    with_capability(conn, insert(conn, "reports", "pending"), "gpu")  # a live node has it
    insert(conn, "reports", "pending")  # general
    with_capability(conn, insert(conn, "emails", "failed"), "media")  # not waiting: not counted
    found = status_json(database_url)
    assert found["unschedulable"] == [
        {"job_type": "emails", "capability": "media", "pending": 3},
        {"job_type": "reports", "capability": "media", "pending": 1},
    ]
    assert found["by_status"]["pending"] == 5  # still counted as pending, with the others

    shown = CliRunner().invoke(cli, ["status"], env={"FORGE_DATABASE_URL": database_url})
    assert shown.exit_code == 0, shown.output
    assert "3 pending emails jobs: no live node has capability media" in shown.stdout
    assert "1 pending reports jobs: no live node has capability media" in shown.stdout


def test_nothing_is_unschedulable_when_a_live_node_has_each_capability(conn, database_url):
    register_node(conn, uuid.uuid4())
    with_capability(conn, insert(conn, "emails", "pending"), "gpu")
    insert(conn, "emails", "pending")
    assert status_json(database_url)["unschedulable"] == []
