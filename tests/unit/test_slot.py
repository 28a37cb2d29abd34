"""Which jobs may wait behind others in a worker: only short ones, behind short ones."""

from __future__ import annotations

from collections import namedtuple

from forge.supervisor.slot import MAX_BATCH, REFILL_AT, SHORT_JOB, JobDurations, Slot

Job = namedtuple("Job", "id attempt job_type input parent_id", defaults=(b"{}", None))


def _ready_slot() -> Slot:
    slot = Slot(0)
    slot.sock = object()  # type: ignore[assignment]
    slot.pid = 42
    return slot


def test_unknown_and_long_types_never_wait_behind_another_job():
    durations = JobDurations()
    durations.observe("short", SHORT_JOB / 10)
    durations.observe("long", SHORT_JOB * 10)
    slot = _ready_slot()
    assert slot.accepts("unknown", durations)  # an empty worker takes anything
    slot.hold(Job(1, 1, "short"), durations)
    assert slot.accepts("short", durations)
    assert not slot.accepts("long", durations)
    assert not slot.accepts("unknown", durations)
    slot.jobs.clear()
    slot.hold(Job(2, 1, "long"), durations)
    assert not slot.accepts("short", durations)  # nothing waits behind a long job
    slot.jobs.popleft()
    assert slot.accepts("short", durations)  # an empty worker takes anything again
    slot.hold(Job(3, 1, "short"), durations)
    assert slot.accepts("short", durations)


def test_batches_are_capped_and_dead_or_killed_workers_take_nothing():
    durations = JobDurations()
    durations.observe("short", 0.0)
    slot = _ready_slot()
    for i in range(MAX_BATCH):
        slot.hold(Job(i, 1, "short"), durations)
    assert not slot.accepts("short", durations)
    slot.jobs.clear()
    slot.kill_reason = "timeout"
    assert not slot.accepts("short", durations)
    slot.kill_reason, slot.retiring = None, True
    assert not slot.accepts("short", durations)


def test_batch_size_follows_recent_durations():
    durations = JobDurations()
    assert durations.per_worker() == 1
    for _ in range(20):
        durations.observe("short", 0.0001)
    assert durations.per_worker() == MAX_BATCH
    for _ in range(20):
        durations.observe("slow", 0.5)
    assert durations.per_worker() == 1
    assert durations.short("short") and not durations.short("slow")


def test_a_worker_with_short_jobs_is_topped_up_only_once_it_runs_low():
    durations = JobDurations()
    durations.observe("short", 0.0)
    slot = _ready_slot()
    assert slot.wants_jobs()  # idle
    for i in range(MAX_BATCH):
        slot.hold(Job(i, 1, "short"), durations)
    while len(slot.jobs) > REFILL_AT:
        assert not slot.wants_jobs()  # plenty queued: no write per finished job
        slot.jobs.popleft()
    assert slot.wants_jobs() and slot.accepts("short", durations)
    slot.retiring = True
    assert not slot.wants_jobs()


def test_runs_within_counts_recent_jobs_back_to_back():
    durations = JobDurations()
    assert durations.runs_within(0.25) == 0  # nothing ran yet: no estimate
    durations.observe("t", 0.002)
    assert durations.runs_within(0.25) == 125
    durations.observe("t", 0.002)
    assert durations.runs_within(0.001) == 0
