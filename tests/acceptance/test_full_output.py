"""A supervisor whose output nobody reads (issue 12, defect 3), on real supervisors.

Its stdout and stderr are one pipe the test leaves unread; its jobs print 4 KB each into it (their workers
inherit it), so it is soon full and every write to it blocks. Its long jobs must be kept running by live workers
or rescued by another node, never held by a node whose workers are gone; once the pipe is drained, the node runs
jobs again. (Before the supervisor's log queue, its loop blocked on its next log line, the zygote killed every
worker at the fence limit, and the core's heartbeat went on renewing their leases: stranded.)

The log queue keeps the loop out of that write, so the second test freezes the loop in a log write the queue does
not cover (a handler of the app's own, testapp/frozen_loop.py, on a full FIFO): the zygote kills the workers and
the core stops renewing their leases, so another node rescues the jobs. A real freeze of the loop alone, with the
core's thread running on, is what the rule is for; SIGSTOP would stop the core's thread too.
"""

from __future__ import annotations

import fcntl
import os
import signal
import termios
import threading
import time
from collections import Counter
from typing import Any

import psycopg
from testapp import jobs
from testapp.frozen_loop import FROZEN_LOG

import forge
from forge.job import registry

from ..supervisors import alive
from .conftest import completed, finished, wait_for

LEASES = {"heartbeat_interval": "500ms", "heartbeat_timeout": "3s"}
#: How long a job may stay running with its worker gone: the zygote kills a frozen loop's workers when the core
#: stops renewing their leases (both at the fence limit), so until its last renewal (a heartbeat interval, 0.5 s,
#: at most before that) is heartbeat_timeout (3 s) old and a maintenance sweep (every 1 s) rescues it, with 1.5 s
#: to spare.
STRANDED_MAX = 6.0
#: How long the pipe stays full: past the loop's first throughput line (10 s), the zygote's fence (2.25 s) and
#: STRANDED_MAX, and past the long jobs' end.
FULL_FOR = 20.0
NAP = 12.0
FROZEN_MODULES = ["testapp.jobs", "testapp.frozen_loop"]
F_GETPIPE_SZ = 1032


