"""Signal dispositions: the zygote and a worker outlive the supervisor's signals when they reach a whole process
group or cgroup; a worker dies of a SIGTERM once the supervisor has half-closed its socket (its own kill)."""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest

from forge.supervisor.signals import SUPERVISOR_SIGNALS, worker_signals, zygote_signals


def _child(setup) -> int:
    """Fork a child that runs `setup`, says so on a pipe, then sleeps; its pid once it is set up."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            setup()
            os.write(ready_w, b"x")
            time.sleep(30)
        finally:
            os._exit(0)
    os.close(ready_w)
    assert os.read(ready_r, 1) == b"x"
    os.close(ready_r)
    return pid


def _exit_within(pid: int, seconds: float) -> int | None:
    """The child's wait status if it ends within `seconds`, else None."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.01)
    return None


@pytest.mark.parametrize("kind", ["zygote", "worker"])
def test_the_supervisors_signals_reaching_a_group_are_ignored(kind):
    ours, theirs = socket.socketpair()
    pid = _child(zygote_signals if kind == "zygote" else lambda: worker_signals(theirs))
    try:
        for signum in SUPERVISOR_SIGNALS:
            os.kill(pid, signum)
        assert _exit_within(pid, 0.3) is None
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_a_worker_dies_of_sigterm_once_the_supervisor_half_closed_its_socket():
    ours, theirs = socket.socketpair()
    pid = _child(lambda: worker_signals(theirs))
    ours.shutdown(socket.SHUT_WR)  # what slot.Slot.kill does before it signals
    os.kill(pid, signal.SIGTERM)
    status = _exit_within(pid, 5)
    assert status is not None and os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM
