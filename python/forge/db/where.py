"""Where a database URL points, for messages and logs: host:port/dbname, never its user or password."""

from __future__ import annotations

__all__ = ["where"]


def where(url: str) -> str:
    """host:port/dbname of `url` (a URL or key=value string), never its credentials."""
    from psycopg.conninfo import conninfo_to_dict  # lazily: the supervisor reaches here after its zygote is forked

    try:
        parts = conninfo_to_dict(url)
    except Exception:  # only for a message: an unparseable URL fails (or failed) to connect anyway
        return "(unparseable URL)"
    return f"{parts.get('host', 'localhost')}:{parts.get('port', 5432)}/{parts.get('dbname', '')}"
