"""A SIGTERM that reaches the supervisor's whole process group (kill -TERM -- -PGID, `timeout`, tini -g) or every
process of its cgroup (systemd's KillMode=control-group) stops the node exactly like one sent to the supervisor
alone: running jobs finish within shutdown_grace, claimed jobs not started go back, nothing is charged, exit 0."""

from __future__ import annotations

import os
import signal

import pytest
from testapp import jobs

import forge

from ..supervisors import children
from .conftest import job_row, wait_for


def _tree(pid: int) -> list[int]:
    """`pid` and every live descendant of it."""
    found = [pid]
    for child in children(pid):
        found += _tree(child)
    return found


def _signal_group(sup) -> None:
    os.killpg(sup.pid, signal.SIGTERM)


def _signal_every_process(sup) -> None:
    for pid in _tree(sup.pid):
        os.kill(pid, signal.SIGTERM)


@pytest.mark.parametrize("send", [_signal_group, _signal_every_process], ids=["process-group", "cgroup"])
def test_a_group_sigterm_stops_the_node_like_a_sigterm_to_the_supervisor(supervisor, db, send):
    sup = supervisor(new_session=True, workers=1, prefetch=2, shutdown_grace="10s")
    assert os.getpgid(sup.pid) == sup.pid
    running = forge.dispatch(db, jobs.nap, jobs.Sleep(seconds=3))
    wait_for(lambda: job_row(db, running)["status"] == "running", what="the job to start")
    waiting = forge.dispatch_many(db, jobs.nap, [jobs.Sleep(seconds=3)] * 2)
    wait_for(lambda: all(job_row(db, i)["status"] == "claimed" for i in waiting), what="the prefetch claim")
    send(sup)
    assert sup.wait(20) == 0, sup.log_tail()
    row = job_row(db, running)
    assert (row["status"], row["attempts"], row["crashes"]) == ("completed", 1, 0), row["last_error"]
    for job_id in waiting:
        row = job_row(db, job_id)
        assert (row["status"], row["attempts"], row["claimed_by"]) == ("pending", 0, None)
    assert db.execute("SELECT count(*) FROM forge_jobs WHERE status IN ('claimed', 'running')").fetchone()[0] == 0
