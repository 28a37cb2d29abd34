"""What a worker leaves behind: no descendant of a worker outlives it.

A job's children are in its worker's process group, which the supervisor
signals on a kill, along with the worker itself (signal_worker: the job may
have moved the worker to another group); but a child may start a session of
its own (setsid()), or be orphaned by a double fork, and then no signal to the
group reaches it.
So the zygote and every worker are child subreapers (PR_SET_CHILD_SUBREAPER):
a process orphaned under a worker is re-parented to that worker, and when the
worker ends, everything it leaves is re-parented to the zygote, whose only
children of its own are workers. On every child exit the zygote SIGKILLs its
children that are not workers, before it reports the exit, so nothing a job
started runs on once its worker is gone (killed, crashed or recycled).

This kernel has no /proc/<pid>/task/<tid>/children, so the zygote's children
are found by a scan of /proc (a few ms, once per exit). A cgroup per worker
would do the same without the scan, but needs a writable, delegated cgroup
hierarchy, which a supervisor cannot count on; the subreaper needs no privilege.
"""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Collection

_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Make orphaned descendants of this process its children, not init's."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def signal_worker(pid: int, signum: int) -> None:
    """Send `signum` to a worker and to the process group it leads, whichever of them still exists.

    Both: the job may have moved the worker out of its group (setpgid), or the
    worker may be gone while children of its job remain in the group.
    """
    for send in (os.kill, os.killpg):
        try:
            send(pid, signum)
        except ProcessLookupError:
            pass


def kill_leftovers(workers: Collection[int]) -> list[int]:
    """SIGKILL every child of this process that is not one of `workers`: what dead workers left. Their pids."""
    leftovers = [pid for pid in children(os.getpid()) if pid not in workers]
    for pid in leftovers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return leftovers


def children(parent: int) -> list[int]:
    """The pids whose parent is `parent`, zombies included, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and parent_of(entry) == parent:
            found.append(int(entry))
    return found


def parent_of(pid: int | str) -> int | None:
    """The parent of process `pid` (a zombie too) from /proc; None once it is gone (reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # the name, in parentheses, may hold spaces or parentheses: the fields after the last ")"
            return int(stat.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None
