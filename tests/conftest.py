"""Shared fixtures: one throwaway PostgreSQL per test session, a database per test.

    pg_cluster          (session)  a started EmbeddedPostgres (fsync off) in a temp folder
    template_db         (session)  name of a database with every migration applied (a template)
    database_url        (function) URL of a fresh database cloned from template_db, dropped after
    empty_database_url  (function) URL of a fresh database with no schema at all, dropped after
    conn                (function) an autocommit psycopg connection to database_url

Nothing here touches any other PostgreSQL server.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from forge.db.embedded import EmbeddedPostgres, create_database, drop_database
from forge.db.migrate import migrate


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[EmbeddedPostgres]:
    """A non-durable cluster under a short /tmp path; stopped and deleted at session end."""
    folder = Path(tempfile.mkdtemp(prefix="forge-pg-"))
    cluster = EmbeddedPostgres(folder / "pg", durable=False)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def template_db(pg_cluster: EmbeddedPostgres) -> Iterator[str]:
    """A migrated database marked IS_TEMPLATE and closed to connections, so CREATE DATABASE ... TEMPLATE never
    finds a session on it."""
    admin_url = pg_cluster.url
    assert admin_url is not None
    name = _unique("forge_template")
    url = create_database(admin_url, name)
    migrate(url)  # connects, applies, closes
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false").format(sql.Identifier(name))
        )
    yield name
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE false").format(sql.Identifier(name)))
    drop_database(admin_url, name)


@pytest.fixture
def database_url(pg_cluster: EmbeddedPostgres, template_db: str) -> Iterator[str]:
    """A fresh, fully migrated database for this test only (dropped WITH (FORCE) afterwards)."""
    admin_url = pg_cluster.url
    assert admin_url is not None
    name = _unique("forge_test")
    url = create_database(admin_url, name, template=template_db)
    try:
        yield url
    finally:
        drop_database(admin_url, name)


@pytest.fixture
def empty_database_url(pg_cluster: EmbeddedPostgres) -> Iterator[str]:
    """A fresh database with no Forge schema, for migration tests."""
    admin_url = pg_cluster.url
    assert admin_url is not None
    name = _unique("forge_empty")
    url = create_database(admin_url, name)
    try:
        yield url
    finally:
        drop_database(admin_url, name)


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to this test's database."""
    with psycopg.connect(database_url, autocommit=True) as connection:
        yield connection


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow",
        action="store_true",
        default=False,
        help="also run the long fault and load tiers (tests marked slow; or FORGE_RUN_SLOW=1)",
    )
