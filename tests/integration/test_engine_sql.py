"""engine.sql's statements run by hand on a real PostgreSQL: the claim rows that
let rescue find held jobs (forge_claims), and the schema rules that make a
completion a HOT update (migration 0003)."""

from __future__ import annotations

import json
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
    rows = db.execute(SQL["claim"], (limit, ["general"], owner, ["noop"], False), prepare=True).fetchall()
    return [(r[0], r[2], r[7]) for r in rows if r[0] is not None]  # nothing taken: one row of nulls


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


def _cleared_notices(database_url: str, owner: uuid.UUID, limit: int, tell: bool) -> list[dict]:
    """The cleared notices one claim of `limit` sends (announce.rs reads them), seen by a listener."""
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute("LISTEN forge_jobs")
        with psycopg.connect(database_url, autocommit=True, cursor_factory=psycopg.RawCursor) as conn:
            conn.execute(SQL["claim"], (limit, ["general"], owner, ["noop"], tell))
        return [json.loads(n.payload) for n in listener.notifies(timeout=0.5)]


def test_a_claim_that_took_less_than_it_asked_tells_peers_its_snapshot_when_asked_to(db, database_url):
    owner = uuid.uuid4()
    dispatch(db, 3)
    assert _cleared_notices(database_url, owner, 3, tell=True) == []  # full: more may be waiting
    dispatch(db, 2)
    assert _cleared_notices(database_url, owner, 3, tell=False) == []  # no peers
    [notice] = _cleared_notices(database_url, owner, 3, tell=True)  # empty, so less than asked
    assert (notice["k"], notice["o"]) == ("c", str(owner))
    xmin, xmax, _in_progress = notice["s"].split(":")
    assert int(xmin) <= int(xmax)
    now_ms = db.execute("SELECT floor(extract(epoch FROM now()) * 1000)::bigint").fetchone()[0]
    assert 0 <= now_ms - notice["at"] < 5_000


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

    assert rescue(db) == (0, 0, 2)  # claimed, never started
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
    assert rescue(db) == (0, 0, 1)


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
        assert rescue(db) == (1, 0, 0)


def start(db, owner: uuid.UUID, jobs: list[tuple]) -> int:
    ids, attempts = [j[0] for j in jobs], [j[1] for j in jobs]
    return len(db.execute(SQL["start"], (ids, attempts, owner, [0.0] * len(ids))).fetchall())  # started 0 ms ago


def rescue(db, max_crashes: int = 3) -> tuple:
    """(retried, failed, given back unstarted)."""
    return db.execute(SQL["rescue"], (60_000.0, max_crashes)).fetchone()


def job_state(db, job_id: int) -> tuple:
    return db.execute(
        "SELECT status, attempts, max_attempts, crashes, claimed_by IS NULL, failed_at IS NOT NULL,"
        " last_error->>'type', last_error->>'reason' FROM forge_jobs WHERE id = $1", (job_id,)).fetchone()


def test_rescue_charges_only_attempts_that_started(db):
    """A claimed job its node never started goes back with no crash and its run intact; the next claim
    still takes a new attempt number, so the lost owner's late reports can never match it."""
    dispatch(db, 2)
    dead = uuid.uuid4()
    ran, waited = claim(db, dead)
    assert start(db, dead, [ran]) == 1
    age_claims(db, 120)
    assert rescue(db) == (1, 0, 1)
    assert job_state(db, ran[0]) == ("retry", 1, 3, 1, True, False, "forge.errors.NodeLost", None)
    assert job_state(db, waited[0]) == ("retry", 1, 4, 0, True, False, None, None)
    [again] = [j for j in claim(db, uuid.uuid4()) if j[0] == waited[0]]
    assert again[1] == 2  # a new lease number
    late = db.execute(SQL["release"], ([waited[0]], [1], dead)).fetchall()
    assert late == []  # the dead owner's late hand-back is fenced


def test_rescue_fails_a_started_job_with_no_attempts_left_as_node_lost(db):
    [job] = dispatch(db, 1)
    db.execute("UPDATE forge_jobs SET max_attempts = 1 WHERE id = $1", (job,))
    dead = uuid.uuid4()
    jobs = claim(db, dead)
    start(db, dead, jobs)
    age_claims(db, 120)
    assert rescue(db) == (0, 1, 0)
    status, attempts, _, crashes, unowned, failed, error, reason = job_state(db, job)
    assert (status, attempts, crashes, unowned, failed, error, reason) == (
        "failed", 1, 1, False, True, "forge.errors.NodeLost", None)
    message = db.execute("SELECT last_error->>'message' FROM forge_jobs WHERE id = $1", (job,)).fetchone()[0]
    assert str(dead) in message and f"job {job}" in message


