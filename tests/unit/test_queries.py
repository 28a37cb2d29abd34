"""forge.db.queries: named SQL blocks."""

import pytest

from forge.db.queries import load_queries, parse_queries

TEXT = """\
-- File header, ignored.

-- name: first
-- Why the first exists.
-- More why.
SELECT 1;

-- name: second
UPDATE t
SET a = 1 -- inline comment stays
WHERE b = 2;
"""


def test_parse_queries_splits_blocks_and_drops_leading_comments():
    queries = parse_queries(TEXT)
    assert queries == {
        "first": "SELECT 1",
        "second": "UPDATE t\nSET a = 1 -- inline comment stays\nWHERE b = 2",
    }


def test_duplicate_name_is_an_error():
    with pytest.raises(ValueError, match="'first' is defined twice"):
        parse_queries("-- name: first\nSELECT 1;\n-- name: first\nSELECT 2;\n", source="x.sql")


def test_empty_block_is_an_error():
    with pytest.raises(ValueError, match="'empty' has no statement"):
        parse_queries("-- name: empty\n-- only a comment\n-- name: ok\nSELECT 1;\n")


def test_load_queries_reads_package_files_once():
    queries = load_queries("migrate.sql")
    assert {"lock", "create_table", "applied", "record", "table_exists"} <= set(queries)
    assert not queries["lock"].endswith(";")
    assert load_queries("migrate.sql") is queries
    assert "claim" in load_queries("engine.sql")
