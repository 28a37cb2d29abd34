"""No descendant outlives its worker: orphans come to the subreaper, which kills those that are not workers."""

from __future__ import annotations

import os
import signal
import time
import traceback

from forge.supervisor.descendants import become_subreaper, children, kill_leftovers, signal_worker

from ..supervisors import alive


def _daemon(report: int) -> None:
    """Double fork: a grandchild in a session of its own, orphaned as soon as its parent exits."""
    if os.fork() == 0:
        if os.fork() == 0:
            os.setsid()
            os.write(report, f"{os.getpid()}\n".encode())
            time.sleep(30)
        os._exit(0)


def test_a_subreaper_gets_the_orphans_and_kills_all_but_its_workers():
    # In a child of the test, which becomes the subreaper (pytest itself must not); it exits 0 when all held.
    helper = os.fork()
    if helper == 0:
        code = 1
        try:
            become_subreaper()
            report_r, report_w = os.pipe()
            worker = os.fork()
            if worker == 0:
                time.sleep(30)
                os._exit(0)
            _daemon(report_w)
            orphan = int(os.fdopen(report_r).readline())
            os.wait()  # the daemon's parent
            deadline = time.monotonic() + 5
            while orphan not in children(os.getpid()) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert orphan in children(os.getpid())  # re-parented to us, not to init
            assert kill_leftovers([worker]) == [orphan]
            _, status = os.waitpid(orphan, 0)
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
            assert children(os.getpid()) == [worker]  # the worker is left alone
            os.kill(worker, signal.SIGKILL)
            os.waitpid(worker, 0)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(helper, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_signal_worker_reaches_a_worker_that_left_its_group_and_a_group_whose_leader_is_gone():
    ready_r, ready_w = os.pipe()
    worker = os.fork()
    if worker == 0:  # leads a group, starts a child in it, then moves itself to the test's group
        os.setpgid(0, 0)
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
        os.setpgid(0, os.getpgid(os.getppid()))
        os.write(ready_w, b"x")
        time.sleep(30)
        os._exit(0)
    os.read(ready_r, 1)
    [in_group] = [int(pid) for pid in os.listdir("/proc") if pid.isdigit() and _pgid(int(pid)) == worker]
    signal_worker(worker, signal.SIGKILL)
    _, status = os.waitpid(worker, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL  # by its pid: its group is not its own
    deadline = time.monotonic() + 5
    while alive(in_group) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not alive(in_group), "the child left in the worker's group was not killed"
    signal_worker(worker, signal.SIGKILL)  # both gone: no error


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None
