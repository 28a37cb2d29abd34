"""Fault scenarios about a job's whole process tree (issue 12, defects 3, 5 and 6), on real supervisors.

An execution is its worker and every child its job started (faultwork.work_with_children records them); the
ledger's "no overlapping executions" bounds it by the latest end of any of them, so these scenarios watch the
children's deaths too (harness.DeathWatcher) and end with the full invariant check:

- a job that leaves its process group, with a child in a session of its own, under its timeout and under a
  pause of its node past the fence, with another node rescuing it;
- a fork the kernel refuses (a real pids cgroup; skipped where there is none);
- a supervisor whose stdout is a full pipe while it holds long jobs that print a lot: every running job's
  worker is alive, sampled all along, or the job is rescued; never held by a node with no live worker.
"""

from __future__ import annotations

import fcntl
import os
import signal
import termios
import threading
import time
from typing import Any, Callable

import psycopg
import pytest

from ..cgroups import pids_cgroup
from .conftest import Results
from .harness import DeathWatcher, Node, alive, record, stopped, wait_for
from .scenarios import diagnose, enqueue, final_check, stop_all, wait_finished

MakeNode = Callable[..., Node]
CHATTY_LINE = 4096  # bytes fault_chatty prints at a time
F_GETPIPE_SZ = 1032
#: How long a running job may be held with its worker gone: the zygote kills a frozen loop's workers when the
#: core stops renewing their leases (both at the fence limit), then the last renewal (at most a heartbeat
#: interval, 0.5 s, before) must be heartbeat_timeout (3 s) old and a maintenance sweep (every 1 s) must run;
#: 1.5 s to spare.
STRANDED_MAX = 6.0
#: Seconds from the full node's start the pipe stays full: past its loop's first summary line (10 s; a frozen
#: loop would block on it), the zygote's fence (2.25 s) and STRANDED_MAX.
FULL_FOR = 20.0


def _children(conn: psycopg.Connection[Any], ids: list[int]) -> list[int]:
    """The pids of the children the jobs recorded."""
    return [pid for (pid,) in conn.execute(
        "SELECT pid FROM ledger_executions WHERE job_id = ANY(%s) AND event = 'child' ORDER BY seq", (ids,))]


def _ran_to_end(conn: psycopg.Connection[Any], ids: list[int]) -> int:
    """How many executions of the jobs ran to their 'end' row."""
    return conn.execute("SELECT count(*) FROM ledger_executions WHERE job_id = ANY(%s) AND event = 'end'",
                        (ids,)).fetchone()[0]


# --- a job that leaves its process group ---------------------------------------------------


@pytest.mark.timeout(120)
def test_a_job_leaving_its_process_group_is_killed_at_its_timeout(fault_db: str, make_node: MakeNode,
                                                                 results: Results) -> None:
    """Its worker in the zygote's group, its child in a session of its own, an 8 s job with a 1 s timeout and 2
    attempts: each attempt is killed at its timeout (worker and child), the job fails as JobTimeout, never
    completed, and the node's one slot runs the jobs after it."""
    node = make_node("a", workers=1)
    watcher = DeathWatcher(fault_db, [node])
    node.start()
    watcher.start()
    began = time.monotonic()
    timed = enqueue(fault_db, 1, job_type="fault_leave_group_timed", ms=8000, max_attempts=2)
    wait_finished(fault_db, [node], 12, timed, "both attempts' timeout kills")
    failed_after = time.monotonic() - began
    later = enqueue(fault_db, 20, ms=(0, 5))
    wait_finished(fault_db, [node], 20, later, "the jobs after it, on the freed slot")
    with psycopg.connect(fault_db, autocommit=True) as conn:
        row = conn.execute("SELECT status, attempts, last_error->>'type' FROM forge_jobs WHERE id = %s",
                           timed).fetchone()
        kids, ran_to_end = _children(conn, timed), _ran_to_end(conn, timed)
    deaths = watcher.stop()
    stop = stop_all([node])
    report = final_check(fault_db, "leave-group-timeout", expected_failed=timed)
    results.write("leave-group-timeout", {"job": list(row), "failed_after_seconds": round(failed_after, 2),
                                          "children": kids, "children_seen_dead": sorted(set(kids) & set(deaths)),
                                          **stop, **report.figures})
    assert row[0] in ("failed", "dead_letter") and row[1:] == (2, "forge.errors.JobTimeout"), row
    assert ran_to_end == 0, "an attempt of the job that left its group ran to its end: its timeout did not kill it"
    assert len(kids) == 2 and not any(alive(pid) for pid in kids), f"its children {kids} outlived its attempts"
    assert failed_after < 8, f"the job ended after {failed_after:.1f}s: its 1 s timeouts were not enforced"
    assert all(code == 0 for code in stop["exit_codes"].values()), f"the node did not stop cleanly: {stop}"
    assert report.ok, report.text


