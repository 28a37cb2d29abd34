"""The retention statements of engine.sql run by hand on a real PostgreSQL: prune_finished (the walk of the
primary key that deletes completed, cancelled and discarded rows past [retention]) and dead_letter with a
job's own dead_letter_after."""

from __future__ import annotations

import uuid

import psycopg
import pytest

import forge
from forge._core import planner_options
from forge.db.queries import load_queries
from forge.status import read_status

SQL = load_queries("engine.sql")
SESSION = planner_options("maintenance")
HOUR_MS = 3_600_000.0
OWNER = uuid.uuid4()


@pytest.fixture
def db(database_url):
    with psycopg.connect(database_url, autocommit=True, options=SESSION, cursor_factory=psycopg.RawCursor) as conn:
        yield conn


def insert(db, status: str, *, age_s: float = 0.0, count: int = 1, created_age_s: float | None = None) -> list[int]:
    """`count` rows in `status`, ended `age_s` seconds ago (completed_at, or failed_at for the others that
    are not claimable, and cancelled_at or discarded_at) and created `created_age_s` ago (default: when they ended)."""
    ended = "now() - $2 * interval '1 second'"
    created = "now() - $3 * interval '1 second'"
    columns = {
        "pending": ("NULL", "NULL", "NULL"),
        "completed": (f"'{OWNER}'", ended, "NULL"),
        "running": (f"'{OWNER}'", "NULL", "NULL"),
    }.get(status, ("NULL", "NULL", ended))
    claimed_by, completed_at, failed_at = columns
    rows = db.execute(
        "INSERT INTO forge_jobs (job_type, input, status, claimed_by, completed_at, failed_at, created_at,"
        "                        dead_lettered_at, cancelled_at, discarded_at)"
        f" SELECT 'noop', '{{}}', $1, {claimed_by}::uuid, {completed_at}, {failed_at}, {created},"
        f"        CASE WHEN $1 = 'dead_letter' THEN {ended} END,"
        f"        CASE WHEN $1 = 'cancelled' THEN {ended} END, CASE WHEN $1 = 'discarded' THEN {ended} END"
        " FROM generate_series(1, $4) RETURNING id",
        (status, age_s, age_s if created_age_s is None else created_age_s, count),
    ).fetchall()
    return [r[0] for r in rows]


def prune(db, after: int = 0, *, completed=HOUR_MS, cancelled=HOUR_MS, discarded=HOUR_MS, shortest=None):
    """One window of prune_finished: (completed, cancelled, discarded, last_id, walked_all)."""
    kept = [ms for ms in (completed, cancelled, discarded) if ms is not None]
    shortest = min(kept) if shortest is None else shortest
    return db.execute(SQL["prune_finished"], (after, completed, cancelled, discarded, shortest)).fetchone()


def existing(db, ids: list[int]) -> list[int]:
    return [r[0] for r in db.execute("SELECT id FROM forge_jobs WHERE id = ANY($1) ORDER BY id", (ids,))]


def test_rows_past_their_retention_are_deleted_and_every_other_row_is_kept(db):
    old = {s: insert(db, s, age_s=7200) for s in ("completed", "cancelled", "discarded")}
    fresh = {s: insert(db, s, age_s=60, created_age_s=7200) for s in ("completed", "cancelled", "discarded")}
    others = [*insert(db, "pending", created_age_s=7200), *insert(db, "running", created_age_s=7200),
              *insert(db, "failed", age_s=7200), *insert(db, "dead_letter", age_s=7200)]
    deleted = prune(db)
    assert deleted[:3] == (1, 1, 1)
    assert deleted[4] is True  # a short window: the end of the table
    assert existing(db, [i for ids in old.values() for i in ids]) == []
    kept = sorted([*others, *(i for ids in fresh.values() for i in ids)])
    assert existing(db, kept) == kept


def test_forever_keeps_a_status_and_the_others_are_still_pruned(db):
    completed, cancelled = insert(db, "completed", age_s=7200), insert(db, "cancelled", age_s=7200)
    assert prune(db, completed=None)[:3] == (0, 1, 0)
    assert existing(db, completed + cancelled) == completed


def test_the_walk_goes_window_by_window_and_ends_at_the_end_of_the_table(db):
    ids = insert(db, "pending", count=2500, created_age_s=7200)
    first = prune(db)
    assert first[3:] == (ids[999], False)
    second = prune(db, first[3])
    assert second[3:] == (ids[1999], False)
    assert prune(db, second[3])[3:] == (ids[-1], True)


def test_the_walk_ends_where_rows_are_younger_than_the_shortest_retention(db):
    # 1,500 rows created now: none can be an hour past its end, so the first window ends the walk.
    insert(db, "completed", count=1500)
    assert prune(db)[4] is True
    assert prune(db, shortest=0.0)[4] is False