def test_rescue_fails_a_job_at_the_crash_cap_with_the_reason(db):
    [job] = dispatch(db, 1)
    db.execute("UPDATE forge_jobs SET crashes = 2 WHERE id = $1", (job,))  # two crashes before this one
    dead = uuid.uuid4()
    jobs = claim(db, dead)
    start(db, dead, jobs)
    age_claims(db, 120)
    assert rescue(db, max_crashes=3) == (0, 1, 0)
    assert job_state(db, job) == ("failed", 1, 3, 3, False, True, "forge.errors.NodeLost",
                                  "crashed 3 times (max_crashes 3)")


def heartbeat(db, owner: uuid.UUID, leases: list[tuple]) -> dict[int, bool]:
    """id -> renewed (False: its row was locked by another session) for each lease still held."""
    ids, attempts = [j[0] for j in leases], [j[1] for j in leases]
    rows = db.execute(SQL["heartbeat"], (ids, attempts, owner)).fetchall()
    for job_id, renewed, age_ms, _cancel in rows:  # a locked lease says how long ago it was last renewed
        assert (age_ms == 0) if renewed else (1000 <= age_ms < 60_000), (job_id, renewed, age_ms)
    return {job_id: renewed for job_id, renewed, _, _ in rows}


def test_the_heartbeat_skips_a_row_another_session_locked_and_keeps_it_held(db, database_url):
    dispatch(db, 3)
    owner = uuid.uuid4()
    jobs = claim(db, owner)
    start(db, owner, jobs)
    db.execute("UPDATE forge_jobs SET heartbeat_at = heartbeat_at - interval '1 second'")
    stale = (jobs[2][0], jobs[2][1] + 1)  # an attempt this owner no longer holds
    db.execute("SET statement_timeout = '2s'")  # waiting for the lock would fail the test
    with psycopg.connect(database_url) as other:
        other.execute("SELECT 1 FROM forge_jobs WHERE id = %s FOR UPDATE", (jobs[1][0],))
        assert heartbeat(db, owner, [jobs[0], jobs[1], stale]) == {jobs[0][0]: True, jobs[1][0]: False}
        # a rescuer that holds the row and then takes the job: held until it commits, then lost
        other.execute("UPDATE forge_jobs SET status = 'retry', claimed_by = NULL WHERE id = %s", (jobs[1][0],))
        assert heartbeat(db, owner, jobs[:2]) == {jobs[0][0]: True, jobs[1][0]: False}
        other.commit()
    assert heartbeat(db, owner, jobs[:2]) == {jobs[0][0]: True}


def node(db, job_types: list[str], seconds_ago: float = 0.0, stopped: bool = False) -> uuid.UUID:
    """A forge_nodes row running `job_types`, last heard of `seconds_ago` (and stopped then, if `stopped`)."""
    node_id = uuid.uuid4()
    db.execute(
        "INSERT INTO forge_nodes (id, hostname, pid, roles, capabilities, workers, job_types, heartbeat_at,"
        " stopped_at) VALUES ($1, 'h', 1, '{worker}', '{general}', 1, $2, now() - $3 * interval '1 second',"
        " CASE WHEN $4 THEN now() - $3 * interval '1 second' END)",
        (node_id, job_types, seconds_ago, stopped),
    )
    return node_id


def due_for(db, seconds: float, job_type: str = "noop", count: int = 1, priority: int = 2) -> list[int]:
    rows = db.execute(
        "INSERT INTO forge_jobs (job_type, input, priority, scheduled_at)"
        " SELECT $1, '{}', $2, now() - $3 * interval '1 second' FROM generate_series(1, $4) RETURNING id",
        (job_type, priority, seconds, count),
    ).fetchall()
    return [r[0] for r in rows]


def fail_unknown(db, sweeper: uuid.UUID, grace_s: float, timeout_s: float = 30.0) -> set[int]:
    rows = db.execute(SQL["fail_unknown_types"], (grace_s * 1000, timeout_s * 1000, sweeper)).fetchall()
    return {r[0] for r in rows}


