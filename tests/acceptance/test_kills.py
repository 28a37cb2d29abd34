"""Kills that must take: a dead supervisor's job processes die before any rescue, a job that leaves its process
group is killed all the same, and a fork the kernel refuses does not end the node."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from testapp import jobs

import forge

from .. import cgroups
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


# --- a supervisor that dies -------------------------------------------------------


@pytest.mark.parametrize("death", [signal.SIGKILL, signal.SIGABRT], ids=["sigkill", "crash"])
def test_a_dead_supervisors_job_processes_die_before_any_rescue(supervisor, db, tmp_path, death):
    sup = supervisor(workers=1, **LEASES)
    forge.dispatch(db, jobs.spawn_children, jobs.Payload(log=str(tmp_path / "pids"), seconds=60))
    children = _pids(tmp_path / "pids", 3)  # in the worker's group, in a session of its own, a daemon
    processes = [sup.zygote(), *sup.workers(), *children]
    try:
        assert all(alive(pid) for pid in processes), processes
        os.kill(sup.pid, death)  # SIGABRT: the supervisor crashes (core dump disposition), no cleanup of its own
        sup.wait(5)
        # well before heartbeat_timeout (3 s), after which another node may rescue the job
        wait_for(lambda: not any(alive(pid) for pid in processes), timeout=1.5,
                 what=f"every process of the dead supervisor's job {[p for p in processes if alive(p)]} to die")
    finally:
        _kill_survivors(processes)


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


# --- a fork that fails -------------------------------------------------------------


@pytest.fixture
def pids_cgroup():
    """A pids cgroup to hold the zygote under a real process-count limit (skipped where there is none)."""
    with cgroups.pids_cgroup() as group:
        yield group


def test_a_fork_the_kernel_refuses_is_retried_and_the_node_runs_on(supervisor, db, pids_cgroup):
    sup = supervisor(workers=2)
    running = forge.dispatch(db, jobs.nap, jobs.Sleep(seconds=4))
    wait_for(lambda: db.execute("SELECT pid FROM test_events WHERE job_id = %s", (running,)).fetchone(),
             what="the long job to start")
    [busy] = db.execute("SELECT pid FROM test_events WHERE job_id = %s", (running,)).fetchone()
    zygote = sup.zygote()
    [idle] = [pid for pid in sup.workers() if pid != busy]
    (pids_cgroup / "pids.max").write_text("1")  # the zygote alone: its next fork fails with EAGAIN
    (pids_cgroup / "cgroup.procs").write_text(str(zygote))
    os.kill(idle, signal.SIGKILL)  # its replacement cannot be forked
    wait_for(lambda: sup.log().count("could not fork a worker") >= 2 or not sup.running(), timeout=5,
             what="the failed forks, logged")
    assert sup.running() and alive(zygote), f"the node died of a failed fork:\n{sup.log_tail()}"
    (pids_cgroup / "pids.max").write_text("max")
    wait_for(lambda: len(sup.workers()) == 2, timeout=10, what="the replacement worker, once forks succeed")
    wait_for(lambda: completed(db, running), timeout=10, what="the running job")
    after = forge.dispatch_many(db, jobs.double, [jobs.N(n=i) for i in range(4)])
    wait_for(lambda: completed(db, *after), what="jobs after the fork failures")
    assert sup.running()
