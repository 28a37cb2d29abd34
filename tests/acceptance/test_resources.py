"""Jobs that ask for resources (forge.Resources) on real supervisors: admission against [node] cpus/memory/gpus,
CPU affinity, memory limits, CUDA_VISIBLE_DEVICES, and types the node can never fit."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from testapp import resources

import forge
from forge.supervisor import machine

from .conftest import completed, finished, job_row, wait_for

MODULES = ("testapp.resources",)


def _events(db, *job_ids: int) -> dict[int, dict[str, object]]:
    """Each job's first "start ..." event (its text and time) and its "end" time."""
    out: dict[int, dict[str, object]] = {job_id: {} for job_id in job_ids}
    rows = db.execute("SELECT job_id, event, at FROM test_events WHERE job_id = ANY(%s) ORDER BY at",
                      (list(job_ids),)).fetchall()
    for job_id, event, at in rows:
        if event.startswith("start") and "start" not in out[job_id]:
            out[job_id]["start"], out[job_id]["given"] = at, event.removeprefix("start ")
        elif event == "end":
            out[job_id]["end"] = at
    return out


def _node_cgroup(sup) -> Path:
    """The memory cgroup a supervisor makes for its jobs (its app has jobs that ask for memory)."""
    return Path(str(machine.own_cgroup("memory"))) / f"forge-{sup.pid}"


def test_jobs_that_ask_for_all_cpus_run_one_after_the_other_while_others_run_beside(supervisor, db):
    sup = supervisor(modules=MODULES, workers=3, cpus=2)
    big = [forge.dispatch(db, resources.two_cpus, resources.Hold(seconds=1.5)) for _ in range(2)]
    small = [forge.dispatch(db, resources.no_request, resources.Hold(seconds=0.5)) for _ in range(4)]
    wait_for(lambda: completed(db, *big, *small), timeout=30, what="the jobs")
    events = _events(db, *big, *small)
    first, second = sorted(big, key=lambda job_id: events[job_id]["start"])
    assert events[second]["start"] >= events[first]["end"], "two jobs of cpu=2 ran at once on cpus = 2"
    # the jobs without a request ran beside the first one: on the two workers it left
    assert any(events[job_id]["start"] < events[first]["end"] for job_id in small)
    cores = ",".join(map(str, sorted(os.sched_getaffinity(0))[:2]))
    assert events[first]["given"].startswith(f"{cores}|"), events[first]  # pinned to both CPUs given
    assert sup.running()
    group = _node_cgroup(sup)
    assert group.is_dir()
    sup.stop(signal.SIGKILL)  # its zygote kills the workers, then removes the node's memory cgroup
    wait_for(lambda: not group.exists(), timeout=10, what="the removal of the killed node's memory cgroup")


@pytest.mark.skipif(not os.path.exists("/sys/fs/cgroup/memory"), reason="no cgroup v1 memory controller")
def test_jobs_waiting_for_capacity_are_not_claimed_past_the_workers_and_prefetch(supervisor, db):
    supervisor(modules=MODULES, workers=3, cpus=2, prefetch=0)
    big = [forge.dispatch(db, resources.two_cpus, resources.Hold(seconds=0.6)) for _ in range(6)]
    held = []

    def done() -> bool:
        held.append(db.execute("SELECT count(*) FROM forge_jobs WHERE id = ANY(%s) AND status IN ('claimed', "
                               "'running')", (big,)).fetchone()[0])
        return completed(db, *big)

    wait_for(done, timeout=30, what="the jobs", every=0.05)
    # one runs, and the credits of the two idle workers are all the node claims: the jobs waiting for capacity
    # count as queued (with prefetch = 0, nothing more)
    assert 0 < max(held) <= 3, held


def test_a_job_over_its_memory_fails_out_of_memory_and_the_node_runs_on(supervisor, db):
    sup = supervisor(modules=MODULES, workers=2)
    greedy = forge.dispatch(db, resources.greedy, resources.Hold(seconds=0))
    wait_for(lambda: finished(db, greedy), timeout=30, what="the greedy job")
    row = job_row(db, greedy)
    assert row["status"] == "failed", row
    assert row["last_error"]["type"] == "forge.errors.JobOutOfMemory", row["last_error"]
    assert f"memory limit of {256 << 20} bytes (256 MiB)" in row["last_error"]["message"]
    assert not db.execute("SELECT 1 FROM test_events WHERE job_id = %s AND event LIKE 'allocated%%'",
                          (greedy,)).fetchone()
    # the node runs on: a job within its limit, and one without any
    after = [forge.dispatch(db, resources.modest, resources.Hold(seconds=0)),
             forge.dispatch(db, resources.no_request, resources.Hold(seconds=0))]
    wait_for(lambda: completed(db, *after), timeout=30, what="the jobs after it")
    assert sup.running()
    assert "went over its memory limit" in sup.log()
    base = _node_cgroup(sup)
    assert base.is_dir()  # the node's memory cgroup, where the attempts' groups were made...
    assert not list(base.glob("job-*"))  # ...and removed
    sup.stop()
    assert not base.exists()  # removed at the stop


def test_each_gpu_job_sees_only_its_own_device(supervisor, db):
    sup = supervisor(modules=MODULES, workers=3, gpus=["0", "1"])
    gpu_jobs = [forge.dispatch(db, resources.one_gpu, resources.Hold(seconds=1.5)) for _ in range(2)]
    plain = forge.dispatch(db, resources.no_request, resources.Hold(seconds=0))
    wait_for(lambda: completed(db, *gpu_jobs, plain), timeout=30, what="the jobs")
    events = _events(db, *gpu_jobs, plain)
    a, b = (events[job_id] for job_id in gpu_jobs)
    assert a["start"] < b["end"] and b["start"] < a["end"], "the two GPU jobs did not run at once"
    assert sorted(str(e["given"]).split("|")[1] for e in (a, b)) == ["0", "1"]
    assert str(events[plain]["given"]).split("|")[1] == ""
    sup.stop()


def test_a_job_type_larger_than_the_node_is_never_claimed_here(supervisor, db):
    sup = supervisor(modules=MODULES, workers=1, cpus=2)
    too_big = forge.dispatch(db, resources.too_big, resources.Hold(seconds=0))
    fits = forge.dispatch(db, resources.no_request, resources.Hold(seconds=0))
    wait_for(lambda: completed(db, fits), timeout=30, what="the job that fits")
    assert job_row(db, too_big)["status"] == "pending"
    assert "job type too_big is unschedulable on this node: it asks for more than the node has (cpu 64 > 2)" in (
        sup.log())
    sup.stop()