def test_a_type_fails_only_once_no_node_has_run_it_for_the_grace(db):
    sweeper = node(db, ["other"])
    jobs = due_for(db, 3600, count=2)
    node(db, ["noop"], seconds_ago=10, stopped=True)
    assert fail_unknown(db, sweeper, grace_s=60) == set()  # its last node stopped 10 s ago
    assert fail_unknown(db, sweeper, grace_s=5) == set(jobs)
    error = db.execute("SELECT last_error FROM forge_jobs WHERE id = $1", (jobs[0],)).fetchone()[0]
    assert error["type"] == "forge.errors.UnknownJobType" and "'noop'" in error["message"]


def test_a_silent_node_runs_its_types_for_the_heartbeat_timeout_at_least(db):
    sweeper = node(db, ["other"])
    due_for(db, 3600)
    node(db, ["noop"], seconds_ago=40)  # not stopped: maybe only slow
    assert fail_unknown(db, sweeper, grace_s=5, timeout_s=60) == set()
    assert len(fail_unknown(db, sweeper, grace_s=5, timeout_s=30)) == 1


def test_a_job_waits_the_grace_too_and_a_stale_sweeper_judges_nothing(db):
    sweeper = node(db, ["other"])
    recent = due_for(db, 10, job_type="never_registered")
    old = due_for(db, 120, job_type="never_registered")
    stale = node(db, ["other"], seconds_ago=120)
    assert fail_unknown(db, stale, grace_s=60) == set()
    assert fail_unknown(db, sweeper, grace_s=60) == set(old)
    assert recent[0] not in fail_unknown(db, sweeper, grace_s=60)


def test_reaped_registrations_are_remembered_for_the_grace(db):
    sweeper = node(db, ["other"])
    jobs = due_for(db, 6 * 3600)
    gone = node(db, ["noop", "other"], seconds_ago=2 * 3600, stopped=True)
    assert [r[0] for r in db.execute(SQL["reap_nodes"], (HOUR_MS,)).fetchall()] == [gone]
    seen = dict(db.execute("SELECT job_type, extract(epoch FROM now() - seen_at) FROM forge_job_types").fetchall())
    assert set(seen) == {"noop", "other"} and 7190 < seen["noop"] < 7210
    assert fail_unknown(db, sweeper, grace_s=3 * 3600) == set()
    assert fail_unknown(db, sweeper, grace_s=3600) == set(jobs)
    # a later reap keeps the latest time a type was run
    node(db, ["noop"], seconds_ago=3 * 3600, stopped=True)
    db.execute(SQL["reap_nodes"], (HOUR_MS,))
    assert 7190 < db.execute("SELECT extract(epoch FROM now() - seen_at) FROM forge_job_types"
                             " WHERE job_type = 'noop'").fetchone()[0] < 7210


def test_a_backlog_of_a_running_type_does_not_hide_an_orphan_of_another_priority(db):
    sweeper = node(db, ["noop", "other"])
    due_for(db, 3600, count=3000, priority=0)  # more than the window of a priority
    orphan = due_for(db, 3600, job_type="never_registered", priority=3)
    assert fail_unknown(db, sweeper, grace_s=60) == set(orphan)


def log_lines(db, owner: uuid.UUID, lines: list[tuple]) -> int:
    """Writes (id, attempt, message) lines as the core does; how many were stored."""
    n = len(lines)
    args = ([line[0] for line in lines], [line[1] for line in lines], ["info"] * n, [line[2] for line in lines],
            ['{"k": 1}'] * n, [0.0] * n, owner)
    return db.execute(SQL["log_lines"], args).fetchone()[0]


def test_log_lines_are_stored_in_order_only_for_the_attempt_their_owner_holds(db):
    owner, other = uuid.uuid4(), uuid.uuid4()
    dispatch(db, 3)
    (a, attempt, _), (b, _, _) = claim(db, owner, limit=2)
    sent = [(a, attempt, "first"), (b, attempt, "of b"), (a, attempt + 1, "another attempt"), (a, attempt, "second")]
    assert log_lines(db, owner, sent) == 3
    assert log_lines(db, other, [(a, attempt, "not the owner")]) == 0
    complete(db, owner, [(b, attempt)])
    assert log_lines(db, owner, [(b, attempt, "after its end")]) == 0
    rows = db.execute("SELECT job_id, attempt, level, message, fields FROM forge_job_logs ORDER BY id").fetchall()
    assert rows == [(a, 1, "info", "first", {"k": 1}), (b, 1, "info", "of b", {"k": 1}),
                    (a, 1, "info", "second", {"k": 1})]
    assert job_state(db, a)[0] == "claimed"  # the job's row is only read
