"""`forge jobs watch ID --json` (the real command) on jobs a real supervisor runs: a JSON line per change of
progress, the ended job last, and the exit status of the job's end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from testapp import operations

import forge

MODULES = ("testapp.jobs", "testapp.operations")
FORGE = str(Path(sys.executable).with_name("forge"))


def _watch(database_url: str, job_id: int) -> tuple[int, list[dict], str]:
    """Run `forge jobs watch JOB_ID --json` to its end: its exit status, the objects it printed, its stderr."""
    done = subprocess.run([FORGE, "jobs", "watch", str(job_id), "--json"], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "FORGE_DATABASE_URL": database_url})
    lines = done.stdout.splitlines()
    return done.returncode, [json.loads(line) for line in lines], done.stderr


def test_watch_json_prints_each_progress_then_the_completed_job_and_exits_0(supervisor, db, app_db):
    supervisor(modules=MODULES)
    job_id = forge.dispatch(db, operations.stepped, operations.Steps(steps=4, seconds=0.8))
    code, seen, stderr = _watch(app_db, job_id)
    assert code == 0, stderr
    shown = forge.Jobs(db).get(job_id)
    assert shown is not None
    columns = {name for (name,) in db.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'forge_jobs'")}
    assert all(set(job) == columns and job["id"] == job_id for job in seen)  # as `jobs show --json` prints it
    progress = [(job["progress"], job["progress_message"]) for job in seen]
    assert progress == sorted(progress, key=lambda step: step[0]), progress
    middle = [step for step in progress if 0 < step[0] < 100]
    assert len(middle) >= 2, progress  # steps of 0.8 s, read every 0.5 s: most are seen on their way
    followed = [(job["status"], job["attempts"], *step) for job, step in zip(seen, progress)]
    assert all(a != b for a, b in zip(followed, followed[1:])), followed  # a line per change, not per read
    assert (seen[-1]["status"], seen[-1]["progress"], seen[-1]["result"]) == ("completed", 100, 4)


def test_watch_json_of_a_job_that_fails_ends_with_it_failed_and_exits_1(supervisor, db, app_db):
    supervisor(modules=MODULES)
    job_id = forge.dispatch(db, operations.stepped, operations.Steps(steps=2, seconds=0.6, fail=True))
    code, seen, stderr = _watch(app_db, job_id)
    assert code == 1
    assert f"job {job_id} ended failed" in stderr and "failed after 2 steps" in stderr
    assert seen[-1]["status"] == "failed" and seen[-1]["last_error"]["type"].endswith("NetworkError")
    assert seen[:-1] and all(job["status"] in ("pending", "claimed", "running") for job in seen[:-1]), seen
