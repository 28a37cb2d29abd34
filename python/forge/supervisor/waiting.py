"""The arbiter's waiting queue: claimed jobs not handed to a worker yet, best priority first, then claim order."""

from __future__ import annotations

import heapq
from collections.abc import Callable

from .._core import ClaimedJob

#: (priority, seq, held_since, job): seq is unique, so comparisons never reach the rest, and a plain tuple
#: is made and compared in C. held_since (monotonic) is when the job (last) came into the queue.
_Queued = tuple[int, int, float, ClaimedJob]


class Waiting:
    """A heap of claimed jobs; held_since tells when prefetch_timeout sends one back.

    Jobs come in by the claimed batch, so few distinct arrival times are queued
    at once: counting the jobs per arrival time makes oldest() a look at those
    few, not at every job (it runs on every pass of the arbiter's loop).
    """

    def __init__(self) -> None:
        self._heap: list[_Queued] = []
        self._seq = 0
        self._arrivals: dict[float, int] = {}  # held_since -> how many queued jobs came in then

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, job: ClaimedJob, now: float) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (job.priority, self._seq, now, job))
        self._arrivals[now] = self._arrivals.get(now, 0) + 1

    def pop_if(self, accept: Callable[[ClaimedJob], bool]) -> ClaimedJob | None:
        """Remove and return the job to hand out next if `accept` takes it; None if it does not or none waits."""
        if not self._heap or not accept(self._heap[0][3]):
            return None
        _, _, since, job = heapq.heappop(self._heap)
        self._left(since)
        return job

    def best(self) -> int | None:
        """The priority of the job to hand out next, or None if none waits."""
        return self._heap[0][0] if self._heap else None

    def oldest(self) -> float | None:
        """When the job waiting longest came in, or None if none waits."""
        return min(self._arrivals) if self._arrivals else None

    def take_held_since(self, limit: float) -> list[ClaimedJob]:
        """Remove and return the jobs waiting since `limit` or before."""
        return self._take(lambda q: q[2] <= limit)

    def take(self, job_id: int, attempt: int) -> list[ClaimedJob]:
        """Remove and return that attempt of that job, if it waits here."""
        return self._take(lambda q: (q[3].id, q[3].attempt) == (job_id, attempt))

    def take_all(self) -> list[ClaimedJob]:
        return self._take(lambda q: True)

    def _take(self, taken: Callable[[_Queued], bool]) -> list[ClaimedJob]:
        out = [q for q in self._heap if taken(q)]
        if out:
            self._heap = [q for q in self._heap if not taken(q)]
            heapq.heapify(self._heap)
            for queued in out:
                self._left(queued[2])
        return [q[3] for q in out]

    def _left(self, since: float) -> None:
        """One job that came in at `since` left the queue."""
        count = self._arrivals[since] - 1
        if count:
            self._arrivals[since] = count
        else:
            del self._arrivals[since]
