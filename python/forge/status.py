"""The queue at a glance (`forge status`): counts by status, type and priority, how long due jobs have
waited, paused types, the nodes alive and the waiting jobs none of them can run (their worker capability is
no live node's: they stay pending until such a node starts), read in a bounded time on a table of any size.

How each count is made is said in db/sql/status.sql: the live states are counted exactly through the partial
indexes, the finished ones (completed jobs) on a sample of at
most SAMPLE_PAGES pages of the table once it is bigger than that; `estimated` lists the statuses so counted.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec

from forge.db.queries import load_queries
from forge.job import PRIORITIES

if TYPE_CHECKING:
    import psycopg

__all__ = ["SAMPLE_PAGES", "STATUSES", "NodeStatus", "QueueStatus", "Unschedulable", "known_job_types",
           "read_status"]

#: Every status a job can have (the forge_jobs_status_valid CHECK), in lifecycle order.
STATUSES = ("pending", "claimed", "running", "retry", "completed", "failed", "dead_letter", "discarded", "cancelled")

#: Most pages of finished rows read to count them (8 KiB each: 16 MiB, tens of thousands of rows, some 100 ms
#: here); a table of at most this many pages is counted exactly.
SAMPLE_PAGES = 2000

_SQL = load_queries("status.sql")
_PRIORITY_NAMES = {rank: name for name, rank in PRIORITIES.items()}

_CLAIMABLE = ("pending", "retry")

Counts = dict[str, dict[str, int]]


class NodeStatus(msgspec.Struct, kw_only=True):
    """A node alive: its forge_nodes row, with `busy` (its running jobs: busy worker slots) and `claimed`
    (jobs it holds that have not started: prefetched)."""

    id: uuid.UUID
    hostname: str
    pid: int
    roles: list[str]
    workers: int
    busy: int
    claimed: int
    capabilities: list[str]
    job_types: list[str]
    started_at: datetime
    heartbeat_at: datetime


class Unschedulable(msgspec.Struct, kw_only=True):
    """Jobs of one type waiting (pending or retry) for a worker capability that no live node has."""

    job_type: str
    capability: str
    pending: int


class QueueStatus(msgspec.Struct, kw_only=True):
    """What `forge status` shows; msgspec.to_builtins() of it is its JSON."""

    by_status: dict[str, int]
    by_type: Counts  # type -> status -> count
    by_priority: Counts  # priority name -> status -> count
    oldest_pending_seconds: dict[str, float]  # type -> how long its oldest due claimable job has been due
    paused: list[str]
    nodes: list[NodeStatus]
    estimated: list[str]  # the statuses counted on a sample of the table, not exactly
    unschedulable: list[Unschedulable]  # by type and capability


def read_status(conn: psycopg.Connection[Any], *, heartbeat_timeout: float, sample_pages: int = SAMPLE_PAGES
                ) -> QueueStatus:
    """The status of the queue in `conn`'s database. Nodes count as alive when their last heartbeat is under
    `heartbeat_timeout` seconds old. Given a connection outside a transaction (autocommit, or idle), every
    count is of one snapshot (a read-only repeatable-read transaction), so a job that moves meanwhile is
    counted once; inside the caller's transaction, it is read with that transaction's isolation."""
    import psycopg

    fresh = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    with conn.transaction():
        if fresh:
            conn.execute(_SQL["snapshot"])
        return _read(conn, heartbeat_timeout, sample_pages)


def _read(conn: psycopg.Connection[Any], heartbeat_timeout: float, sample_pages: int) -> QueueStatus:
    tally = _Tally()
    oldest: dict[str, float] = {}
    waiting: dict[tuple[str, str], int] = {}  # (type, capability) -> pending and retrying jobs
    for job_type, status, priority, capability, count, waited in _rows(conn, "claimable"):
        tally.add(job_type, status, priority, count)
        _bump(waiting, (job_type, capability), count)
        if waited is not None and status in _CLAIMABLE:
            oldest[job_type] = max(waited, oldest.get(job_type, 0.0))
    for part in ("failed", "cancelled"):
        for job_type, status, priority, count in _rows(conn, part):
            tally.add(job_type, status, priority, count)
    held: dict[uuid.UUID, dict[str, int]] = {}
    for owner, job_type, status, priority, count in _rows(conn, "held"):
        tally.add(job_type, status, priority, count)
        by_owner = held.setdefault(owner, {})
        by_owner[status] = by_owner.get(status, 0) + count
    estimated = _count_finished(conn, tally, sample_pages)
    nodes = _nodes(conn, heartbeat_timeout, held)
    return QueueStatus(
        by_status=tally.by_status,
        by_type=tally.by_type,
        by_priority=tally.by_priority,
        oldest_pending_seconds=dict(sorted(oldest.items())),
        paused=_paused(conn),
        nodes=nodes,
        estimated=estimated,
        unschedulable=_unschedulable(waiting, nodes),
    )


def known_job_types(conn: psycopg.Connection[Any]) -> list[str]:
    """The job types a registered node runs or a pending or retrying job waits in, by name."""
    return [job_type for (job_type,) in _rows(conn, "known_job_types")]


def _count_finished(conn: psycopg.Connection[Any], tally: _Tally, sample_pages: int) -> list[str]:
    """Add the finished rows to `tally`, exactly or, on a big table, from a page sample scaled up; the
    statuses estimated."""
    ((pages,),) = _rows(conn, "table_pages")
    percent = 100.0 if pages <= sample_pages else 100.0 * sample_pages / pages
    estimated: set[str] = set()
    for job_type, status, priority, count in _rows(conn, "finished", percent):
        tally.add(job_type, status, priority, round(count * 100.0 / percent))
        if percent < 100.0:
            estimated.add(status)
    return sorted(estimated)


def _unschedulable(waiting: dict[tuple[str, str], int], nodes: list[NodeStatus]) -> list[Unschedulable]:
    """The waiting jobs whose capability no live node has, by type and capability: no node claims them."""
    served = {capability for node in nodes for capability in node.capabilities}
    return [Unschedulable(job_type=job_type, capability=capability, pending=count)
            for (job_type, capability), count in sorted(waiting.items()) if capability not in served]


def _paused(conn: psycopg.Connection[Any]) -> list[str]:
    ((exists,),) = _rows(conn, "paused_table_exists")
    return [job_type for (job_type,) in _rows(conn, "paused")] if exists else []


def _nodes(conn: psycopg.Connection[Any], heartbeat_timeout: float, held: dict[uuid.UUID, dict[str, int]]
           ) -> list[NodeStatus]:
    nodes = []
    for node_id, hostname, pid, roles, workers, capabilities, job_types, started_at, heartbeat_at in _rows(
        conn, "nodes", heartbeat_timeout
    ):
        jobs = held.get(node_id, {})
        nodes.append(NodeStatus(
            id=node_id, hostname=hostname, pid=pid, roles=roles, workers=workers,
            busy=jobs.get("running", 0), claimed=jobs.get("claimed", 0),
            capabilities=capabilities, job_types=job_types, started_at=started_at, heartbeat_at=heartbeat_at,
        ))
    return nodes


def _rows(conn: psycopg.Connection[Any], name: str, *params: Any) -> list[tuple[Any, ...]]:
    """The rows of status.sql's statement `name` ($n parameters, hence a raw cursor)."""
    import psycopg

    with psycopg.RawCursor(conn) as cur:
        return cur.execute(_SQL[name], params).fetchall()


class _Tally:
    """Counts by status, by type then status, and by priority name then status."""

    def __init__(self) -> None:
        self.by_status: dict[str, int] = dict.fromkeys(STATUSES, 0)
        self.by_type: Counts = {}
        self.by_priority: Counts = {}

    def add(self, job_type: str, status: str, priority: int, count: int) -> None:
        _bump(self.by_status, status, count)
        _bump(self.by_type.setdefault(job_type, {}), status, count)
        _bump(self.by_priority.setdefault(_PRIORITY_NAMES[priority], {}), status, count)


def _bump(counts: dict[Any, int], key: Any, count: int) -> None:
    counts[key] = counts.get(key, 0) + count