@pytest.mark.timeout(120)
def test_a_job_leaving_its_process_group_is_fenced_with_its_paused_node(fault_db: str, make_node: MakeNode,
                                                                       results: Results) -> None:
    """Its node SIGSTOPped past the fence while it runs: its zygote kills its worker and its child (in a session
    of its own) before another node rescues it, which the ledger shows (no overlap, children included)."""
    a, b = make_node("a", workers=1), make_node("b", workers=2)
    watcher = DeathWatcher(fault_db, [a, b])
    a.start()
    watcher.start()
    # long enough to be running still when its worker is fenced, b's start and the fence (2.25 s) included
    job = enqueue(fault_db, 1, job_type="fault_leave_group", ms=10000, max_attempts=3)
    with psycopg.connect(fault_db, autocommit=True) as conn:
        wait_for(lambda: len(_children(conn, job)) == 1, 20, "the job's child to start on a")
        [child] = _children(conn, job)
        b.start()
        a.signal(signal.SIGSTOP)
        record(fault_db, "stop_supervisor", pid=a.pid, sup_pid=a.pid)
        paused = time.monotonic()
        assert stopped(a.pid)
        try:
            wait_for(lambda: conn.execute(
                "SELECT count(*) FROM ledger_transitions WHERE job_id = %s AND old_attempts = 1"
                " AND old_status = 'running' AND new_status = 'retry'", job).fetchone()[0], 20,
                f"a's job to be rescued\n{diagnose(fault_db, [a, b])}")
            rescued_after = time.monotonic() - paused
            child_dead_at_rescue = not alive(child)
        finally:
            a.signal(signal.SIGCONT)
        record(fault_db, "cont_supervisor", pid=a.pid, sup_pid=a.pid)
        wait_finished(fault_db, [a, b], 40, job)
        trail = conn.execute("SELECT new_status, new_attempts, error_type FROM ledger_transitions WHERE job_id = %s"
                             " ORDER BY seq", job).fetchall()
        ran_to_end = _ran_to_end(conn, job)
    watcher.stop()
    stop = stop_all([a, b])
    report = final_check(fault_db, "leave-group-pause")
    results.write("leave-group-pause", {"rescued_after_seconds": round(rescued_after, 2), "trail": trail,
                                        "ran_to_end": ran_to_end,
                                        "child_dead_at_rescue": child_dead_at_rescue, **stop, **report.figures})
    assert child_dead_at_rescue, f"the first attempt's child {child} still ran when the job was rescued"
    assert ran_to_end == 1, f"{ran_to_end} executions ran to their end: the fence did not cut the first attempt"
    assert ("retry", 1, "forge.errors.NodeLost") in trail or ("retry", 1, "forge.errors.LeaseLost") in trail, trail
    assert all(code == 0 for code in stop["exit_codes"].values()), f"a node did not stop cleanly: {stop}"
    assert report.ok, report.text


# --- a fork the kernel refuses ---------------------------------------------------------------


@pytest.mark.timeout(120)
def test_a_fork_the_kernel_refuses_leaves_the_node_running(fault_db: str, make_node: MakeNode,
                                                          results: Results) -> None:
    """A worker killed while its zygote is at its pids limit: the replacement's fork fails (and is retried), the
    node runs on with the worker it has, then replaces it once forks succeed; no job lost, invariants hold."""
    with pids_cgroup() as group:
        node = make_node("a", workers=2)
        watcher = DeathWatcher(fault_db, [node])
        node.start()
        watcher.start()
        long = enqueue(fault_db, 1, ms=4000)
        with psycopg.connect(fault_db, autocommit=True) as conn:
            busy = wait_for(lambda: conn.execute("SELECT pid FROM ledger_executions WHERE job_id = %s"
                                                 " AND event = 'start'", long).fetchone(), 20, "the long job")[0]
        short = enqueue(fault_db, 300, ms=(0, 5))
        zygote = node.zygote()
        [other] = [pid for pid in node.workers() if pid != busy]
        (group / "pids.max").write_text("1")  # the zygote alone: its next fork fails with EAGAIN
        (group / "cgroup.procs").write_text(str(zygote))
        os.kill(other, signal.SIGKILL)
        record(fault_db, "kill_worker", pid=other, sup_pid=node.pid)
        wait_for(lambda: node.log().count("could not fork a worker") >= 2 or not node.running(), 10,
                 "the failed forks, logged")
        survived = node.running() and zygote is not None and alive(zygote)
        (group / "pids.max").write_text("max")
        assert survived, f"the node died of a failed fork:\n{node.log_tail()}"
        wait_finished(fault_db, [node], 60, long + short)
        after = enqueue(fault_db, 100, ms=(0, 5))
        wait_finished(fault_db, [node], 30, after, "the jobs after the failed forks")
        workers = len(node.workers())
        watcher.stop()
        stop = stop_all([node])
    report = final_check(fault_db, "fork-failure")
    results.write("fork-failure", {"jobs": 1 + len(short) + len(after), "failed_forks_logged":
                                   node.log().count("could not fork a worker"), "workers_after": workers, **stop,
                                   **report.figures})
    assert workers == 2, f"the node has {workers} workers once forks succeed again, not 2"
    assert all(code == 0 for code in stop["exit_codes"].values()), f"the node did not stop cleanly: {stop}"
    assert report.ok, report.text


