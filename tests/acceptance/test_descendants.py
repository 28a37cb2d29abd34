"""What a worker leaves behind when it ends: no descendant outlives a killed, recycled or stopped worker, and
every frame a dead worker wrote is read before its job's fate is decided."""

from __future__ import annotations

import os
import signal

import pytest
from testapp import jobs

import forge

from ..supervisors import alive
from .conftest import completed, job_row, wait_for


def test_no_descendant_survives_its_workers_timeout_kill(supervisor, db, tmp_path):
    supervisor(workers=1)
    pid_file = tmp_path / "descendants"
    job_id = forge.dispatch(db, jobs.leave_descendants, jobs.Payload(log=str(pid_file)))
    wait_for(lambda: pid_file.exists() and len(pid_file.read_text().split()) == 2, what="the job's descendants")
    pids = [int(pid) for pid in pid_file.read_text().split()]
    try:
        wait_for(lambda: job_row(db, job_id)["status"] == "failed", what="the timeout kill")
        assert job_row(db, job_id)["last_error"]["type"] == "forge.errors.JobTimeout"
        # one in a session of its own, one a daemon orphaned while the worker ran: neither is in its group
        wait_for(lambda: not any(alive(pid) for pid in pids), timeout=3, what=f"descendants {pids} to be killed")
    finally:
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_running_jobs_daemon_is_left_alone_while_other_workers_end(supervisor, db):
    # Orphaned under its worker, it stays the worker's (a subreaper too), not the zygote's, which kills
    # what it is left at each exit: here, each of the other worker's 20 recycles.
    supervisor(workers=2, max_jobs_per_worker=1)
    keeper = forge.dispatch(db, jobs.keeps_a_daemon, jobs.Sleep(seconds=3))
    wait_for(lambda: job_row(db, keeper)["status"] == "running", what="the job with a daemon")
    others = forge.dispatch_many(db, jobs.quick, [jobs.Crash(code=1)] * 20)
    wait_for(lambda: db.execute("SELECT count(*) FROM forge_jobs WHERE id = ANY(%s) AND status = 'completed'",
                                (others,)).fetchone()[0] == 20, what="the other worker's jobs")
    wait_for(lambda: job_row(db, keeper)["status"] == "completed", what="the job with a daemon")
    row = job_row(db, keeper)
    assert (row["result"], row["attempts"]) == (True, 1)


def test_a_worker_that_exits_after_reporting_never_has_its_job_blamed(supervisor, db):
    # Each worker exits right after reporting its one job, while the zygote reports exits and forks: its
    # Exited notice often comes in the same wake-up as the worker's last frame.
    supervisor(workers=4, max_jobs_per_worker=1)
    ids = forge.dispatch_many(db, jobs.quick, [jobs.Crash(code=1)] * 1000)
    wait_for(lambda: db.execute("SELECT count(*) FROM forge_jobs WHERE id = ANY(%s) AND status IN "
                                "('completed', 'failed')", (ids,)).fetchone()[0] == len(ids),
             timeout=90, what="1000 jobs, a worker each")
    blamed = db.execute("SELECT id, last_error->>'message' FROM forge_jobs WHERE id = ANY(%s) AND status <> "
                        "'completed'", (ids,)).fetchall()
    assert blamed == []


def _child_of_a_returned_job(db, tmp_path, *, new_session: bool) -> int:
    """Run leaves_a_child to completion: the pid of the `sleep 60` it left running."""
    pid_file = tmp_path / "child.pid"
    job_id = forge.dispatch(db, jobs.leaves_a_child, jobs.ChildPid(pid_file=str(pid_file), new_session=new_session))
    wait_for(lambda: completed(db, job_id), what="the job that leaves a child")
    pid = int(pid_file.read_text())
    assert job_row(db, job_id)["result"] == pid
    return pid


@pytest.mark.parametrize("new_session", [False, True], ids=["in-its-group", "setsid"])
def test_a_returned_jobs_child_dies_when_its_worker_is_recycled(supervisor, db, tmp_path, new_session):
    sup = supervisor(workers=1, max_jobs_per_worker=1)
    pid = _child_of_a_returned_job(db, tmp_path, new_session=new_session)
    try:
        wait_for(lambda: not alive(pid), timeout=3, what=f"the child {pid} to die with its recycled worker")
        assert sup.running()
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("new_session", [False, True], ids=["in-its-group", "setsid"])
def test_a_returned_jobs_child_dies_at_a_clean_stop(supervisor, db, tmp_path, new_session):
    sup = supervisor(workers=1)
    pid = _child_of_a_returned_job(db, tmp_path, new_session=new_session)
    try:
        assert alive(pid)  # its worker lives on (no recycling): so does what the job left, until it ends
        assert sup.stop(signal.SIGTERM) == 0
        wait_for(lambda: not alive(pid), timeout=3, what=f"the child {pid} to die with its stopped supervisor")
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
