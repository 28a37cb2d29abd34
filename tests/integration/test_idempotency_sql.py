"""engine.sql by hand for idempotency keys and capabilities: release_keys (the walk of the keyed rows that
frees the keys of jobs finished past [retention] idempotency), a keyed job's completion still a HOT update, and
fail_unknown_types leaving jobs of a registered type that wait for a capability no node has."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from forge._core import planner_options
from forge.db.queries import load_queries

from .test_engine_sql import claim, complete, due_for, fail_unknown, node

SQL = load_queries("engine.sql")
HOUR_MS = 3_600_000.0
OWNER = uuid.uuid4()


@pytest.fixture
def db(database_url):
    options = planner_options("maintenance")
    with psycopg.connect(database_url, autocommit=True, options=options, cursor_factory=psycopg.RawCursor) as conn:
        yield conn


# Each state as a row can have it (the CHECKs of 0003 and 0005), ended `$2` seconds ago.
STATES = {
    "pending": "'pending', NULL, NULL, NULL, NULL, NULL",
    "running": f"'running', '{OWNER}', NULL, NULL, NULL, NULL",
    "completed": f"'completed', '{OWNER}', now() - $2 * interval '1 second', NULL, NULL, NULL",
    "failed": f"'failed', '{OWNER}', NULL, now() - $2 * interval '1 second', NULL, NULL",
    "cancelled": "'cancelled', NULL, NULL, NULL, now() - $2 * interval '1 second', NULL",
    "discarded": f"'discarded', '{OWNER}', NULL, now() - $2 * interval '1 second', NULL, "
                 "now() - $2 * interval '1 second'",
}


def keyed(db, state: str, *, ended_s: float, created_s: float | None = None, count: int = 1) -> list[int]:
    """`count` keyed rows in `state`, ended `ended_s` seconds ago, created `created_s` ago (default: then)."""
    created = ended_s if created_s is None else created_s
    return [r[0] for r in db.execute(
        "INSERT INTO forge_jobs (job_type, input, status, claimed_by, completed_at, failed_at, cancelled_at,"
        "                        discarded_at, created_at, idempotency_key)"
        f" SELECT 'noop', '{{}}', {STATES[state]}, now() - $3 * interval '1 second', 'k' || gen_random_uuid()"
        " FROM generate_series(1, $1) RETURNING id",
        (count, ended_s, created),
    ).fetchall()]


def release(db, after: int = 0, window_ms: float = HOUR_MS) -> tuple:
    """One window of release_keys: (released, last_id, walked_all)."""
    return db.execute(SQL["release_keys"], (after, window_ms)).fetchone()


def keys_of(db, ids: list[int]) -> list[bool]:
    found = dict(db.execute("SELECT id, idempotency_key IS NOT NULL FROM forge_jobs WHERE id = ANY($1)", (ids,)))
    return [found[i] for i in ids]


def test_only_jobs_finished_past_the_window_release_their_keys(db):
    old = {state: keyed(db, state, ended_s=7200)[0] for state in STATES}
    young = {state: keyed(db, state, ended_s=60, created_s=7200)[0] for state in STATES}
    unkeyed = db.execute("INSERT INTO forge_jobs (job_type, input) VALUES ('noop', '{}') RETURNING id").fetchone()
    assert release(db) == (3, unkeyed[0] - 1, True)
    held = dict(zip(old, keys_of(db, list(old.values()))))
    assert held == {"pending": True, "running": True, "completed": False, "failed": True, "cancelled": False,
                    "discarded": False}
    assert all(keys_of(db, list(young.values())))
    assert release(db)[0] == 0  # released keys stay released; the rest stay held


def test_the_walk_goes_one_window_of_keyed_rows_at_a_time_and_ends_at_young_rows(db):
    old = keyed(db, "completed", ended_s=7200, count=1500)
    young = keyed(db, "completed", ended_s=0, count=10)
    released, last, walked_all = release(db)
    assert (released, last, walked_all) == (1000, old[999], False)
    released, last, walked_all = release(db, last)
    assert (released, walked_all) == (500, True)  # the window reached rows created within the window
    assert last == young[-1] and not any(keys_of(db, old)) and all(keys_of(db, young))


def test_a_row_locked_by_another_session_is_skipped_not_waited_for(db, database_url):
    [job] = keyed(db, "completed", ended_s=7200)
    with psycopg.connect(database_url) as other:
        other.execute("SELECT 1 FROM forge_jobs WHERE id = %s FOR UPDATE", (job,))
        assert release(db)[0] == 0
    assert release(db)[0] == 1


def test_completing_a_keyed_job_is_a_hot_update(db):
    """The key's indexes (0001's unique one, 0009's walk) look at no column a completion writes (0003)."""
    db.execute("INSERT INTO forge_jobs (job_type, input, idempotency_key)"
               " SELECT 'noop', '{}', 'key' || n FROM generate_series(1, 20) AS n")
    owner = uuid.uuid4()
    jobs = claim(db, owner)
    counts = ("SELECT pg_stat_get_xact_tuples_hot_updated(c.oid), pg_stat_get_xact_tuples_updated(c.oid)"
              " FROM pg_class c WHERE c.relname = 'forge_jobs'")
    with db.transaction():
        hot_before, updated_before = db.execute(counts).fetchone()
        assert complete(db, owner, jobs) == 20
        hot_after, updated_after = db.execute(counts).fetchone()
    assert (hot_after - hot_before, updated_after - updated_before) == (20, 20)


def test_jobs_waiting_for_a_capability_no_node_has_are_not_failed_as_unknown(db):
    """A node that registers the type, whatever its capabilities, keeps its jobs pending (forge status
    reports them); only a type no node runs fails."""
    sweeper = node(db, ["noop"])  # capabilities {general}
    media = due_for(db, 3600, count=2)
    db.execute("UPDATE forge_jobs SET capability = 'media' WHERE id = ANY($1)", (media,))
    orphan = due_for(db, 3600, job_type="nobody_runs_me")
    assert fail_unknown(db, sweeper, grace_s=5) == set(orphan)
    statuses = db.execute("SELECT status FROM forge_jobs WHERE id = ANY($1)", (media,)).fetchall()
    assert statuses == [("pending",), ("pending",)]
    assert claim(db, uuid.uuid4()) == []  # the claim of a general node does not take them
