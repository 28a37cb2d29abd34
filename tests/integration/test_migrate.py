"""forge.db.migrate against a real PostgreSQL: applies all, once, atomically, without racing."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import psycopg
import pytest

from forge.db.migrate import MIGRATIONS_DIR, available, migrate, pending
from forge.errors import DatabaseError, SchemaTooNew

ALL_VERSIONS = [m.version for m in available()]

# Columns the spec's features need (status, priority, retries, schedule,
# progress, results, fan-out, idempotency, capabilities, DLQ, cron).
JOB_COLUMNS = {
    "id", "job_type", "status", "priority", "input", "result", "attempts", "max_attempts",
    "crashes", "scheduled_at", "created_at", "claimed_at", "started_at", "completed_at",
    "failed_at", "dead_lettered_at", "heartbeat_at", "claimed_by", "last_error", "progress",
    "progress_message", "parent_id", "idempotency_key", "capability", "resources",
    "dead_letter_retain", "cron_name", "cron_tick",
}


def columns(conn: psycopg.Connection, table: str) -> set[str]:
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = %s", (table,)
    ).fetchall()
    return {r[0] for r in rows}


def table_exists(conn: psycopg.Connection, table: str) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0]


def test_migration_files_are_numbered_from_one_without_gaps():
    assert ALL_VERSIONS == list(range(1, len(ALL_VERSIONS) + 1))


def test_applies_every_migration_to_an_empty_database(empty_database_url):
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        assert [m.version for m in pending(conn)] == ALL_VERSIONS
        assert not table_exists(conn, "forge_migrations")  # pending() only reads

    assert migrate(empty_database_url) == ALL_VERSIONS

    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        assert pending(conn) == []
        rows = conn.execute("SELECT version, name FROM forge_migrations ORDER BY version").fetchall()
        assert rows == [(m.version, m.name) for m in available()]
        assert JOB_COLUMNS <= columns(conn, "forge_jobs")
        assert {"id", "hostname", "roles", "capabilities", "heartbeat_at"} <= columns(conn, "forge_nodes")
        assert {"job_id", "attempt", "level", "message"} <= columns(conn, "forge_job_logs")


def test_is_idempotent(empty_database_url):
    assert migrate(empty_database_url) == ALL_VERSIONS
    assert migrate(empty_database_url) == []
    assert migrate(empty_database_url) == []
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM forge_migrations").fetchone()[0] == len(ALL_VERSIONS)


def test_template_clone_is_fully_migrated(conn, database_url):
    assert pending(conn) == []
    assert migrate(database_url) == []
    assert JOB_COLUMNS <= columns(conn, "forge_jobs")


def test_concurrent_migrators_apply_once(empty_database_url):
    count = 4
    barrier = threading.Barrier(count)
    results: list[list[int]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait(timeout=10)
            results.append(migrate(empty_database_url))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert errors == []
    assert sorted(results) == [[]] * (count - 1) + [ALL_VERSIONS]
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM forge_migrations").fetchone()[0] == len(ALL_VERSIONS)
        tables = conn.execute("SELECT count(*) FROM pg_class WHERE relname = 'forge_jobs'").fetchone()[0]
        assert tables == 1


def test_a_failing_migration_applies_nothing(empty_database_url, tmp_path):
    folder = tmp_path / "migrations"
    folder.mkdir()
    shutil.copy(MIGRATIONS_DIR / "0001_jobs.sql", folder / "0001_jobs.sql")
    (folder / "0002_broken.sql").write_text("CREATE TABLE forge_extra (id int);\nSELECT no_such_function();\n")

    with pytest.raises(DatabaseError, match="0002_broken.sql"):
        migrate(empty_database_url, folder)

    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        assert not table_exists(conn, "forge_migrations")
        assert not table_exists(conn, "forge_jobs")
        assert not table_exists(conn, "forge_extra")


def test_later_migrations_are_applied_on_top(empty_database_url, tmp_path):
    folder = tmp_path / "migrations"
    folder.mkdir()
    shutil.copy(MIGRATIONS_DIR / "0001_jobs.sql", folder / "0001_jobs.sql")
    assert migrate(empty_database_url, folder) == [1]
    (folder / "0002_extra.sql").write_text("CREATE TABLE forge_extra (id int);")
    assert migrate(empty_database_url, folder) == [2]
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        assert table_exists(conn, "forge_extra")


@pytest.mark.parametrize(
    ("names", "message"),
    [(["0001_a.sql", "0001_b.sql"], "share version 1"), (["1_a.sql"], "not named NNNN_name.sql")],
)
def test_bad_migration_folders_are_refused(tmp_path: Path, names, message):
    for name in names:
        (tmp_path / name).write_text("SELECT 1;")
    with pytest.raises(DatabaseError, match=message):
        available(tmp_path)


def test_an_unreachable_database_is_named_in_the_error():
    with pytest.raises(DatabaseError, match="cannot connect to the database to migrate it"):
        migrate("postgresql://postgres@127.0.0.1:1/nowhere")


def _mark_applied_by_a_newer_forge(url: str, version: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO forge_migrations (version, name) VALUES (%s, 'from_a_newer_forge')", (version,))


def test_a_schema_newer_than_the_code_is_refused_and_left_alone(empty_database_url):
    migrate(empty_database_url)
    newer = ALL_VERSIONS[-1] + 2
    _mark_applied_by_a_newer_forge(empty_database_url, newer)
    with pytest.raises(SchemaTooNew) as refused:
        migrate(empty_database_url)
    assert isinstance(refused.value, DatabaseError)
    assert f"migration(s) {newer:04d} that this version does not know (it knows up to {ALL_VERSIONS[-1]:04d})" \
        in str(refused.value)
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        assert [v for (v,) in conn.execute("SELECT version FROM forge_migrations ORDER BY version")] \
            == [*ALL_VERSIONS, newer]


def test_pending_migrations_are_not_applied_on_a_schema_newer_than_the_code(empty_database_url, tmp_path):
    """Old code missing a migration it knows, on a database a newer Forge also migrated: nothing is applied."""
    migrate(empty_database_url)
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute("DELETE FROM forge_migrations WHERE version = %s", (ALL_VERSIONS[-1],))
    _mark_applied_by_a_newer_forge(empty_database_url, ALL_VERSIONS[-1] + 1)
    with pytest.raises(SchemaTooNew):
        migrate(empty_database_url)
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM forge_migrations WHERE version = %s",
                            (ALL_VERSIONS[-1],)).fetchone() == (0,)
