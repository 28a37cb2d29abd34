"""Kills that must take: a job that leaves its process group is killed all the same."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from testapp import jobs

import forge

from ..supervisors import alive
from .conftest import completed, finished, job_row, wait_for

LEASES = {"heartbeat_interval": "500ms", "heartbeat_timeout": "3s"}  # fenced at 2.25 s, rescued after 3 s


def _pids(path: Path, count: int) -> list[int]:
    """The `count` pids a job wrote to `path`, once it has."""
    wait_for(lambda: path.exists() and len(path.read_text().split()) >= count, what=f"{count} pids in {path}")
    return [int(pid) for pid in path.read_text().split()]


def _kill_survivors(pids: list[int]) -> None:
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


# --- a job that leaves its process group -------------------------------------------------


def test_a_job_that_leaves_its_process_group_is_killed_at_its_timeout(supervisor, db, tmp_path):
    supervisor(workers=1, kill_grace="1s")
    job_id = forge.dispatch(db, jobs.leave_group_timed, jobs.Payload(log=str(tmp_path / "pids"), seconds=8))
    [worker] = _pids(tmp_path / "pids", 1)
    try:
        wait_for(lambda: finished(db, job_id), timeout=4, what="the timeout kill of the job that left its group")
        row = job_row(db, job_id)
        assert (row["status"], row["last_error"]["type"]) == ("failed", "forge.errors.JobTimeout"), row
        assert not alive(worker)
        # the slot is free again: the one worker runs the next job
        after = forge.dispatch(db, jobs.double, jobs.N(n=4))
        wait_for(lambda: completed(db, after), timeout=5, what="the next job on the slot")
    finally:
        _kill_survivors([worker])


def test_a_job_that_leaves_its_process_group_is_fenced_with_its_paused_node(supervisor, db, tmp_path):
    sup = supervisor(workers=1, **LEASES)
    job_id = forge.dispatch(db, jobs.leave_group, jobs.Payload(log=str(tmp_path / "pids"), seconds=30))
    [worker] = _pids(tmp_path / "pids", 1)
    wait_for(lambda: job_row(db, job_id)["status"] == "running", what="the job to run")
    try:
        os.kill(sup.pid, signal.SIGSTOP)  # its zygote fences its workers once the lease page is stale
        try:
            wait_for(lambda: not alive(worker), timeout=3, what="the paused node's zygote to kill the worker "
                                                                "before the rescue (heartbeat_timeout 3 s)")
        finally:
            os.kill(sup.pid, signal.SIGCONT)
        wait_for(lambda: finished(db, job_id), what="the fenced job's failure")
        assert job_row(db, job_id)["last_error"]["type"] in ("forge.errors.LeaseLost", "forge.errors.NodeLost")
        after = forge.dispatch(db, jobs.double, jobs.N(n=4))
        wait_for(lambda: completed(db, after), timeout=10, what="the next job on the slot")
    finally:
        _kill_survivors([worker])