def test_prune_never_locks_nor_waits_for_claimable_or_locked_rows(db, database_url):
    pending = insert(db, "pending", count=10, created_age_s=7200)
    expired = insert(db, "completed", age_s=7200, count=3)
    connect = dict(options=SESSION, cursor_factory=psycopg.RawCursor)
    with psycopg.connect(database_url) as other, psycopg.connect(database_url, **connect) as sweeper, \
            psycopg.connect(database_url, autocommit=True) as third:
        other.execute("SELECT id FROM forge_jobs WHERE id = %s FOR UPDATE", (expired[0],))
        sweeper.execute("SET lock_timeout = '2s'")
        assert prune(sweeper)[0] == 2  # the row `other` holds is skipped, not waited for
        # The sweeper's transaction is still open: it holds the rows it deleted, and no pending row.
        third.execute("SELECT id FROM forge_jobs WHERE id = ANY(%s) FOR UPDATE NOWAIT", (pending,))
        with pytest.raises(psycopg.errors.LockNotAvailable):
            third.execute("SELECT id FROM forge_jobs WHERE id = %s FOR UPDATE NOWAIT", (expired[1],))
        sweeper.commit()
    assert existing(db, expired) == [expired[0]]


def dead_letter_after(db, ids: list[int], seconds: float) -> None:
    db.execute("UPDATE forge_jobs SET dead_letter_after = $2 * interval '1 second' WHERE id = ANY($1)",
               (ids, seconds))


def statuses(db, ids: list[int]) -> list[str]:
    return [r[0] for r in db.execute("SELECT status FROM forge_jobs WHERE id = ANY($1) ORDER BY id", (ids,))]


def test_dead_letter_honours_a_jobs_own_dead_letter_after_over_the_default(db):
    default = insert(db, "failed", age_s=60)
    at_once = insert(db, "failed", age_s=60)
    waits = insert(db, "failed", age_s=60)
    dead_letter_after(db, at_once, 0)
    dead_letter_after(db, waits, 3600)
    moved = db.execute(SQL["dead_letter"], (HOUR_MS,)).fetchall()
    assert [r[0] for r in moved] == at_once
    assert statuses(db, default + at_once + waits) == ["failed", "dead_letter", "failed"]
    moved = db.execute(SQL["dead_letter"], (0.0,)).fetchall()  # a default of 0: at the next sweep
    assert [r[0] for r in moved] == default
    assert statuses(db, waits) == ["failed"]


def rows_passed_over(db, name: str, *params) -> int:
    """How many rows statement `name` read and then left (the plan's Rows Removed by Filter, over every node),
    run under EXPLAIN ANALYZE and rolled back."""
    def removed(node: dict) -> int:
        return node.get("Rows Removed by Filter", 0) + sum(removed(child) for child in node.get("Plans", []))

    with db.transaction(force_rollback=True):
        ((plan,),) = db.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {SQL[name]}", params).fetchall()
    return removed(plan[0]["Plan"])


def test_discarded_failures_are_not_walked_by_the_dead_letter_sweeps(db):
    # Failed and dead-lettered jobs discarded by hand (forge.Jobs: 'discarded', failed_at and
    # dead_lettered_at kept) are no longer theirs to move or prune: they must not stay in those sweeps' partial
    # indexes, else every sweep on every node reads each of them again until retention prunes it (7 days).
    discarded = insert(db, "failed", age_s=7200, count=500) + insert(db, "dead_letter", age_s=7200, count=500)
    dead_letter_after(db, discarded[:100], 60)  # some with their own dead_letter_after (0006's index)
    db.execute("UPDATE forge_jobs SET dead_letter_retain = interval '1 minute' WHERE id = ANY($1)",
               (discarded[500:600],))  # and some with their own dead_letter_retain
    assert forge.Jobs(db).discard(*discarded) == 1000
    failed = insert(db, "failed", age_s=60)
    db.execute("ANALYZE forge_jobs")
    counted = read_status(db, heartbeat_timeout=30).by_status
    assert (counted["failed"], counted["dead_letter"], counted["discarded"]) == (1, 0, 1000)
    assert rows_passed_over(db, "dead_letter", 0.0) == 0
    assert rows_passed_over(db, "prune_dead_letters", 0.0) == 0
    assert [r[0] for r in db.execute(SQL["dead_letter"], (0.0,)).fetchall()] == failed
    assert db.execute(SQL["prune_dead_letters"], (0.0,)).fetchall() == [(1,)]  # the one just moved
    assert existing(db, failed) == [] and set(statuses(db, discarded)) == {"discarded"}


def test_a_pruned_job_takes_its_log_lines_along(db):
    old, kept = insert(db, "completed", age_s=7200), insert(db, "completed")
    dead = insert(db, "dead_letter", age_s=7200)
    for job_id in old + kept + dead:
        db.execute("INSERT INTO forge_job_logs (job_id, attempt, level, message) VALUES ($1, 1, 'info', 'x'),"
                   " ($1, 1, 'info', 'y')", (job_id,))
    assert prune(db)[0] == 1
    assert db.execute(SQL["prune_dead_letters"], (HOUR_MS,)).fetchone() == (1,)
    left = db.execute("SELECT DISTINCT job_id FROM forge_job_logs").fetchall()
    assert left == [(kept[0],)]
