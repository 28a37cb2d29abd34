"""`forge queues pause|resume|list` on real rows, through forge.Jobs; `forge status` shows the pauses. (That a
pause stops claiming on every node is the supervisors' test.)"""

from __future__ import annotations

import uuid

from tests.cli_runner import forge, forge_json
from tests.job_rows import insert, register_node


def paused(database_url: str) -> list[str]:
    return forge_json(database_url, "status")["paused"]


def test_pause_and_resume_types(conn, database_url):
    result = forge(database_url, "queues", "pause", "emails", "reports")
    assert (result.exit_code, result.stdout.strip()) == (0, "paused emails, reports"), result.output
    assert paused(database_url) == ["emails", "reports"]
    result = forge(database_url, "queues", "resume", "emails")
    assert (result.exit_code, result.stdout.strip()) == (0, "resumed emails"), result.output
    assert paused(database_url) == ["reports"]


def test_pause_all_pauses_every_type_a_node_runs_or_a_job_waits_in(conn, database_url):
    register_node(conn, uuid.uuid4(), job_types=("emails", "reports"))
    insert(conn, "thumbnails", "pending")
    insert(conn, "archived", "completed")  # no job waits in it, no node runs it
    assert forge(database_url, "queues", "pause", "--all").exit_code == 0
    assert paused(database_url) == ["emails", "reports", "thumbnails"]
    resumed = forge(database_url, "queues", "resume", "--all")
    assert (resumed.exit_code, resumed.stdout.strip()) == (0, "resumed emails, reports, thumbnails"), resumed.output
    assert paused(database_url) == []


def test_pause_wants_types_or_all_not_both_nor_neither(database_url):
    for args in ([], ["emails", "--all"]):
        result = forge(database_url, "queues", "pause", *args)
        assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
        assert "--all" in result.stderr
    assert paused(database_url) == []


def test_queues_list_shows_each_type_paused_or_not_with_its_jobs(conn, database_url):
    register_node(conn, uuid.uuid4(), job_types=("emails",))
    insert(conn, "emails", "pending", count=2)
    insert(conn, "reports", "dead_letter")
    assert forge(database_url, "queues", "pause", "reports").exit_code == 0
    listed = forge_json(database_url, "queues", "list")
    assert listed == [
        {"job_type": "emails", "paused": False, "nodes": 1, "by_status": {"pending": 2}},
        {"job_type": "reports", "paused": True, "nodes": 0, "by_status": {"dead_letter": 1}},
    ]
    text = forge(database_url, "queues", "list")
    assert text.exit_code == 0 and "paused" in text.stdout and "emails" in text.stdout, text.output
