"""The arbiter's waiting queue: best priority first, then arrival; jobs leave it by age, by id or all at once."""

from __future__ import annotations

from collections import namedtuple

from forge.supervisor.waiting import Waiting

Job = namedtuple("Job", "id attempt priority")


def test_best_priority_first_then_arrival():
    queue = Waiting()
    for job, at in [(Job(1, 1, 5), 0.0), (Job(2, 1, 0), 1.0), (Job(3, 1, 5), 2.0), (Job(4, 1, 0), 3.0)]:
        queue.push(job, at)
    assert queue.first().id == 2
    assert [queue.pop().id for _ in range(len(queue))] == [2, 4, 1, 3]
    assert queue.oldest() is None


def test_jobs_leave_by_age_by_attempt_or_all():
    queue = Waiting()
    for i in range(1, 6):
        queue.push(Job(i, 1, 0), float(i))
    assert queue.oldest() == 1.0
    assert [j.id for j in queue.take_held_since(2.0)] == [1, 2]
    assert queue.take(4, 2) == [] and [j.id for j in queue.take(4, 1)] == [4]
    assert queue.oldest() == 3.0 and queue.first().id == 3
    assert sorted(j.id for j in queue.take_all()) == [3, 5] and len(queue) == 0
