"""engine.sql's statements run by hand on a real PostgreSQL: the claim rows that
let rescue find held jobs (forge_claims), and the schema rules that make a
completion a HOT update (migration 0003)."""

from __future__ import annotations

import shutil
import uuid

import psycopg
import pytest

from forge._core import planner_options
from forge.db.migrate import MIGRATIONS_DIR, migrate
from forge.db.queries import load_queries

SQL = load_queries("engine.sql")
# The core's planner settings (rust/src/session.rs), so the plans are the core's.
SESSION = planner_options("main")
HOUR_MS = 3_600_000.0


@pytest.fixture
def db(database_url):
    # engine.sql's placeholders are $1...: a raw cursor passes them through.
    with psycopg.connect(database_url, autocommit=True, options=SESSION, cursor_factory=psycopg.RawCursor) as conn:
        yield conn


def dispatch(db, count: int) -> list[int]:
    rows = db.execute(
        "INSERT INTO forge_jobs (job_type, input) SELECT 'noop', '{}' FROM generate_series(1, $1) RETURNING id",
        (count,),
    ).fetchall()
    return [r[0] for r in rows]


def claim(db, owner: uuid.UUID, limit: int = 100) -> list[tuple]:
    """(id, attempt, claim_id) of each job the claim statement took."""
    rows = db.execute(SQL["claim"], (limit, ["general"], owner, ["noop"]), prepare=True).fetchall()
    return [(r[0], r[2], r[7]) for r in rows]


def complete(db, owner: uuid.UUID, jobs: list[tuple]) -> int:
    ids, attempts = [j[0] for j in jobs], [j[1] for j in jobs]
    nothing, now = [None] * len(ids), [0.0] * len(ids)  # no result; started and ended 0 ms ago
    return len(db.execute(SQL["complete"], (ids, attempts, nothing, owner, nothing, now)).fetchall())


def close(db, owner: uuid.UUID, claim_ids: list[int]) -> list[int]:
    return [r[0] for r in db.execute(SQL["close_claims"], (claim_ids, owner)).fetchall()]


def claim_rows(db) -> list[tuple]:
    return db.execute("SELECT id, owner, job_ids FROM forge_claims ORDER BY id").fetchall()


def age_claims(db, seconds: int) -> None:
    """Moves every lease and claim row back in time, as if the owner went silent."""
    db.execute("UPDATE forge_claims SET claimed_at = claimed_at - $1 * interval '1 second'", (seconds,))
    db.execute(
        "UPDATE forge_jobs SET heartbeat_at = heartbeat_at - $1 * interval '1 second'"
        " WHERE status IN ('claimed', 'running')",
        (seconds,),
    )


def test_a_claim_records_its_jobs_in_one_claim_row_of_its_owner(db):
    dispatch(db, 5)
    owner = uuid.uuid4()
    jobs = claim(db, owner)
    assert len(jobs) == 5
    assert len({j[2] for j in jobs}) == 1
    [(claim_id, row_owner, job_ids)] = claim_rows(db)
    assert (claim_id, row_owner, sorted(job_ids)) == (jobs[0][2], owner, sorted(j[0] for j in jobs))
    assert claim(db, owner) == []  # an empty claim writes no row
    assert len(claim_rows(db)) == 1


def test_a_claim_row_is_closed_only_when_none_of_its_jobs_is_held(db):
    dispatch(db, 3)
    owner = uuid.uuid4()
    jobs = claim(db, owner)
    claim_id = jobs[0][2]
    assert complete(db, owner, jobs[:2]) == 2
    assert close(db, owner, [claim_id]) == []  # one job still held: kept
    assert close(db, uuid.uuid4(), [claim_id]) == []  # another owner's close: kept
    assert complete(db, owner, jobs[2:]) == 1
    assert close(db, owner, [claim_id]) == [claim_id]
    assert claim_rows(db) == []


