"""The typed rows forge.Jobs returns: JobRecord (a forge_jobs row) and JobLogLine (a forge_job_logs row),
msgspec structs with a field per column, so msgspec.json.encode(record) is the row as a JSON object."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import msgspec

from .job import PRIORITIES

__all__ = ["JobLogLine", "JobRecord", "record"]

_PRIORITY_NAMES = {rank: name for name, rank in PRIORITIES.items()}


class JobRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One forge_jobs row: a field per column, named as the column. priority by name ("high"), times as
    aware datetimes, JSON columns decoded. msgspec.json.encode(record) is the row as a JSON object."""

    id: int
    job_type: str
    status: str
    priority: str
    input: Any
    result: Any
    attempts: int
    max_attempts: int
    crashes: int
    scheduled_at: datetime
    created_at: datetime
    claimed_at: datetime | None
    started_at: datetime | None
    completed_at: datetime | None
    failed_at: datetime | None
    dead_lettered_at: datetime | None
    heartbeat_at: datetime | None
    claimed_by: UUID | None
    last_error: Any
    progress: int
    progress_message: str | None
    parent_id: int | None
    idempotency_key: str | None
    capability: str
    resources: Any
    dead_letter_retain: timedelta | None
    cron_name: str | None
    cron_tick: datetime | None
    cancelled_at: datetime | None
    discarded_at: datetime | None
    dead_letter_after: timedelta | None
    cancel_requested_at: datetime | None


class JobLogLine(msgspec.Struct, frozen=True, kw_only=True):
    """One forge_job_logs row (a ctx.log line): when the supervisor got it, its attempt, level, message, fields,
    and the node that ran the attempt (None for lines stored before migration 0010)."""

    at: datetime
    attempt: int
    level: str
    message: str
    fields: Any
    node: UUID | None


def record(row: dict[str, Any]) -> JobRecord:
    """A forge_jobs row (column -> value) as a JobRecord: its priority by name."""
    return JobRecord(**{**row, "priority": _PRIORITY_NAMES[row["priority"]]})
