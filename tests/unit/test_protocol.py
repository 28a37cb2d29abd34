"""Frames between supervisor, zygote and workers, and the zygote's fork-safety rule."""

from __future__ import annotations

import faulthandler
import os
import signal
import socket
import threading

import pytest

from forge.supervisor.lease import LeaseClock
from forge.supervisor.protocol import Completed, Failed, FrameReader, FromWorker, Log, Progress, encode
from forge.supervisor.settle import describe_exit
from forge.supervisor.zygote import Zygote, ensure_single_threaded


def test_frames_survive_arbitrary_splits():
    messages = [
        Completed(1, 1, b'{"a":1}'),
        Failed(2, 3, True, b'{"type":"X"}'),
        Progress(3, 1, 50, "half"),
        Log(3, 1, "warn", "careful", b'{"k":1}'),
        Log(3, 1, "info", "bare", None),
        Completed(4, 1, None, retiring=True),
    ]
    stream = b"".join(encode(m) for m in messages)
    for chunk in (1, 3, 7, len(stream)):
        reader = FrameReader(FromWorker)
        received = []
        for start in range(0, len(stream), chunk):
            received.extend(reader.feed(stream[start : start + chunk]))
        assert received == messages


def test_receive_reads_from_a_socket_into_its_reused_buffer_until_the_end():
    big = Completed(7, 1, b'"' + b"x" * 600_000 + b'"')  # longer than one read
    small = Progress(8, 1, 10, None)
    ours, theirs = socket.socketpair()
    reader = FrameReader(FromWorker)
    received = []
    with ours, theirs:
        sender = threading.Thread(target=theirs.sendall, args=(encode(big) + encode(small),))
        sender.start()
        while len(received) < 2:
            messages = reader.receive(ours)
            assert messages is not None
            received.extend(messages)
        sender.join()
        theirs.shutdown(socket.SHUT_WR)
        assert reader.receive(ours) is None
    assert received == [big, small]


def test_the_zygote_refuses_to_fork_beside_threads():
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        with pytest.raises(RuntimeError, match="single-threaded"):
            Zygote.start(LeaseClock(), fence_after=30.0)
    finally:
        stop.set()
        thread.join()
    ensure_single_threaded("this test")


def _status(code: int | None = None, signum: int | None = None) -> int:
    pid = os.fork()
    if pid == 0:
        if signum is not None:
            faulthandler.disable()  # pytest's handler would print the fatal signal
            os.kill(os.getpid(), signum)
        os._exit(code or 0)
    return os.waitpid(pid, 0)[1]


def test_exit_descriptions_say_how_the_worker_died():
    assert "exited with status 3" in describe_exit(_status(code=3))
    assert "signal 11 (SIGSEGV)" in describe_exit(_status(signum=signal.SIGSEGV))
    assert "OOM killer" in describe_exit(_status(signum=signal.SIGKILL))
