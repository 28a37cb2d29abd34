"""Schema migrations: the numbered files forge/db/migrations/NNNN_name.sql.

migrate() applies the pending ones in version order, all in one transaction
under a transaction-level advisory lock, and records each in forge_migrations.
Running it again, or from two processes at once, applies nothing twice. The
applying is done by the Rust core (forge._core.migrate), so the supervisor
reaches its first claim without loading psycopg; pending() only reads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from forge import _core
from forge.db.queries import load_queries
from forge.errors import DatabaseError

if TYPE_CHECKING:
    import psycopg

__all__ = ["MIGRATIONS_DIR", "Migration", "available", "migrate", "pending"]

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

_FILE_NAME = re.compile(r"^(\d{4})_(\w+)\.sql$")


@dataclass(frozen=True)
class Migration:
    """One migration file: its version number, name and path."""

    version: int
    name: str
    path: Path

    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")


def available(folder: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Every migration file in `folder`, by version; DatabaseError on a duplicate version or a stray .sql file."""
    found: dict[int, Migration] = {}
    for path in sorted(folder.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise DatabaseError(f"migration file {path} is not named NNNN_name.sql")
        version = int(match.group(1))
        if version in found:
            raise DatabaseError(f"migrations {found[version].path.name} and {path.name} share version {version}")
        found[version] = Migration(version, match.group(2), path)
    return [found[v] for v in sorted(found)]


def pending(conn: psycopg.Connection, folder: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Migrations not yet applied to the database of `conn` (reads only; creates nothing)."""
    queries = load_queries("migrate.sql")
    (exists,) = conn.execute(queries["table_exists"]).fetchone()  # type: ignore[misc]
    done = {row[0] for row in conn.execute(queries["applied"])} if exists else set()
    return [m for m in available(folder) if m.version not in done]


def migrate(url: str, folder: Path = MIGRATIONS_DIR) -> list[int]:
    """Apply pending migrations in one locked transaction; return the versions applied (empty if none)."""
    migrations = [(m.version, m.name, m.path.name, m.sql()) for m in available(folder)]
    try:
        return _core.migrate(url, migrations)
    except (ConnectionError, RuntimeError) as exc:
        raise DatabaseError(" ".join(str(exc).split())) from exc
