"""Node registration: each supervisor run announces itself in forge_nodes.

The node id is new at every start and is the lease owner (claimed_by) of
every job the run claims, so a restarted supervisor never mistakes an old
run's jobs for its own.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any

import psycopg

from ..config import NodeConfig
from ..db.queries import load_queries

_SQL = load_queries("nodes.sql")


def new_node_id() -> uuid.UUID:
    return uuid.uuid4()


def register(dsn: str, node_id: uuid.UUID, node: NodeConfig, job_types: list[str]) -> None:
    """Insert this run's row."""
    _execute(
        dsn,
        "register_node",
        (
            node_id,
            socket.gethostname(),
            os.getpid(),
            list(node.roles),
            list(node.worker_capabilities),
            node.workers,
            sorted(job_types),
        ),
    )


def mark_stopped(dsn: str, node_id: uuid.UUID) -> bool:
    """Record a clean stop; False when the database cannot be reached (the row then ages out)."""
    try:
        _execute(dsn, "stop_node", (node_id,))
    except psycopg.OperationalError:
        return False
    return True


def _execute(dsn: str, name: str, params: tuple[Any, ...]) -> None:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn, psycopg.RawCursor(conn) as cur:
        cur.execute(_SQL[name], params)
