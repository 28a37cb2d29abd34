"""The admission of jobs that ask for resources (supervisor/capacity.py): fitting, order, backfilling, the
reservation that keeps a big job from starving, and what is handed back."""

from __future__ import annotations

from typing import NamedTuple

import pytest

import forge
from forge.supervisor.capacity import RESERVE_AFTER, Admission, Capacity, Request, never_fits, requests_of

GiB = 2**30


class Job(NamedTuple):  # what Admission reads of a ClaimedJob
    id: int
    job_type: str
    priority: int = 2
    attempt: int = 1


REQUESTS = {"big": Request(cpu=2), "small": Request(cpu=1), "gpu": Request(gpu=1), "fat": Request(memory=6 * GiB)}


def admission(cpus: int = 2, memory: int = 8 * GiB, gpus: tuple[str, ...] = (), prefetch: int = 2) -> Admission:
    return Admission(Capacity(cpus, memory, gpus, (0, 1)), REQUESTS, prefetch)


def started(adm: Admission, now: float = 0.0, below: int | None = None) -> list[int]:
    """The ids of the jobs admit() starts now, one call after another until it starts none."""
    ids = []
    while (admitted := adm.admit(now, below)) is not None:
        ids.append(admitted[0].id)
    return ids


def test_jobs_start_only_while_they_fit():
    adm = admission()
    for job_id in (1, 2):
        adm.push(Job(job_id, "big"), 0.0)  # type: ignore[arg-type]
    job, grant = adm.admit(0.0)
    assert (job.id, grant.positions, grant.cores) == (1, (0, 1), (0, 1))
    assert adm.admit(0.0) is None  # both CPUs are taken
    adm.give_back(grant)
    assert started(adm) == [2]


def test_a_job_that_does_not_fit_does_not_block_a_smaller_one_behind_it():
    adm = admission()
    adm.push(Job(1, "small"), 0.0)  # type: ignore[arg-type]
    assert started(adm) == [1]
    adm.push(Job(2, "big"), 0.0)  # type: ignore[arg-type]  # waits: one CPU is free, it asks for two
    adm.push(Job(3, "small"), 0.0)  # type: ignore[arg-type]
    assert started(adm) == [3]
    assert len(adm) == 1


def test_better_priority_first_then_the_longest_waiting():
    adm = admission(cpus=1)
    adm.push(Job(1, "small", priority=2), 1.0)  # type: ignore[arg-type]
    adm.push(Job(2, "small", priority=2), 0.5)  # type: ignore[arg-type]
    adm.push(Job(3, "small", priority=0), 2.0)  # type: ignore[arg-type]
    order = []
    for _ in range(3):
        job, grant = adm.admit(3.0)
        order.append(job.id)
        adm.give_back(grant)
    assert order == [3, 2, 1]


def test_a_better_job_without_a_request_goes_first():
    adm = admission()
    adm.push(Job(1, "small", priority=2), 0.0)  # type: ignore[arg-type]
    assert adm.admit(0.0, below=1) is None  # the queue's best job is of priority 1: it takes the worker
    assert started(adm, below=2) == [1]


def test_a_big_job_that_waited_reserve_after_is_not_starved_by_small_ones():
    adm = admission()
    adm.push(Job(1, "small"), 0.0)  # type: ignore[arg-type]
    _, first = adm.admit(0.0)
    adm.push(Job(2, "big"), 0.0)  # type: ignore[arg-type]
    adm.push(Job(3, "small"), 1.0)  # type: ignore[arg-type]
    job, second = adm.admit(1.0)
    assert job.id == 3  # backfilled while the big one has not waited long
    adm.push(Job(4, "small"), RESERVE_AFTER)  # type: ignore[arg-type]
    adm.give_back(first)
    # the big job has waited RESERVE_AFTER: the free CPU is kept for it, the small job waits
    assert started(adm, now=RESERVE_AFTER) == []
    adm.give_back(second)
    assert started(adm, now=RESERVE_AFTER) == [2]


