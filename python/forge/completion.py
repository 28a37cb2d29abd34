"""A job's completion written inside its own transaction (complete_in_transaction, ctx.complete).

The job's writes through ctx.db in that transaction and its end (status
completed, its result) commit together, or neither does: a worker killed right
after the commit leaves a completed job with its writes applied once, and no
node runs it again; the supervisor's own report of that end, if it still comes,
is fenced like any late report (engine.sql). The completion is written by
db/sql/context.sql `complete` just before the outermost ctx.transaction()
commits, guarded by the job's lease: if the lease is no longer this node's
(another node rescued the job), the transaction rolls back and the job fails
with LeaseLost. Not covered: anything outside that transaction (another
connection, an HTTP call, a file), which may still happen twice.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import msgspec

from .db.queries import load_queries
from .errors import ForgeError, LeaseLost, ResultNotStorable

SQL = load_queries("context.sql")

#: The largest encoded result stored: the core's limit (rust/src/storable.rs MAX_RESULT_BYTES).
MAX_RESULT_BYTES = 1 << 20
# A JSON \u0000 escape (not an escaped backslash followed by "u0000"): jsonb refuses it.
_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


@dataclass(frozen=True)
class JobLease:
    """The lease a worker runs a job under: the guard of every write of its end."""

    job_id: int
    attempt: int
    owner: str  # the node's lease owner (forge_jobs.claimed_by)
    started: float  # time.monotonic() when the worker started the job


@dataclass(frozen=True)
class Committed:
    """A completion that committed with the job's transaction; result is its JSON (None for None)."""

    result: bytes | None


class Completion:
    """One run's transactions through the context: how deep they nest, the completion asked for, and whether it
    committed. The context calls enter/leave around every ctx.transaction(), ask from ctx.complete()."""

    def __init__(self, lease: JobLease) -> None:
        self.lease = lease
        self.committed: Committed | None = None
        self._depth = 0
        self._outermost = False  # the outermost ctx.transaction() began the connection's transaction
        self._asked: tuple[int, bytes | None] | None = None  # (depth, result) of ctx.complete()

    def enter(self, idle: bool) -> None:
        """A ctx.transaction() begins; `idle`: no transaction was open on the connection."""
        if self._depth == 0:
            self._outermost = idle
        self._depth += 1

    def ask(self, result: Any) -> None:
        """ctx.complete(result): complete the job with the transaction it is called in."""
        if self.committed is not None:
            raise ForgeError(f"job {self.lease.job_id} is completed already (ctx.complete, committed)")
        if self._depth == 0 or not self._outermost:
            raise ForgeError("ctx.complete() must be called inside ctx.transaction() or ctx.mutate(), not outside "
                             "one nor inside a transaction opened on ctx.db directly")
        self._asked = (self._depth, encode_result(self.lease, result))

    def due(self) -> bool:
        """Whether the completion is to be written now: asked for, and the outermost transaction is ending."""
        return self._asked is not None and self._depth == 1

    def params(self) -> tuple[Any, ...]:
        """The parameters of context.sql `complete`."""
        assert self._asked is not None
        result = self._asked[1]
        ago_ms = (time.monotonic() - self.lease.started) * 1000
        return (self.lease.job_id, self.lease.attempt, self.lease.owner,
                None if result is None else result.decode(), ago_ms)

    def lost(self) -> LeaseLost:
        """The error of a completion whose lease the database no longer holds for this node."""
        return LeaseLost(f"job {self.lease.job_id} (attempt {self.lease.attempt}) could not complete in its "
                         "transaction: its lease is no longer this node's (rescued by another node, cancelled or "
                         "ended); the transaction was rolled back")

    def leave(self, committed: bool) -> None:
        """A ctx.transaction() ends: committed (or released, when nested), or rolled back."""
        if not committed and self._asked is not None and self._asked[0] >= self._depth:
            self._asked = None  # the completion was asked for in what rolled back
        self._depth -= 1
        if self._depth == 0 and self._asked is not None:
            self.committed = Committed(self._asked[1]) if committed else None
            self._asked = None


def encode_result(lease: JobLease, result: Any) -> bytes | None:
    """The result's JSON as it will be stored, or ResultNotStorable (as the core decides, storable.rs)."""
    if result is None:
        return None
    try:
        encoded = msgspec.json.encode(result)
    except BaseException as exc:  # TypeError, UnicodeEncodeError (a surrogate), or whatever a value raises
        raise _not_storable(lease, f"it is not JSON-encodable: {exc}") from None
    if len(encoded) > MAX_RESULT_BYTES:
        raise _not_storable(lease, f"it is {len(encoded)} bytes encoded, over the limit of {MAX_RESULT_BYTES} "
                                   "(1 MiB)")
    if _NUL_ESCAPE.search(encoded):
        raise _not_storable(lease, "it contains a NUL character (\\u0000 in JSON), which PostgreSQL's jsonb refuses")
    return encoded


def _not_storable(lease: JobLease, reason: str) -> ResultNotStorable:
    return ResultNotStorable(f"the result of job {lease.job_id} (attempt {lease.attempt}) cannot be stored: {reason}")
