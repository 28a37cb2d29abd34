"""The demand policy: how many claim credits the arbiter grants for a given snapshot of its state."""

from __future__ import annotations

from forge.supervisor.demand import PREFETCH_CLAIMS, PREFETCH_HORIZON, Demand, Pace, credits, prefetch_target
from forge.supervisor.slot import MAX_BATCH, SHORT_JOB, JobDurations

CLAIM_BATCH = 250


class FixedPace:
    """A Pace whose worker runs `per_second` jobs a second; remembers the spans it was asked about."""

    def __init__(self, per_second: float) -> None:
        self.per_second = per_second
        self.asked: list[float] = []

    def runs_within(self, seconds: float) -> int:
        self.asked.append(seconds)
        return int(seconds * self.per_second)


def durations_of(*runs: tuple[str, float]) -> JobDurations:
    durations = JobDurations()
    for job_type, seconds in runs:
        durations.observe(job_type, seconds)
    return durations


def demand(pace: Pace, *, per_worker: int | None = None, slots: int = 2) -> Demand:
    """An idle RUNNING node of `slots` workers, prefetch = workers (the default), claim_batch 250."""
    if per_worker is None:
        assert isinstance(pace, JobDurations)
        per_worker = pace.per_worker()
    return Demand(
        running=True,
        room=slots * per_worker,
        queued=0,
        outstanding=0,
        per_worker=per_worker,
        prefetching=True,
        prefetch=slots,
        claim_batch=CLAIM_BATCH,
        prefetch_timeout=1.0,
        slots=slots,
        pace=pace,
    )


SHORT = durations_of(*[("noop", SHORT_JOB / 20)] * 10)  # 10,000 jobs/s a worker
LONG = durations_of(("report", 0.5))


def test_job_durations_is_a_pace() -> None:
    pace: Pace = JobDurations()  # mypy checks the protocol; this checks the call
    assert pace.runs_within(1.0) == 0


def test_short_jobs_hold_two_claim_batches_beyond_the_room() -> None:
    state = demand(SHORT)
    assert state.per_worker == MAX_BATCH
    assert prefetch_target(state) == PREFETCH_CLAIMS * CLAIM_BATCH == 500
    assert credits(state) == 2 * MAX_BATCH + 500
    # Workers holding jobs have less room; what is queued counts as held.
    assert credits(state._replace(room=10, queued=100)) == 10 + 500 - 100


def test_short_jobs_hold_no_more_than_a_quarter_of_prefetch_timeout_of_work() -> None:
    pace = FixedPace(per_second=600)  # 150 jobs in 0.25 s
    state = demand(pace, per_worker=MAX_BATCH, slots=2)
    assert prefetch_target(state) == 2 * 150  # under 2 x claim_batch
    assert pace.asked == [1.0 * PREFETCH_HORIZON]
    assert credits(state) == 2 * MAX_BATCH + 300
    # Never fewer than the spares: prefetch whole batches per worker position.
    slow = demand(FixedPace(per_second=40), per_worker=MAX_BATCH, slots=2)  # 10 a worker in 0.25 s
    assert prefetch_target(slow) == 2 * MAX_BATCH
    assert credits(slow) == 2 * MAX_BATCH + 2 * MAX_BATCH


def test_long_jobs_get_one_per_worker_and_the_spares() -> None:
    state = demand(LONG)
    assert state.per_worker == 1
    assert prefetch_target(state) == 2
    assert credits(state) == 2 + 2
    # One credit at a time is granted: no waiting for a claim_batch with one job per worker,
    # however much of the prefetch is queued.
    assert credits(state._replace(room=0, queued=1)) == 1
    busy = demand(LONG, slots=4)._replace(room=0, queued=3)  # prefetch 4, 3 of them queued
    assert credits(busy) == 1


def test_mixed_types_average_long_so_only_the_spares_though_runs_are_quick() -> None:
    # Short jobs and 6 ms ones: the average is not short (one job per worker),
    # yet a worker runs over 50 of them in 0.25 s. The prefetch stays the spares.
    state = demand(durations_of(*[("noop", 0.0001), ("io", 0.006)] * 20))
    assert state.per_worker == 1 and state.pace.runs_within(0.25) > 50
    assert prefetch_target(state) == 2
    assert credits(state) == 2 + 2


def test_before_any_job_ran_one_per_worker_and_the_spares() -> None:
    state = demand(JobDurations(), slots=4)
    assert state.per_worker == 1
    assert credits(state) == 4 + 4


def test_prefetch_zero_still_grants_short_jobs_their_room() -> None:
    # 1 worker, prefetch = 0, short jobs: with credits waiting for a whole
    # claim_batch whenever half of no prefetch was queued, this node never
    # asked again and its worker sat idle (fixed in dd7965b).
    state = demand(SHORT, slots=1)._replace(prefetch=0)
    assert prefetch_target(state) == 0
    assert credits(state) == MAX_BATCH
    assert credits(state._replace(room=15, queued=0)) == 15
    assert credits(state._replace(room=15, queued=5)) == 10
    assert credits(state._replace(room=15, queued=15)) == 0


def test_prefetch_off_after_held_jobs_went_back_still_grants_the_room() -> None:
    state = demand(SHORT)._replace(prefetching=False, room=20, queued=4)
    assert prefetch_target(state) == 0
    assert credits(state) == 16


def test_plenty_queued_waits_for_a_whole_claim_batch() -> None:
    state = demand(SHORT)._replace(room=10)  # prefetch target 500
    assert credits(state._replace(queued=300)) == 0  # 210 wanted, 300 > 250 queued: wait
    assert credits(state._replace(queued=260)) == CLAIM_BATCH  # 250 wanted: a whole claim_batch
    # Half of the prefetch or less queued: grant what is wanted, however few.
    assert credits(state._replace(queued=250, outstanding=100)) == 160
    assert credits(state._replace(queued=0, outstanding=490)) == 20


def test_credits_outstanding_are_subtracted() -> None:
    short = demand(SHORT)
    assert credits(short._replace(outstanding=100)) == 2 * MAX_BATCH + 500 - 100
    long = demand(LONG)
    assert credits(long._replace(outstanding=3)) == 1
    assert credits(long._replace(outstanding=4)) == 0
    assert credits(long._replace(outstanding=40)) == 0  # never negative


def test_no_credits_unless_running() -> None:
    for pace in (SHORT, LONG, JobDurations()):
        assert credits(demand(pace)._replace(running=False)) == 0