def _buffered(fd: int) -> int:
    """Bytes waiting in the pipe whose read end is `fd`."""
    return int.from_bytes(fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"), "little")


class Executions:
    """The nap jobs' executions, checked at every look: none held running by a node whose worker for it is gone
    for longer than STRANDED_MAX, and no job running in two places at once."""

    def __init__(self, db: psycopg.Connection[Any], ids: list[int]) -> None:
        self.db = db
        self.ids = ids
        self.gone_since: dict[tuple[int, int], float] = {}

    def look(self) -> None:
        starts = self.db.execute(
            """SELECT s.job_id, s.attempt, s.pid FROM test_events s WHERE s.event = 'start' AND s.job_id = ANY(%s)
               AND NOT EXISTS (SELECT 1 FROM test_events e WHERE e.event = 'end' AND e.job_id = s.job_id
                               AND e.attempt = s.attempt)""",
            (self.ids,),
        ).fetchall()
        running = self.db.execute(
            """SELECT id, attempts, round(extract(epoch FROM now() - heartbeat_at)::numeric, 1)
               FROM forge_jobs WHERE id = ANY(%s) AND status = 'running'""",
            (self.ids,),
        ).fetchall()
        live = {(job_id, attempt): pid for job_id, attempt, pid in starts if alive(pid)}
        twice = [job_id for job_id, n in Counter(job_id for job_id, _ in live).items() if n > 1]
        assert not twice, f"jobs {twice} run in two places at once: {live}"
        now = time.monotonic()
        for job_id, attempt, heartbeat_age in running:
            if (job_id, attempt) in live or not any(s[:2] == (job_id, attempt) for s in starts):
                self.gone_since.pop((job_id, attempt), None)
                continue
            since = self.gone_since.setdefault((job_id, attempt), now)
            assert now - since <= STRANDED_MAX, (
                f"job {job_id} (attempt {attempt}) has been running for {now - since:.1f}s with its worker gone, "
                f"its lease renewed {heartbeat_age}s ago"
            )

    def watch(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.look()
            time.sleep(0.2)


def test_jobs_of_a_supervisor_whose_output_is_full_are_never_held_without_their_workers(supervisor, db):
    out_r, out_w = os.pipe()
    try:
        node = supervisor(workers=3, output=out_w, **LEASES)
    finally:
        os.close(out_w)  # the supervisor, its zygote and workers hold it now
    naps = forge.dispatch_many(db, jobs.nap, [jobs.Sleep(seconds=NAP)] * 2)
    executions = Executions(db, naps)
    wait_for(lambda: db.execute("SELECT count(*) FROM forge_jobs WHERE id = ANY(%s) AND status = 'running'",
                                (naps,)).fetchone()[0] == 2, what="both naps running")
    chatty = forge.dispatch_many(db, jobs.chatty, [jobs.Print()] * 40)
    capacity = fcntl.fcntl(out_r, F_GETPIPE_SZ)
    wait_for(lambda: _buffered(out_r) > capacity - jobs.Print().size, what="the supervisor's output pipe to fill")
    rescuer = supervisor(workers=2, **LEASES)  # logs to its file: takes what the full node leaves

    executions.watch(FULL_FOR)
    assert _buffered(out_r) > capacity - jobs.Print().size, "the pipe was not full all along"
    assert completed(db, *naps), "the naps did not complete while the output was full"
    attempts = db.execute("SELECT array_agg(attempts ORDER BY id) FROM forge_jobs WHERE id = ANY(%s)",
                          (naps,)).fetchone()[0]
    assert attempts == [1, 1], f"the naps took attempts {attempts}: the full node's loop stopped running them"

    drain = threading.Thread(target=_drain, args=(out_r,), daemon=True)
    drain.start()
    wait_for(lambda: executions.look() or finished(db, *chatty), timeout=30, what="the chatty jobs to end")
    assert completed(db, *naps, *chatty)
    rescuer.stop()
    again = forge.dispatch_many(db, jobs.nap, [jobs.Sleep(seconds=0.1)] * 2)
    wait_for(lambda: completed(db, *again), what="the drained node to run jobs again")
    pids = {row[0] for row in db.execute("SELECT pid FROM test_events WHERE job_id = ANY(%s)", (again,))}
    assert pids <= set(node.workers()), f"{pids} are not the drained node's workers {node.workers()}"
    assert node.stop(signal.SIGTERM) == 0
    drain.join(10)
    os.close(out_r)


def _drain(fd: int) -> None:
    """Read the pipe to its end (every writer gone)."""
    while os.read(fd, 65536):
        pass


def _running(db: psycopg.Connection[Any], ids: list[int]) -> int:
    return db.execute("SELECT count(*) FROM forge_jobs WHERE id = ANY(%s) AND status = 'running'",
                      (ids,)).fetchone()[0]


def test_a_frozen_loops_jobs_are_rescued_by_another_node_never_held_without_their_workers(supervisor, db,
                                                                                          tmp_path):
    fifo = tmp_path / "app.log"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # open, so the supervisor's open for writing does not wait
    filler = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    try:
        while os.write(filler, b"z" * 4096):
            pass
    except BlockingIOError:
        pass  # full
    os.close(filler)
    frozen = supervisor(modules=FROZEN_MODULES, workers=3, env={FROZEN_LOG: str(fifo)}, **LEASES)
    naps = forge.dispatch_many(db, jobs.nap, [jobs.Sleep(seconds=8.0)] * 2)
    executions = Executions(db, naps)
    wait_for(lambda: _running(db, naps) == 2, what="both naps running")
    first_workers = set(frozen.workers())
    failing = forge.dispatch(db, registry()["picky"], jobs.Fail(error="ValidationProblem"))  # its failure is logged
    wait_for(lambda: executions.look() or db.execute(
        "SELECT count(*) FROM test_events WHERE job_id = %s AND event = 'end'", (failing,)).fetchone()[0],
        what="the job whose failure the loop logs to run")
    rescuer = supervisor(workers=2, **LEASES)

    wait_for(lambda: executions.look() or completed(db, *naps), timeout=30,
             what="the frozen node's naps rescued and run by another node")
    rows = db.execute("SELECT crashes, last_error->>'type' FROM forge_jobs WHERE id = ANY(%s)", (naps,)).fetchall()
    assert rows == [(1, "forge.errors.NodeLost")] * 2, rows  # the started attempt, killed with its worker
    ends = {row[0] for row in db.execute("SELECT pid FROM test_events WHERE job_id = ANY(%s) AND event = 'end'",
                                         (naps,))}
    assert ends <= set(rescuer.workers()), f"the naps ended in {ends}, not on the rescuer {rescuer.workers()}"
    assert set(frozen.workers()) & first_workers == set(), "the frozen node's workers were not killed"

    os.set_blocking(reader, True)
    drain = threading.Thread(target=_drain, args=(reader,), daemon=True)
    drain.start()  # the loop runs again
    wait_for(lambda: "leases are no longer renewed" in frozen.log_path.read_text(), timeout=10,
             what="the frozen node's log to say its leases were not renewed")
    rescuer.stop()
    again = forge.dispatch_many(db, jobs.nap, [jobs.Sleep(seconds=0.1)] * 2)
    wait_for(lambda: executions.look() or completed(db, *again), what="the thawed node to run jobs again")
    assert frozen.stop(signal.SIGTERM) == 0
    drain.join(10)
    os.close(reader)
