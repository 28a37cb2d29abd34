"""Named SQL statements read from the package's .sql files, once per file.

A .sql file holds blocks: a line `-- name: NAME`, then comment lines saying
why the statement exists, then the statement itself up to the next block.
Lines before the first block are the file's header and are ignored. The
trailing `;` of a statement is stripped, so drivers get a single statement.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from types import MappingProxyType
from collections.abc import Mapping

__all__ = ["SQL_DIR", "load_queries", "parse_queries"]

SQL_DIR = Path(__file__).parent / "sql"

_NAME_LINE = re.compile(r"^--\s*name:\s*(\S+)\s*$")


def parse_queries(text: str, *, source: str = "<sql>") -> dict[str, str]:
    """Split `text` into {name: statement}; ValueError on a duplicate or empty block."""
    queries: dict[str, str] = {}
    name: str | None = None
    body: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        match = _NAME_LINE.match(line.strip())
        if match:
            _store(queries, name, body, source)
            name, body = match.group(1), []
            if name in queries:
                raise ValueError(f"{source}:{number}: query {name!r} is defined twice")
        elif name is not None and (body or not line.lstrip().startswith("--")):
            body.append(line)
    _store(queries, name, body, source)
    return queries


def _store(queries: dict[str, str], name: str | None, body: list[str], source: str) -> None:
    if name is None:
        return
    statement = "\n".join(body).strip().removesuffix(";").rstrip()
    if not statement:
        raise ValueError(f"{source}: query {name!r} has no statement")
    queries[name] = statement


@functools.cache
def load_queries(filename: str) -> Mapping[str, str]:
    """The named statements of `forge/db/sql/<filename>` (read-only, cached per file)."""
    path = SQL_DIR / filename
    return MappingProxyType(parse_queries(path.read_text(encoding="utf-8"), source=str(path)))
