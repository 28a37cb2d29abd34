"""Processes of the fault tests: a restartable PostgreSQL, forge-supervisor nodes, deaths in the ledger.

Everything runs on this machine and on 127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Self

import psycopg

from forge.db.embedded import EmbeddedPostgres

from ..polling import wait_for
from ..supervisors import STOP_TIMEOUT, Supervisor, alive, children, stopped  # noqa: F401 (tests import stopped)
from . import ledger

APP_DIR = Path(__file__).resolve().parent / "app"
LEDGER_URL_ENV = "FORGE_FAULT_LEDGER_URL"  # read by app/faultjobs.py in the workers


# --- PostgreSQL ------------------------------------------------------------------


class FaultCluster(EmbeddedPostgres):
    """The fault tests' own cluster, which they may restart or stop for a while.

    Stopping and starting go through pg_ctl directly (not start()), so the
    server comes back on the same port: clients keep their URL.
    """

    def pg_ctl(self, *args: str) -> None:
        self._run("pg_ctl", *args)

    def restart(self, mode: str) -> float:
        """pg_ctl stop -m mode, then start; returns seconds it was unreachable (roughly)."""
        began = time.monotonic()
        self.pg_ctl("stop", "-D", str(self.data_dir), "-m", mode, "-w", "-t", "60")
        self.pg_ctl("start", "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", "60")
        self.wait_ready()
        return time.monotonic() - began

    def stop_for(self, seconds: float, mode: str = "fast") -> float:
        began = time.monotonic()
        self.pg_ctl("stop", "-D", str(self.data_dir), "-m", mode, "-w", "-t", "60")
        time.sleep(seconds)
        self.pg_ctl("start", "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", "60")
        self.wait_ready()
        return time.monotonic() - began

    def wait_ready(self) -> None:
        url = self.url
        assert url is not None

        def ok() -> bool:
            try:
                psycopg.connect(url, connect_timeout=2).close()
                return True
            except psycopg.OperationalError:
                return False

        wait_for(ok, 60, "PostgreSQL to accept connections", every=0.05)


# --- nodes -----------------------------------------------------------------------


DEFAULT_NODE: dict[str, Any] = {
    "workers": 2,
    "poll_interval": "200ms",
    "heartbeat_interval": "500ms",
    "heartbeat_timeout": "3s",
    "shutdown_grace": "3s",
    "kill_grace": "500ms",
    "claim_batch": 20,
}


class Node(Supervisor):
    """One forge-supervisor running app/faultjobs.py in its own session (process group), with a log file.

    `url` is what the node connects to (PostgreSQL directly, or a proxy port); `direct_url` is PostgreSQL
    itself, used by the test and by the jobs' ledger rows. A node can be restarted: each start is a new
    supervisor run (new node id, in `runs`). A start waits until the node registered and forked its workers.
    """

    def __init__(self, name: str, folder: Path, url: str, direct_url: str, *,
                 modules: Sequence[str] = ("faultjobs",), **settings: Any) -> None:
        super().__init__(folder, url, modules=list(modules), node={**DEFAULT_NODE, **settings}, app_path=APP_DIR,
                         direct_url=direct_url, name=name)

    def start(self, *, env: Mapping[str, str] | None = None, start_new_session: bool = True, wait: bool = True,
              wait_workers: bool = True, output: int | None = None) -> Self:
        return super().start(env={LEDGER_URL_ENV: self.direct_url, **(env or {})},
                             start_new_session=start_new_session, wait=wait, wait_workers=wait_workers,
                             output=output)

    def tree(self) -> list[int]:
        """Supervisor, zygote and workers that are alive."""
        if self.proc is None:
            return []
        zygote = self.zygote()
        pids = [self.pid] if alive(self.pid) else []
        if zygote is not None:
            pids += [zygote, *children(zygote)]
        return pids

    def kill_group(self) -> list[int]:
        """SIGKILL the whole node at once: its session's group (supervisor, zygote) and each worker's group."""
        pids = self.tree()
        for group in [self.pid, *self.workers()]:
            _sigkill(group, os.killpg)
        self.reap()
        return pids

    def reap(self, timeout: float = 10.0) -> int | None:
        """Wait for the supervisor to exit: its exit code, None if it is still running after `timeout` s."""
        if self.proc is None:
            return None
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, signum: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int | None:
        """Supervisor.stop (SIGTERM), but if the node hangs, SIGKILL it whole (kill_group) and return None."""
        try:
            return super().stop(signum, timeout)
        except subprocess.TimeoutExpired:
            self.kill_group()
            return None

    def destroy(self) -> None:
        """SIGKILL whatever is left of the node."""
        if self.running():
            self.kill_group()
        elif self.proc is not None:
            for pid in self.tree():
                _sigkill(pid, os.kill)

    def signal(self, signum: int) -> None:  # last: in the class body, `signal` is this method from here on
        """Signal the supervisor process only."""
        os.kill(self.pid, signum)


def _sigkill(pid: int, kill: Callable[[int, int], None]) -> None:
    """SIGKILL with `kill` (os.kill: a process, os.killpg: a process group), unless it is gone already."""
    try:
        kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def record(url: str, kind: str, **fields: Any) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        ledger.record_fault(conn, kind, **fields)


def watch_deaths(url: str, pids: list[int], sup_pid: int | None, timeout: float = 5.0,
                 kind: str = "died") -> dict[int, float]:
    """Poll until every pid is dead (zombies count); record each death in the ledger as it is seen.

    Returns pid -> seconds after the call when it was seen dead; pids still alive at the timeout are left out.
    """
    began = time.monotonic()
    left = set(pids)
    seen: dict[int, float] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        while left and time.monotonic() - began < timeout:
            for pid in list(left):
                if not alive(pid):
                    seen[pid] = time.monotonic() - began
                    left.discard(pid)
                    ledger.record_fault(conn, kind, pid=pid, sup_pid=sup_pid)
            time.sleep(0.005)
    return seen


class DeathWatcher:
    """Records in the ledger the death of every worker of `nodes`, and of every child a job recorded ('child'
    rows), as it is seen, in a thread, until stop(): for scenarios where processes die of the engine's own doing
    (self-fencing, timeouts, the kill of what a worker left), which nobody else watches. Stop it only once every
    job has ended: a child recorded after that is not watched, and its execution stays unbounded."""

    def __init__(self, url: str, nodes: list[Node], every: float = 0.01) -> None:
        self.url = url
        self.nodes = nodes
        self.every = every
        self.deaths: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="death-watcher", daemon=True)

    def start(self) -> DeathWatcher:
        self._thread.start()
        return self

    def stop(self) -> list[int]:
        """Stop watching; the pids seen to die."""
        self._stop.set()
        self._thread.join(30)
        return self.deaths

    def _run(self) -> None:
        known: dict[int, int] = {}  # pid of a worker or a job's child -> its supervisor's pid
        unrecorded: list[tuple[int, int, datetime]] = []  # deaths seen while PostgreSQL was down
        children = _RecordedChildren(self.url)
        while not self._stop.wait(self.every):
            for node in self.nodes:
                if node.running():
                    known.update((pid, node.pid) for pid in node.workers() if pid not in known)
            known.update(children.new())
            for pid, sup in list(known.items()):
                if not alive(pid):
                    del known[pid]
                    self.deaths.append(pid)
                    unrecorded.append((pid, sup, datetime.now(timezone.utc)))
            if unrecorded:
                unrecorded = self._record(unrecorded)
        self._record(unrecorded)
        children.close()

    def _record(self, deaths: list[tuple[int, int, datetime]]) -> list[tuple[int, int, datetime]]:
        """Write the deaths with the time each was seen; those not written (PostgreSQL is down) are returned."""
        try:
            with psycopg.connect(self.url, autocommit=True, connect_timeout=2) as conn:
                for pid, sup, at in deaths:
                    ledger.record_fault(conn, "died", pid=pid, sup_pid=sup, at=at)
        except psycopg.OperationalError:
            return deaths
        return []


class _RecordedChildren:
    """The children jobs record in ledger_executions ('child' rows), read as they come, every `every` s at most."""

    def __init__(self, url: str, every: float = 0.05) -> None:
        self.url = url
        self.every = every
        self.seen_seq = 0
        self.read_at = 0.0
        self.conn: psycopg.Connection[Any] | None = None

    def new(self) -> list[tuple[int, int]]:
        """(pid, supervisor pid) of the children recorded since the last call; none while PostgreSQL is down."""
        if time.monotonic() - self.read_at < self.every:
            return []
        self.read_at = time.monotonic()
        try:
            if self.conn is None or self.conn.closed:
                self.conn = psycopg.connect(self.url, autocommit=True, connect_timeout=2)
            rows = self.conn.execute("SELECT seq, pid, sup_pid FROM ledger_executions WHERE event = 'child'"
                                     " AND seq > %s ORDER BY seq", (self.seen_seq,)).fetchall()
        except psycopg.OperationalError:
            self.close()
            return []
        if rows:
            self.seen_seq = rows[-1][0]
        return [(pid, sup) for _, pid, sup in rows]

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
