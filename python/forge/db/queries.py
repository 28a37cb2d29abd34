"""Named SQL statements read from the package's .sql files, once per file.

A .sql file holds blocks: a line `-- name: NAME`, then comment lines saying
why the statement exists, then the statement itself up to the next block.
Lines before the first block are the file's header and are ignored; so are
comment lines after a statement, and its trailing `;`, so drivers get a single
statement. The format has one parser, the Rust core's (rust/src/sql.rs), which
also compiles engine.sql and migrate.sql into the core.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from forge import _core

__all__ = ["SQL_DIR", "load_queries", "parse_queries"]

SQL_DIR = Path(__file__).parent / "sql"


def parse_queries(text: str, *, source: str = "<sql>") -> dict[str, str]:
    """Split `text` into {name: statement}; ValueError on a duplicate or empty block, naming `source`."""
    return _core.parse_sql(text, source)


@functools.cache
def load_queries(filename: str) -> Mapping[str, str]:
    """The named statements of `forge/db/sql/<filename>` (read-only, cached per file)."""
    path = SQL_DIR / filename
    return MappingProxyType(parse_queries(path.read_text(encoding="utf-8"), source=str(path)))
