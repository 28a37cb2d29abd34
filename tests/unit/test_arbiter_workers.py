"""The arbiter's dealings with one worker, on real sockets with a stand-in core and zygote: a dead worker's socket
is read to its end before its job's fate is decided, its head is charged only if it read that job's frame, and
the jobs queued behind a head that runs long are taken back unstarted."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections import deque, namedtuple
from typing import Any

import pytest

import forge
from forge.config import NodeConfig
from forge.supervisor.arbiter import Arbiter
from forge.supervisor.lease import LeaseClock
from forge.supervisor.protocol import Completed, Exited, FrameReader, RunJob, WorkerSettings, encode, encode_padded
from forge.supervisor.slot import TAKE_BACK_AFTER

Job = namedtuple("Job", "id attempt job_type input parent_id priority max_attempts")


@forge.job(name="arbiter_unit_job")
def _unit_job(ctx: forge.JobContext, input: dict) -> None: ...


class _Core:
    """Records the calls the arbiter makes about jobs."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def start(self, job_id: int, attempt: int) -> None:
        self.calls.append(("start", job_id))

    def complete(self, job_id: int, attempt: int, result: bytes | None) -> None:
        self.calls.append(("complete", job_id))

    def fail(self, job_id: int, attempt: int, retryable: bool, error: bytes, crashed: bool = False) -> None:
        self.calls.append(("fail", job_id))

    def release(self, job_id: int, attempt: int) -> None:
        self.calls.append(("release", job_id))


class _Zygote:
    """Hands out socket pairs as spawned workers; says what the test tells it to."""

    def __init__(self) -> None:
        self.pid = os.getpid()  # the parent of the real processes a test makes workers of
        self.said: list[Any] = []
        self.workers: list[socket.socket] = []  # the worker ends, as a worker holds them

    def spawn(self, slot: int, settings: WorkerSettings) -> tuple[socket.socket, socket.socket]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.workers.append(theirs)
        return ours, theirs

    def receive(self) -> list[Any]:
        said, self.said = self.said, []
        return said


@pytest.fixture
def arbiter() -> Arbiter:
    zygote = _Zygote()
    settings = WorkerSettings(dsn="", max_jobs=None, max_memory=None, log_level="info", owner="")
    node = NodeConfig(workers=1)
    arbiter = Arbiter(node, _Core(), zygote, {"arbiter_unit_job": _unit_job}, settings, LeaseClock())  # type: ignore
    arbiter._spawn(arbiter.slots[0])
    arbiter.slots[0].pid = 4242
    arbiter._by_pid[4242] = arbiter.slots[0]
    return arbiter


def _hand_over(arbiter: Arbiter, *ids: int) -> socket.socket:
    """Hand jobs `ids` to the worker, as _assign does; the worker's end of its socket."""
    slot = arbiter.slots[0]
    for job_id in ids:
        slot.hold(Job(job_id, 1, "arbiter_unit_job", b"{}", None, 0, 3), arbiter.durations)
    arbiter._begin_head(slot, time.monotonic())
    arbiter._write(slot)
    return arbiter.zygote.workers[-1]


def test_a_dead_workers_last_report_is_applied_before_its_fate_is_decided(arbiter):
    worker = _hand_over(arbiter, 1)
    assert FrameReader(RunJob).receive_one(worker).id == 1
    worker.sendall(encode(Completed(1, 1, b"2", retiring=True)))  # its last frame, then it exits
    arbiter.zygote.said = [Exited(4242, 0)]  # the zygote's notice is handled first
    arbiter._on_zygote(0)
    assert arbiter.core.calls == [("start", 1), ("complete", 1)]  # completed, never blamed


def test_a_worker_that_died_before_reading_its_jobs_frame_is_not_charged_for_it(arbiter):
    _hand_over(arbiter, 1, 2)
    arbiter.zygote.said = [Exited(4242, signal.SIGKILL)]  # e.g. the OOM killer, before it read a byte
    arbiter._on_zygote(0)
    assert arbiter.core.calls == [("start", 1), ("release", 1), ("release", 2)]