def test_what_fits_beside_a_reservation_still_starts():
    adm = admission(gpus=("0",))
    adm.push(Job(1, "small"), 0.0)  # type: ignore[arg-type]
    _, running = adm.admit(0.0)
    adm.push(Job(2, "big"), 0.0)  # type: ignore[arg-type]
    adm.push(Job(3, "gpu"), RESERVE_AFTER)  # type: ignore[arg-type]
    adm.push(Job(4, "small"), RESERVE_AFTER)  # type: ignore[arg-type]
    assert started(adm, now=RESERVE_AFTER) == [3]  # a GPU is not what the reserved job waits for
    adm.give_back(running)
    assert started(adm, now=RESERVE_AFTER) == [2]


def test_memory_and_gpus_are_accounted():
    adm = admission(gpus=("0", "1"))
    for job_id, job_type in ((1, "fat"), (2, "fat"), (3, "gpu"), (4, "gpu"), (5, "gpu")):
        adm.push(Job(job_id, job_type), 0.0)  # type: ignore[arg-type]
    grants = {}
    while (admitted := adm.admit(0.0)) is not None:
        grants[admitted[0].id] = admitted[1]
    assert sorted(grants) == [1, 3, 4]  # 6 GiB of 8 taken: not twice; two GPUs: not three
    assert (grants[3].gpus, grants[4].gpus, grants[1].memory) == (("0",), ("1",), 6 * GiB)
    adm.give_back(grants[4])
    job, grant = adm.admit(0.0)
    assert (job.id, grant.gpus) == (5, ("1",))


def test_more_cpu_positions_than_cpus_share_them():
    adm = Admission(Capacity(4, GiB, (), (0, 1)), REQUESTS, 1)
    adm.push(Job(1, "big"), 0.0)  # type: ignore[arg-type]
    adm.push(Job(2, "big"), 0.0)  # type: ignore[arg-type]
    assert [grant.cores for _, grant in (adm.admit(0.0), adm.admit(0.0))] == [(0, 1), (0, 1)]


def test_jobs_waiting_past_the_prefetch_go_back_once_stale():
    adm = admission(cpus=1, prefetch=2)
    for job_id in range(1, 6):
        adm.push(Job(job_id, "big"), float(job_id))  # type: ignore[arg-type]  # big never fits on one CPU
    assert [job.id for job in adm.take_stale(limit=4.0)] == [3, 4]  # 1 and 2 (the best placed) stay; 5 is young
    assert [job.id for job in adm.take(5, 1)] == [5]
    assert adm.take_stale(limit=10.0) == []  # no more than the prefetch wait
    assert [job.id for job in adm.take_all()] == [1, 2]
    lone = admission(prefetch=0)
    lone.push(Job(1, "big"), 0.0)  # type: ignore[arg-type]
    assert lone.take_stale(limit=10.0) == []  # with no prefetch, one is kept all the same: it may come to reserve


def test_never_fits_says_what_is_too_much():
    capacity = Capacity(2, 8 * GiB, ("0",), (0, 1))
    assert never_fits(Request(cpu=2, memory=8 * GiB, gpu=1), capacity) is None
    assert never_fits(Request(cpu=3, gpu=2), capacity) == "cpu 3 > 2, gpu 2 > 1"


def test_requests_of_job_definitions():
    class Definition(NamedTuple):
        resources: forge.Resources | None

    definitions = [("a", Definition(forge.Resources(cpu=2, memory="1Gi"))), ("b", Definition(None)),
                   ("c", Definition(forge.Resources(gpu=0)))]
    assert requests_of(definitions) == {"a": Request(2, GiB, 0)}  # a request for nothing is none


@pytest.mark.parametrize("request_", [Request(cpu=1), Request(memory=1), Request(gpu=1)])
def test_any_part_of_a_request_is_a_request(request_):
    assert any(request_)