# --- a supervisor whose output nobody reads ----------------------------------------------------


def _buffered(fd: int) -> int:
    """Bytes waiting in the pipe whose read end is `fd`."""
    return int.from_bytes(fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"), "little")


class HeldWithoutWorker:
    """Samples every running job: its current attempt's execution (the ledger's 'start' row with no 'end') must
    have a live worker; a job held running with its worker gone longer than STRANDED_MAX is a failure."""

    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(url, autocommit=True)
        self.gone_since: dict[tuple[int, int], float] = {}
        self.samples = 0
        self.worker_gone_max = 0.0

    def look(self) -> None:
        running = self.conn.execute(
            """SELECT j.id, j.attempts, j.claimed_by, e.pid FROM forge_jobs j
               JOIN ledger_executions e ON e.job_id = j.id AND e.attempt = j.attempts AND e.event = 'start'
               WHERE j.status = 'running' AND NOT EXISTS (SELECT 1 FROM ledger_executions d
                   WHERE d.exec_id = e.exec_id AND d.event = 'end')""").fetchall()
        now = time.monotonic()
        held = set()
        for job_id, attempt, node, pid in running:
            self.samples += 1
            if alive(pid):
                continue
            held.add((job_id, attempt))
            since = self.gone_since.setdefault((job_id, attempt), now)
            self.worker_gone_max = max(self.worker_gone_max, now - since)
            assert now - since <= STRANDED_MAX, (
                f"job {job_id} (attempt {attempt}) held running by {node} for {now - since:.1f}s with its worker"
                f" {pid} gone")
        self.gone_since = {key: since for key, since in self.gone_since.items() if key in held}

    def watch(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.look()
            time.sleep(0.2)

    def close(self) -> None:
        self.conn.close()


def _drain(fd: int) -> None:
    """Read the pipe to its end (every writer gone)."""
    while os.read(fd, 65536):
        pass


@pytest.mark.timeout(120)
def test_a_supervisor_whose_output_is_full_never_holds_a_job_without_its_worker(
        fault_db: str, make_node: MakeNode, results: Results) -> None:
    """Node a's stdout and stderr are one pipe nobody reads; two of its three long jobs print 4 KB every 50 ms
    into it (their workers inherit it), so it is soon full and they block in the write. For FULL_FOR, every
    running job (sampled every 0.2 s) has a live worker, or is rescued by node b; the quiet job completes on a;
    once the pipe is drained everything completes, and the invariants hold."""
    out_r, out_w = os.pipe()
    a, b = make_node("a", workers=3), make_node("b", workers=2)
    watcher = DeathWatcher(fault_db, [a, b])
    try:
        a.start(output=out_w)
        a_started = time.monotonic()
    finally:
        os.close(out_w)  # a, its zygote and workers hold it now
    watcher.start()
    sampler = HeldWithoutWorker(fault_db)
    drain = threading.Thread(target=_drain, args=(out_r,), daemon=True)
    try:
        chatty = enqueue(fault_db, 2, job_type="fault_chatty", ms=8000)  # blocked in a write until the drain
        quiet = enqueue(fault_db, 1, ms=6000)
        wait_for(lambda: sampler.look() or _running(fault_db, chatty + quiet) == 3, 20, "a to run the long jobs")
        capacity = fcntl.fcntl(out_r, F_GETPIPE_SZ)
        wait_for(lambda: _buffered(out_r) > capacity - CHATTY_LINE, 20, "a's output pipe to fill")
        b.start()
        short = enqueue(fault_db, 50, ms=(0, 5))  # work flowing beside, for either node
        sampler.watch(FULL_FOR - (time.monotonic() - a_started))
        full_all_along = _buffered(out_r) > capacity - CHATTY_LINE
        quiet_done = _status(fault_db, quiet) == ["completed"]
        drain.start()
        wait_finished(fault_db, [a, b], 40, chatty + quiet + short)
        sampler.look()
    finally:
        sampler.close()
    watcher.stop()
    stop = stop_all([a, b])
    drain.join(10)
    os.close(out_r)
    report = final_check(fault_db, "full-output")
    results.write("full-output", {"samples": sampler.samples,
                                  "worker_gone_max_seconds": round(sampler.worker_gone_max, 2),
                                  "full_all_along": full_all_along, **stop, **report.figures})
    assert full_all_along, "a's output pipe was not full all along"
    assert quiet_done, "the job that prints nothing did not complete on a while its output was full"
    assert all(code == 0 for code in stop["exit_codes"].values()), f"a node did not stop cleanly: {stop}"
    assert report.ok, report.text


def _running(url: str, ids: list[int]) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM forge_jobs WHERE id = ANY(%s) AND status = 'running'",
                            (ids,)).fetchone()[0]


def _status(url: str, ids: list[int]) -> list[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        return [s for (s,) in conn.execute("SELECT status FROM forge_jobs WHERE id = ANY(%s) ORDER BY id", (ids,))]
