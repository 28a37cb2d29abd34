"""The Rust core's retention sweep on a real PostgreSQL (no supervisor): [retention] reaches the core, its
walk goes on from round to round past rows it must keep, and its counters count what it deleted."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from forge._core import Core
from forge.config import NodeConfig, RetentionConfig
from forge.supervisor.main import core_settings
from tests.polling import wait_for

NODE = NodeConfig(workers=1, maintenance_interval=0.1, dead_letter_retain=60.0)
OWNER = str(uuid.uuid4())


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


def sweeping(url: str, retention: RetentionConfig) -> Core:
    """A core that only sweeps: it runs no job type and is granted no credit."""
    return Core(core_settings(NODE, url, uuid.uuid4(), {}, retention))


def insert(db: psycopg.Connection[Any], status: str, count: int, *, hours_ago: float = 2.0) -> None:
    """`count` rows in `status` that ended (and were created) `hours_ago`; pending ones are due in an hour."""
    ago = f"now() - {hours_ago} * interval '1 hour'"
    ended = {"completed": ("completed_at", "claimed_by"), "pending": (None, None)}.get(status, ("failed_at", None))
    columns = ["job_type", "input", "status", "created_at"]
    values = ["'t'", "'{}'", f"'{status}'", ago]
    if ended[0]:
        columns.append(ended[0])
        values.append(ago)
    if ended[1]:
        columns.append(ended[1])
        values.append(f"'{OWNER}'")
    if status in ("dead_letter", "cancelled", "discarded"):  # each tied to its status by a check (0003, 0005)
        columns.append({"dead_letter": "dead_lettered_at", "cancelled": "cancelled_at",
                        "discarded": "discarded_at"}[status])
        values.append(ago)
    if status == "pending":
        columns.append("scheduled_at")
        values.append("now() + interval '1 hour'")
    db.execute(f"INSERT INTO forge_jobs ({', '.join(columns)}) SELECT {', '.join(values)} "
               f"FROM generate_series(1, {count})")


def counts(db: psycopg.Connection[Any]) -> dict[str, int]:
    return dict(db.execute("SELECT status, count(*) FROM forge_jobs GROUP BY status").fetchall())


def test_the_core_prunes_each_status_after_its_retention_and_counts_it(database_url, db):
    insert(db, "completed", 2500)
    insert(db, "cancelled", 30)
    insert(db, "discarded", 40)
    insert(db, "dead_letter", 3)
    insert(db, "completed", 7, hours_ago=0.0)  # within its hour
    core = sweeping(database_url, RetentionConfig(completed=3600.0, cancelled=60.0, discarded=None))
    try:
        wanted = {"pruned_completed": 2500, "pruned_cancelled": 30, "pruned": 3}
        wait_for(lambda: {k: core.stats()[k] for k in wanted} == wanted, timeout=20, what=f"the counters {wanted}")
        assert core.stats()["pruned_discarded"] == 0
        assert counts(db) == {"discarded": 40, "completed": 7}
    finally:
        core.close()


def test_the_walk_goes_on_from_round_to_round_past_the_rows_it_keeps(database_url, db):
    # 30,000 rows it must keep (claimable, due in an hour) before the expired ones: more than one round's
    # 20 windows of 1,000, so only a walk that resumes where the last round stopped reaches them.
    insert(db, "pending", 30_000)
    insert(db, "completed", 1500)
    core = sweeping(database_url, RetentionConfig(completed=60.0))
    try:
        wait_for(lambda: core.stats()["pruned_completed"] == 1500, timeout=30, what="the walk to reach them")
        assert counts(db) == {"pending": 30_000}
    finally:
        core.close()
