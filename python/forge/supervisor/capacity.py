"""Admission of jobs that ask for resources (forge.Resources): which of them starts now, on which CPUs and GPUs.

A node's capacity is [node] cpus, memory and gpus (machine.py fills in what is
omitted). A job type's request is its definition's resources (the registry:
the claimed row's `resources` column is written from that same definition at
dispatch, and a node claims only the types it has registered). A job starts
only when its request fits what the running jobs leave free; a job without a
request takes nothing and never waits here (the arbiter's Waiting queue).

The order: jobs waiting for capacity are tried best priority first, then the
longest waiting; the first that fits starts, so a big job does not block a
smaller one behind it that fits (backfilling). To keep a big job from
starving behind a stream of small ones, the best placed of those that have
waited RESERVE_AFTER holds a reservation: no other job with a request
starts unless it fits beside it (in what is free less the reserved request),
so capacity drains towards it. Jobs without a request are never held back.

The jobs waiting here count as queued in the claim credits (demand.Demand.queued), as any claimed job not
started: credits never grow because jobs wait for capacity, and a node holds at most its workers' room plus
the prefetch of claimed jobs, as without resources. Those past the prefetch go back once they waited
prefetch_timeout (take_stale), for nodes with the room (this node may claim them again: once a
prefetch_timeout at most).

Admission keeps the ledger (free cores, memory, GPUs) and the jobs waiting;
no I/O, no clock (the arbiter passes `now`): unit-tested on its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Callable, NamedTuple

from .._core import ClaimedJob
from ..job import Resources

#: A job waiting for capacity this long (seconds) reserves what it asks for: see the module's docstring.
RESERVE_AFTER = 30.0


class Request(NamedTuple):
    """What one run asks for: whole CPUs, bytes of memory (0: no limit), GPUs."""

    cpu: int = 0
    memory: int = 0
    gpu: int = 0

    @classmethod
    def of(cls, resources: Resources | None) -> Request | None:
        """The request of a job definition's forge.Resources (None, or asking for nothing: None)."""
        if resources is None:
            return None
        request = cls(resources.cpu or 0, resources.memory or 0, resources.gpu or 0)
        return request if any(request) else None


class Capacity(NamedTuple):
    """A node's capacity: `cpus` CPU positions over the CPU ids in `cores` (a position i is the id
    cores[i % len(cores)]: more positions than ids is an oversubscription the operator asked for), bytes of
    memory, GPU device ids."""

    cpus: int
    memory: int
    gpus: tuple[str, ...]
    cores: tuple[int, ...]


class Grant(NamedTuple):
    """What a started job was given: CPU positions (and their CPU ids), its memory limit (0: none), GPU ids."""

    positions: tuple[int, ...]
    cores: tuple[int, ...]
    memory: int
    gpus: tuple[str, ...]


def never_fits(request: Request, capacity: Capacity) -> str | None:
    """What of `request` is more than the whole node has, in words; None if an idle node could run it."""
    over = [f"{what} {asked} > {has}" for what, asked, has in (
        ("cpu", request.cpu, capacity.cpus), ("memory", request.memory, capacity.memory),
        ("gpu", request.gpu, len(capacity.gpus))) if asked > has]
    return ", ".join(over) or None


class _Free(NamedTuple):
    positions: frozenset[int]
    memory: int
    gpus: tuple[str, ...]

    def fits(self, request: Request) -> bool:
        return (request.cpu <= len(self.positions) and request.memory <= self.memory
                and request.gpu <= len(self.gpus))

    def less(self, request: Request) -> _Free:
        """What is left once `request` is taken (the lowest positions and first GPUs: as grant() takes)."""
        positions = sorted(self.positions)
        return _Free(frozenset(positions[request.cpu:]), self.memory - request.memory, self.gpus[request.gpu:])


#: (priority, since, seq, job): a waiting job, in the order they are tried.
_Parked = tuple[int, float, int, ClaimedJob]


