"""A worker's outbox: writes that never block, and taking back exactly the frames the worker has not begun to read."""

from __future__ import annotations

import socket

from forge.supervisor.outbox import Outbox
from forge.supervisor.protocol import PADDED_FRAME, FrameReader, RunJob, encode, encode_padded


def _job(job_id: int, size: int) -> RunJob:
    return RunJob(job_id, 1, "t", b'"' + b"x" * size + b'"')


def _frame(job_id: int, size: int = 10) -> bytes:
    return encode_padded(_job(job_id, size))


def _pair() -> tuple[socket.socket, socket.socket]:
    """(the supervisor's end, non-blocking; the worker's end, which the supervisor keeps too)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setblocking(False)
    return ours, theirs


def _assert_nothing_left(sock: socket.socket, why: str) -> None:
    """Nothing more is readable on `sock` now; else fail saying `why`."""
    sock.setblocking(False)
    try:
        sock.recv(1)
        raise AssertionError(why)
    except BlockingIOError:
        pass


def test_one_read_takes_exactly_one_padded_frame_short_or_long():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    exact = next(size for size in range(PADDED_FRAME) if len(encode(_job(3, size))) == PADDED_FRAME)  # no padding
    sizes = {1: 10, 2: 3 * PADDED_FRAME, 3: exact, 4: 0}
    for job_id, size in sizes.items():
        ours.sendall(_frame(job_id, size))
    worker = FrameReader(RunJob)
    for job_id, size in sizes.items():
        frame = worker.receive_one(theirs)
        assert frame is not None and (frame.id, len(frame.input)) == (job_id, size + 2)
    _assert_nothing_left(theirs, "receive_one read past the last frame")


def test_what_the_socket_does_not_take_waits_and_is_written_later():
    ours, theirs = _pair()
    outbox = Outbox()
    outbox.add(_frame(1, 1_000_000))  # far more than a socket buffer
    assert not outbox.write(ours)  # never blocks
    assert 0 < outbox.waiting < 1_000_000
    reader = FrameReader(RunJob)
    theirs.setblocking(False)
    received = []
    while True:
        try:
            received += reader.receive(theirs, socket.MSG_DONTWAIT) or []
        except BlockingIOError:
            if outbox.write(ours) and received:
                break
    assert [r.id for r in received] == [1] and outbox.waiting == 0


def test_frames_the_worker_has_not_begun_come_back_and_the_head_stays():
    ours, theirs = _pair()
    outbox = Outbox()
    for job_id in (1, 2, 3):
        outbox.add(_frame(job_id))
    assert outbox.write(ours)
    worker = FrameReader(RunJob)
    assert worker.receive_one(theirs).id == 1  # the worker runs job 1
    outbox.take_back(theirs)  # 2 and 3 come back out of its socket
    assert outbox.first_read() and outbox.begun() == 1
    outbox.keep(1)
    assert outbox.waiting == 0  # nothing of 2 or 3 is written again
    _assert_nothing_left(theirs, "the worker's socket still held bytes")


def test_a_frame_the_worker_has_begun_to_read_is_completed_never_cut():
    ours, theirs = _pair()
    outbox = Outbox()
    for job_id in (1, 2, 3):
        outbox.add(_frame(job_id))
    outbox.write(ours)
    worker = FrameReader(RunJob)
    assert worker.receive_one(theirs).id == 1
    partial = theirs.recv(7)  # it began on frame 2 when the supervisor took the rest back
    outbox.take_back(theirs)
    assert outbox.begun() == 2
    outbox.keep(2)  # job 3 goes to another worker; the rest of frame 2 goes back
    assert outbox.write(ours)
    rest = worker.receive_one(_Prefixed(partial, theirs))
    assert rest is not None and rest.id == 2
    _assert_nothing_left(theirs, "frame 3 was written again")


def test_the_head_counts_as_started_only_once_its_frame_was_read_whole():
    ours, theirs = _pair()
    outbox = Outbox()
    outbox.add(_frame(1))
    outbox.add(_frame(2))
    assert not outbox.first_read()  # nothing written yet
    outbox.write(ours)
    theirs.recv(5)
    outbox.take_back(theirs)
    assert not outbox.first_read()  # begun, not whole: it cannot have run
    ours2, theirs2 = _pair()
    single = Outbox()
    single.add(_frame(1))
    single.write(ours2)
    FrameReader(RunJob).receive_one(theirs2)
    single.take_back(theirs2)
    assert single.first_read()


def test_a_report_forgets_the_frame_it_ends():
    ours, theirs = _pair()
    outbox = Outbox()
    outbox.add(_frame(1))
    outbox.add(_frame(2))
    outbox.write(ours)
    worker = FrameReader(RunJob)
    worker.receive_one(theirs)
    outbox.reported()  # job 1 reported: job 2 is the head now
    outbox.take_back(theirs)
    assert outbox.begun() == 0 and not outbox.first_read()


class _Prefixed:
    """A socket whose stream starts with bytes already read from it (the worker's half-read frame)."""

    def __init__(self, prefix: bytes, sock: socket.socket) -> None:
        self._prefix = bytearray(prefix)
        self._sock = sock

    def recv_into(self, view: memoryview, size: int, flags: int = 0) -> int:
        if self._prefix:
            count = min(size, len(self._prefix))
            view[:count] = self._prefix[:count]
            del self._prefix[:count]
            return count
        return self._sock.recv_into(view, size, flags)