def test_rescue_finds_expired_leases_through_claim_rows_then_the_rows_are_pruned(db):
    dispatch(db, 4)
    dead, live = uuid.uuid4(), uuid.uuid4()
    lost = claim(db, dead, limit=3)
    age_claims(db, 120)
    kept = claim(db, live)  # fresh lease: not rescued
    assert complete(db, dead, lost[:1]) == 1  # ended before its node died

    # a node with claim rows is never reaped, however silent
    db.execute(
        "INSERT INTO forge_nodes (id, hostname, pid, roles, capabilities, workers, heartbeat_at)"
        " VALUES ($1, 'h', 1, '{worker}', '{general}', 1, now() - interval '3 hours')",
        (dead,),
    )
    assert db.execute(SQL["reap_nodes"], (HOUR_MS,)).fetchall() == []

    retried, failed = db.execute(SQL["rescue"], (60_000.0, 3)).fetchone()
    assert (retried, failed) == (2, 0)
    statuses = dict(db.execute("SELECT id, status FROM forge_jobs").fetchall())
    assert [statuses[j[0]] for j in lost] == ["completed", "retry", "retry"]
    assert statuses[kept[0][0]] == "claimed"

    pruned = [r[0] for r in db.execute(SQL["prune_claims"], (60_000.0,)).fetchall()]
    assert pruned == [lost[0][2]]  # the live node's row is too young and still held
    assert [r[1] for r in claim_rows(db)] == [live]
    assert [r[0] for r in db.execute(SQL["reap_nodes"], (HOUR_MS,)).fetchall()] == [dead]


def test_a_job_claimed_again_is_listed_in_both_claim_rows_and_rescued_once(db):
    dispatch(db, 1)
    owner = uuid.uuid4()
    [first] = claim(db, owner)
    released = db.execute(SQL["release"], ([first[0]], [first[1]], owner)).fetchall()
    assert len(released) == 1
    [second] = claim(db, owner)
    assert second[0] == first[0] and second[2] != first[2]
    assert close(db, owner, [first[2]]) == []  # the job is held again
    age_claims(db, 120)
    assert db.execute(SQL["rescue"], (60_000.0, 3)).fetchone() == (1, 0)


def test_completing_a_job_is_a_hot_update(db):
    """No index may look at a column a completion writes: a new index that does
    turns every completion back into a new primary-key entry (migration 0003)."""
    dispatch(db, 20)
    owner = uuid.uuid4()
    jobs = claim(db, owner)
    counts = (
        "SELECT pg_stat_get_xact_tuples_hot_updated(c.oid), pg_stat_get_xact_tuples_updated(c.oid)"
        " FROM pg_class c WHERE c.relname = 'forge_jobs'"
    )
    with db.transaction():  # the counts are this backend's, not yet flushed: compare before and after
        hot_before, updated_before = db.execute(counts).fetchone()
        assert complete(db, owner, jobs) == 20
        hot_after, updated_after = db.execute(counts).fetchone()
    hot, updated = hot_after - hot_before, updated_after - updated_before
    assert (hot, updated) == (20, 20)


@pytest.mark.parametrize(
    "change",
    [
        "status = 'completed', claimed_by = NULL",  # finished, yet claimable
        "claimed_by = gen_random_uuid()",  # pending, yet held by a node
        "failed_at = now()",  # pending, yet out of the claimable index
    ],
)
def test_the_database_ties_claimability_to_status(db, change):
    [job] = dispatch(db, 1)
    with pytest.raises(psycopg.errors.CheckViolation, match="forge_jobs_claimable_valid"):
        db.execute(f"UPDATE forge_jobs SET {change} WHERE id = $1", (job,))


def test_migration_0003_gives_jobs_held_before_it_their_claim_rows(empty_database_url, tmp_path):
    """A job claimed under 0002 (no forge_claims) must still be found by rescue once 0003 is applied."""
    before = tmp_path / "migrations"
    before.mkdir()
    for path in sorted(MIGRATIONS_DIR.glob("000[12]_*.sql")):
        shutil.copy(path, before / path.name)
    assert migrate(empty_database_url, before) == [1, 2]
    owner = uuid.uuid4()
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        held = conn.execute(
            "INSERT INTO forge_jobs (job_type, input, status, attempts, claimed_by, claimed_at, heartbeat_at)"
            " VALUES ('noop', '{}', 'running', 1, %s, now() - interval '2 minutes', now() - interval '2 minutes')"
            " RETURNING id",
            (owner,),
        ).fetchone()[0]
    assert 3 in migrate(empty_database_url)
    with psycopg.connect(empty_database_url, autocommit=True, options=SESSION, cursor_factory=psycopg.RawCursor) as db:
        assert [(r[1], r[2]) for r in claim_rows(db)] == [(owner, [held])]
        assert db.execute(SQL["rescue"], (60_000.0, 3)).fetchone() == (1, 0)