def test_a_worker_that_died_running_its_job_is_charged_for_it_alone(arbiter):
    worker = _hand_over(arbiter, 1, 2)
    FrameReader(RunJob).receive_one(worker)
    arbiter.zygote.said = [Exited(4242, signal.SIGSEGV)]
    arbiter._on_zygote(0)
    assert arbiter.core.calls == [("start", 1), ("fail", 1), ("release", 2)]


def test_jobs_queued_behind_a_head_that_runs_long_are_taken_back_unstarted(arbiter):
    worker = _hand_over(arbiter, 1, 2, 3)
    assert FrameReader(RunJob).receive_one(worker).id == 1  # it runs job 1, which turns out long
    slot = arbiter.slots[0]
    arbiter._enforce_deadlines(slot.head_since + TAKE_BACK_AFTER / 2)
    assert len(slot.jobs) == 3  # not yet
    arbiter._enforce_deadlines(slot.head_since + TAKE_BACK_AFTER)
    assert [j.id for j in slot.jobs] == [1] and sorted(j.id for j in arbiter._queue.take_all()) == [2, 3]
    assert arbiter.core.calls == [("start", 1)]  # nothing charged or released: they wait for another worker
    assert not slot.accepts("arbiter_unit_job", arbiter.durations)  # none added until job 1 reports
    worker.setblocking(False)
    with pytest.raises(BlockingIOError):
        worker.recv(1)  # and the worker will never read 2 or 3


def test_a_stop_hands_back_the_jobs_queued_behind_a_running_one_at_once(arbiter):
    worker = _hand_over(arbiter, 1, 2, 3)
    FrameReader(RunJob).receive_one(worker)
    arbiter.core.pause = lambda: None
    arbiter.core.take = lambda: []
    arbiter._drain("SIGTERM")
    assert arbiter.core.calls == [("start", 1), ("release", 2), ("release", 3)]
    assert [j.id for j in arbiter.slots[0].jobs] == [1]  # job 1 runs on within the grace
    os.close(worker.detach())


def test_a_frame_the_worker_has_begun_to_read_is_not_taken_back(arbiter):
    worker = _hand_over(arbiter, 1, 2, 3)
    FrameReader(RunJob).receive_one(worker)
    begun = worker.recv(3)  # job 1 just ended, its report not read yet, and the worker began on frame 2
    slot = arbiter.slots[0]
    arbiter._enforce_deadlines(slot.head_since + TAKE_BACK_AFTER)
    assert [j.id for j in slot.jobs] == [1, 2] and [j.id for j in arbiter._queue.take_all()] == [3]
    rest = worker.recv(1 << 16)  # the rest of frame 2 was written again, and nothing of frame 3
    assert begun + rest == encode_padded(RunJob(2, 1, "arbiter_unit_job", b"{}", None))


def test_a_killed_worker_gone_without_an_exit_report_frees_its_slot(arbiter):
    slot = arbiter.slots[0]
    gone = os.fork()
    if gone == 0:
        os._exit(0)
    os.waitpid(gone, 0)  # reaped, by the "zygote" (this process), its Exited never sent
    del arbiter._by_pid[4242]
    slot.pid, arbiter._by_pid[gone] = gone, slot
    worker = _hand_over(arbiter, 1)
    FrameReader(RunJob).receive_one(worker)  # it ran the job
    arbiter._kill(slot, "timeout")
    assert slot.sigkill_at is not None
    arbiter._enforce_deadlines(slot.sigkill_at)  # the SIGKILL is due: the worker is found gone
    assert arbiter.core.calls == [("start", 1), ("fail", 1)]  # its job is settled
    assert (slot.pid, slot.kill_reason, slot.jobs) == (None, None, deque())  # and the slot has a new worker coming
    assert slot.sock is not None and len(arbiter.zygote.workers) == 2
