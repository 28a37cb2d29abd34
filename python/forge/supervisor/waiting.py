"""The arbiter's waiting queue: claimed jobs not handed to a worker yet, best priority first, then claim order."""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import NamedTuple

from .._core import ClaimedJob


class _Queued(NamedTuple):
    """Ordered by priority then arrival (seq is unique, so comparisons never reach the rest; a tuple compares in C)."""

    priority: int
    seq: int
    held_since: float  # monotonic: when it (last) came into the queue
    job: ClaimedJob


class Waiting:
    """A heap of claimed jobs; held_since tells when prefetch_timeout sends one back."""

    def __init__(self) -> None:
        self._heap: list[_Queued] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, job: ClaimedJob, now: float) -> None:
        self._seq += 1
        heapq.heappush(self._heap, _Queued(job.priority, self._seq, now, job))

    def first(self) -> ClaimedJob:
        """The job to hand out next (the queue is not empty)."""
        return self._heap[0].job

    def pop(self) -> ClaimedJob:
        return heapq.heappop(self._heap).job

    def oldest(self) -> float | None:
        """When the job waiting longest came in, or None if none waits."""
        return min(q.held_since for q in self._heap) if self._heap else None

    def take_held_since(self, limit: float) -> list[ClaimedJob]:
        """Remove and return the jobs waiting since `limit` or before."""
        return self._take(lambda q: q.held_since <= limit)

    def take(self, job_id: int, attempt: int) -> list[ClaimedJob]:
        """Remove and return that attempt of that job, if it waits here."""
        return self._take(lambda q: (q.job.id, q.job.attempt) == (job_id, attempt))

    def take_all(self) -> list[ClaimedJob]:
        return self._take(lambda q: True)

    def _take(self, taken: Callable[[_Queued], bool]) -> list[ClaimedJob]:
        out = [q.job for q in self._heap if taken(q)]
        if out:
            self._heap = [q for q in self._heap if not taken(q)]
            heapq.heapify(self._heap)
        return out
