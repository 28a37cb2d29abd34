"""Lease and loop settings: any accepted combination works (the lease page is refreshed often enough for the fence
limit it implies), and one the node cannot run with is refused before anything starts, exit status 2."""

from __future__ import annotations

import subprocess

import pytest
from testapp import jobs

import forge

from ..supervisors import SUPERVISOR, toml_string
from .conftest import APPS, job_row, wait_for


def test_a_one_second_lease_runs_a_three_second_job_without_fencing(supervisor, db):
    # fence_after is 0.75 s; the page used to be refreshed only on the loop's 1 s idle wake
    sup = supervisor(workers=1, heartbeat_interval="300ms", heartbeat_timeout="1s")
    job_id = forge.dispatch(db, jobs.nap, jobs.Sleep(seconds=3))
    wait_for(lambda: job_row(db, job_id)["status"] in ("completed", "failed", "retry"), timeout=20, what="the job")
    row = job_row(db, job_id)
    assert (row["status"], row["attempts"], row["crashes"]) == ("completed", 1, 0), row["last_error"]
    log = sup.log()
    assert "killing the workers" not in log and "lease clock stale" not in log
    assert sup.stop() == 0


@pytest.mark.parametrize(
    ("setting", "key"),
    [
        ('heartbeat_interval = "0.1ms"', "node.heartbeat_interval"),
        ('poll_interval = "0.5ms"', "node.poll_interval"),
        ('heartbeat_timeout = "200ms"\nheartbeat_interval = "50ms"', "node.heartbeat_timeout"),
    ],
    ids=["interval-below-1ms", "poll-below-1ms", "lease-too-short-to-fence"],
)
def test_settings_the_node_cannot_run_with_exit_2_naming_the_key(app_db, tmp_path, setting, key):
    config = tmp_path / "forge.toml"
    node = f'[app]\nmodules = ["testapp.jobs"]\n[node]\n{setting}\n'
    config.write_text(f"{node}[database]\nurl = {toml_string(app_db)}\n")
    result = subprocess.run([SUPERVISOR, "-c", str(config)], capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(APPS)})
    assert result.returncode == 2, result.stderr
    assert key in result.stderr and "forge.toml:4" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
