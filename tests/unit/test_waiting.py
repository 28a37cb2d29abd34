"""The arbiter's waiting queue: best priority first, then arrival; jobs leave it by age, by id or all at once."""

from __future__ import annotations

from collections import namedtuple

from forge.supervisor.waiting import Waiting

Job = namedtuple("Job", "id attempt priority")


def test_best_priority_first_then_arrival():
    queue = Waiting()
    for job, at in [(Job(1, 1, 5), 0.0), (Job(2, 1, 0), 1.0), (Job(3, 1, 5), 2.0), (Job(4, 1, 0), 3.0)]:
        queue.push(job, at)
    assert queue.pop_if(lambda job: job.id != 2) is None and len(queue) == 4  # job 2 is next; refused, it stays
    assert [queue.pop_if(lambda job: True).id for _ in range(len(queue))] == [2, 4, 1, 3]
    assert queue.oldest() is None and queue.pop_if(lambda job: True) is None


def test_jobs_leave_by_age_by_attempt_or_all():
    queue = Waiting()
    for i in range(1, 6):
        queue.push(Job(i, 1, 0), float(i))
    assert queue.oldest() == 1.0
    assert [j.id for j in queue.take_held_since(2.0)] == [1, 2]
    assert queue.take(4, 2) == [] and [j.id for j in queue.take(4, 1)] == [4]
    assert queue.oldest() == 3.0 and queue.pop_if(lambda job: job.id != 3) is None  # job 3 is next
    assert sorted(j.id for j in queue.take_all()) == [3, 5] and len(queue) == 0 and queue.oldest() is None


def test_the_oldest_arrival_is_kept_as_jobs_leave_in_any_order():
    queue = Waiting()
    for i, (priority, at) in enumerate([(5, 1.0), (0, 2.0), (5, 2.0), (0, 3.0)], start=1):
        queue.push(Job(i, 1, priority), at)
    seen = []
    while len(queue):
        seen.append(queue.oldest())
        queue.pop_if(lambda job: True)
    assert seen == [1.0, 1.0, 1.0, 2.0]  # jobs 2 and 4 (priority 0) leave first; job 1, from 1.0, then
    queue.push(Job(5, 1, 0), 4.0)
    assert queue.oldest() == 4.0
