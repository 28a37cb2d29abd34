"""The demand policy: how many claim credits the arbiter grants the Rust core, from one snapshot of its state.

The core claims jobs only against credits, one credit per job, and claims as
soon as it holds any. Each pass the arbiter describes what it knows (Demand)
and grants what credits() returns; it keeps the counters and the prefetching
flag, this module only decides. Everything here is pure: no I/O, no clock, no
state kept between calls.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

#: While jobs are short, hold up to this many claim_batches of claimed jobs beyond the workers' room ...
PREFETCH_CLAIMS = 2
#: ... but no more than the workers run in this fraction of prefetch_timeout.
PREFETCH_HORIZON = 0.25


class Pace(Protocol):
    """How fast recent jobs ran (slot.JobDurations is one)."""

    def runs_within(self, seconds: float) -> int:
        """How many recent jobs, one after another, one worker runs in `seconds` (0 before any ran)."""
        ...


class Demand(NamedTuple):
    """What decides the credits, as the arbiter sees it in one pass."""

    running: bool  # the arbiter is RUNNING: draining or killing, it claims nothing
    room: int  # jobs the workers not killed or retiring can take: per_worker less what each holds
    queued: int  # claimed jobs waiting in the arbiter for a worker
    outstanding: int  # credits granted whose jobs the core has not delivered yet
    per_worker: int  # jobs kept per worker: a batch while recent jobs are short, else 1
    prefetching: bool  # False from when held jobs went back unstarted (prefetch_timeout) until a job next ends
    prefetch: int  # [node] prefetch: spares per worker position; 0 turns prefetching off
    claim_batch: int  # [node] claim_batch: most rows one claim takes
    prefetch_timeout: float  # [node] prefetch_timeout: a held job not started by then goes back
    slots: int  # worker positions ([node] workers)
    pace: Pace  # how many jobs one worker runs in a given time, from the job-duration averages


def credits(demand: Demand) -> int:
    """How many credits to grant now (0 for none): the workers' room plus the prefetch, less what is on its way.

    While more than half the prefetch of short jobs is queued, credits wait
    to be a whole claim_batch: the core claims as soon as it holds credits, so
    credits granted a few at a time made claims of a few rows each. Only then:
    with no prefetch (prefetch = 0, or right after held jobs went back) half
    of it is always queued, so a node whose room was under a claim_batch never
    asked again once jobs were known to be short, and its workers sat idle.
    """
    if not demand.running:
        return 0
    prefetch = prefetch_target(demand)
    wanted = demand.room + prefetch - demand.queued - demand.outstanding
    if wanted <= 0:
        return 0
    plenty_queued = demand.per_worker > 1 and prefetch != 0 and demand.queued > prefetch // 2
    if plenty_queued and wanted < demand.claim_batch:
        return 0
    return wanted


def prefetch_target(demand: Demand) -> int:
    """How many claimed jobs to hold beyond the workers' room.

    `prefetch` spares per worker position (whole batches of them while jobs
    are short), so the next claim is under way while the workers run the
    current one. While jobs are short, up to two claim_batches if that is
    more: with only the spares the core claimed a few dozen rows at a time,
    each claim's fixed cost (statement, commit, claim row) shared by few
    jobs, which cost the database much more per job (docs/performance.md,
    "Design measurements"). That is bounded by the work the workers get through in a
    quarter of prefetch_timeout, so held jobs start well before they would
    be handed back.
    """
    if not demand.prefetching:
        return 0
    spares = demand.prefetch * demand.per_worker
    if spares == 0 or demand.per_worker == 1:
        return spares
    horizon = demand.pace.runs_within(demand.prefetch_timeout * PREFETCH_HORIZON) * demand.slots
    return max(spares, min(PREFETCH_CLAIMS * demand.claim_batch, horizon))