class Admission:
    """The jobs of this node that wait for capacity, and what the running ones hold."""

    def __init__(self, capacity: Capacity, requests: Mapping[str, Request], prefetch: int | None) -> None:
        self.capacity = capacity
        self.requests = dict(requests)  # job type -> its request, for the types that ask for something
        self._keep = max(1, prefetch or 0)  # see take_stale()
        self._free = _Free(frozenset(range(capacity.cpus)), capacity.memory, tuple(capacity.gpus))
        self._parked: list[_Parked] = []  # few jobs wait here at once: sorted when looked at
        self._seq = 0

    def __len__(self) -> int:
        return len(self._parked)


    def push(self, job: ClaimedJob, now: float) -> None:
        """`job` (of a type in `requests`) waits for capacity from `now`."""
        self._seq += 1
        self._parked.append((job.priority, now, self._seq, job))

    def admit(self, now: float, below: int | None = None) -> tuple[ClaimedJob, Grant] | None:
        """The job to start now and what it is given (taken from the free capacity), or None.

        Only jobs of priority `below` or better (a lower number) are considered: a better job without a request
        waits in the arbiter's queue. The reserved job, if any (the longest waiting, once RESERVE_AFTER), comes
        first; others only if they fit beside it.
        """
        reserved = self._reserved(now)
        room = self._free
        if reserved is not None:
            request = self.requests[reserved[3].job_type]
            if room.fits(request):
                return self._start(reserved) if below is None or reserved[0] <= below else None
            room = room.less(request)
        for parked in sorted(self._parked):
            if below is not None and parked[0] > below:
                return None
            if parked is not reserved and room.fits(self.requests[parked[3].job_type]):
                return self._start(parked)
        return None

    def _reserved(self, now: float) -> _Parked | None:
        """The best placed job that has waited RESERVE_AFTER, if any."""
        return next((parked for parked in sorted(self._parked) if now - parked[1] >= RESERVE_AFTER), None)

    def _start(self, parked: _Parked) -> tuple[ClaimedJob, Grant]:
        self._parked.remove(parked)
        job = parked[3]
        request = self.requests[job.job_type]
        positions = tuple(sorted(self._free.positions)[:request.cpu])
        cores = self.capacity.cores
        grant = Grant(positions, tuple(sorted({cores[p % len(cores)] for p in positions})), request.memory,
                      self._free.gpus[:request.gpu])
        self._free = self._free.less(request)
        return job, grant

    def give_back(self, grant: Grant | None) -> None:
        """The job given `grant` (if any) ended: what it held is free again."""
        if grant is None:
            return
        free = self._free
        gpus = tuple(g for g in self.capacity.gpus if g in free.gpus or g in grant.gpus)  # the configured order
        self._free = _Free(free.positions | set(grant.positions), free.memory + grant.memory, gpus)

    def take(self, job_id: int, attempt: int) -> list[ClaimedJob]:
        """Remove and return that attempt of that job, if it waits here."""
        return self._take(lambda parked: (parked[3].id, parked[3].attempt) == (job_id, attempt))

    def take_all(self) -> list[ClaimedJob]:
        return self._take(lambda parked: True)

    def take_stale(self, limit: float) -> list[ClaimedJob]:
        """The jobs waiting since `limit` (now less prefetch_timeout) or before, less the `prefetch` best placed
        (at least one): those go back, for nodes that have the room; the ones kept may come to reserve."""
        if len(self._parked) <= self._keep:
            return []
        kept = {id(parked) for parked in sorted(self._parked)[:self._keep]}
        return self._take(lambda parked: parked[1] <= limit and id(parked) not in kept)

    def _take(self, taken: Callable[[_Parked], bool]) -> list[ClaimedJob]:
        out = [parked for parked in self._parked if taken(parked)]
        if out:
            self._parked = [parked for parked in self._parked if not taken(parked)]
        return [parked[3] for parked in out]


def requests_of(definitions: Iterable[tuple[str, Any]]) -> dict[str, Request]:
    """The requests of the job types that ask for something, from (name, definition) pairs."""
    requests = {name: Request.of(definition.resources) for name, definition in definitions}
    return {name: request for name, request in requests.items() if request is not None}
