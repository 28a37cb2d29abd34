"""Jobs the fault-injection tests run under real supervisors (module `faultjobs`).

Every job records its execution through faultwork.record (see faultwork.py).
All names start with `fault_`, so this module never collides with tests/apps/testapp.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import time
import uuid

import msgspec
from faultwork import Work, chatty_work, record, work, work_with_children

import forge

__all__ = ["CrashOnce", "Work", "fault_chatty", "fault_crash_once", "fault_hang", "fault_leave_group",
           "fault_leave_group_timed", "fault_segfault", "fault_with_children", "fault_work"]


@forge.job(retry=forge.Retry(max_attempts=25, backoff="fixed", base="0.1s"), timeout="5m")
def fault_work(ctx: forge.JobContext, input: Work) -> None:
    """The plain workload: sleeps input.ms. Many attempts, so only the crash cap can fail it."""
    work(ctx, input)


@forge.job(retry=forge.Retry(max_attempts=25, backoff="fixed", base="0.1s"), timeout="5m")
def fault_with_children(ctx: forge.JobContext, input: Work) -> None:
    """fault_work with two children working as long: one in the worker's process group, one in a session of its
    own. An execution is its whole process tree: none of it may outlive its node's death."""
    work_with_children(ctx, input, lambda seconds: [subprocess.Popen(["sleep", seconds]),
                                                    subprocess.Popen(["sleep", seconds], start_new_session=True)])


def _leave_group(ctx: forge.JobContext, input: Work) -> None:
    """fault_work whose worker moves into the zygote's process group (out of the one a kill signals), with a
    child working as long in a session of its own (out of every group the worker's kill could reach)."""
    os.setpgid(0, os.getpgid(os.getppid()))
    work_with_children(ctx, input, lambda seconds: [subprocess.Popen(["sleep", seconds], start_new_session=True)])


fault_leave_group = forge.job(name="fault_leave_group", timeout="5m",
                              retry=forge.Retry(max_attempts=3, backoff="fixed", base="0.1s"))(_leave_group)
fault_leave_group_timed = forge.job(name="fault_leave_group_timed", timeout="1s",
                                    retry=forge.Retry(max_attempts=2, backoff="fixed", base="0.1s"))(_leave_group)


@forge.job(retry=forge.Retry(max_attempts=3, backoff="fixed", base="0.1s"), timeout="5m")
def fault_chatty(ctx: forge.JobContext, input: Work) -> None:
    """fault_work printing 4 KB every 50 ms to its supervisor's stdout."""
    chatty_work(ctx, input)


@forge.job(retry=forge.Retry(max_attempts=10, backoff="fixed", base="0.1s"))
def fault_segfault(ctx: forge.JobContext, input: Work) -> None:
    """A poison pill: dereferences NULL on every attempt. max_attempts 10 > max_crashes 3."""
    record(ctx, str(uuid.uuid4()), "start")
    ctypes.string_at(0)


@forge.job(heartbeat_timeout="2s", timeout="5m", retry=forge.Retry(max_attempts=3, backoff="fixed", base="0.1s"))
def fault_hang(ctx: forge.JobContext, input: Work) -> str:
    """Hangs without heartbeats on its first attempt; later attempts heartbeat and finish."""
    exec_id = str(uuid.uuid4())
    record(ctx, exec_id, "start")
    if ctx.attempt == 1:
        time.sleep(3600)
    for _ in range(3):
        ctx.heartbeat()
        time.sleep(0.1)
    record(ctx, exec_id, "end")
    return "finished"


class CrashOnce(msgspec.Struct):
    crash: bool = False  # this job's first attempt ends its worker with os._exit(3)


@forge.job(retry=forge.Retry(max_attempts=3, backoff="fixed", base="0.1s"))
def fault_crash_once(ctx: forge.JobContext, input: CrashOnce) -> None:
    """Short (batched behind one another); a crasher exits its worker in the middle of attempt 1, then succeeds."""
    exec_id = str(uuid.uuid4())
    record(ctx, exec_id, "start")
    if input.crash and ctx.attempt == 1:
        os._exit(3)
    record(ctx, exec_id, "end")
