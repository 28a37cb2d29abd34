"""Processes of the fault tests: a restartable PostgreSQL, forge-supervisor nodes, /proc helpers.

Everything runs on this machine and on 127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from forge.db.embedded import EmbeddedPostgres

from ..polling import wait_for
from ..supervisor_log import core_totals
from . import ledger

APP_DIR = Path(__file__).resolve().parent / "app"
SUPERVISOR = str(Path(sys.executable).with_name("forge-supervisor"))
START_TIMEOUT = 60.0
LEDGER_URL_ENV = "FORGE_FAULT_LEDGER_URL"  # read by app/faultjobs.py in the workers


# --- /proc -----------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process, None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return fields[0], int(fields[1])


def alive(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie (a zombie has died; it is only not reaped yet)."""
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def stopped(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] == "T"


def children(pid: int) -> list[int]:
    """Live children of `pid`, by scanning /proc (this kernel has no /proc/<pid>/task/*/children)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None and stat[1] == pid and stat[0] not in ("Z", "X"):
                found.append(int(entry))
    return sorted(found)


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


DEFAULT_NODE = {
    "workers": 2,
    "poll_interval": "200ms",
    "heartbeat_interval": "500ms",
    "heartbeat_timeout": "3s",
    "shutdown_grace": "3s",
    "kill_grace": "500ms",
    "claim_batch": 20,
}


def _toml(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


class Node:
    """One forge-supervisor in its own session (process group), with a log file.

    `url` is what the node connects to (PostgreSQL directly, or a proxy port);
    `direct_url` is PostgreSQL itself, used by the test and by the jobs' ledger
    rows. A node can be restarted: each start is a new supervisor run (new node id).
    """

    def __init__(self, name: str, folder: Path, url: str, direct_url: str, **settings: Any) -> None:
        self.name = name
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.url = url
        self.direct_url = direct_url
        self.settings = {**DEFAULT_NODE, **settings}
        self.config = folder / "forge.toml"
        self.log_path = folder / "supervisor.log"
        node_lines = "\n".join(f"{k} = {_toml(v)}" for k, v in self.settings.items())
        self.config.write_text(
            f'[database]\nurl = "{url}"\n\n[app]\nmodules = ["faultjobs"]\n\n[node]\n{node_lines}\n'
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs: list[tuple[int, str]] = []  # (pid, node id) of every start
        self.exit_codes: list[int | None] = []

    # -- lifecycle ------------------------------------------------------------

    def start(self, wait: bool = True) -> "Node":
        path = os.pathsep.join(p for p in (str(APP_DIR), os.environ.get("PYTHONPATH", "")) if p)
        env = {**os.environ, "PYTHONPATH": path, LEDGER_URL_ENV: self.direct_url}
        env.pop("FORGE_DATABASE_URL", None)
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start {time.strftime('%H:%M:%S')} =====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [SUPERVISOR, "-c", str(self.config)], stdout=log, stderr=log, env=env,
                start_new_session=True, stdin=subprocess.DEVNULL,
            )
        if wait:
            self.wait_registered()
        return self

    def wait_registered(self) -> str:
        assert self.proc is not None
        pid = self.proc.pid

        def registered() -> str | None:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            with psycopg.connect(self.direct_url, autocommit=True) as conn:
                row = conn.execute(
                    "SELECT id::text FROM forge_nodes WHERE pid = %s ORDER BY started_at DESC LIMIT 1", (pid,)
                ).fetchone()
            return row[0] if row else None

        node_id = wait_for(registered, START_TIMEOUT, f"{self.name} to register", every=0.05)
        # and its workers to be forked
        def forked() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            return len(self.workers()) >= self.settings["workers"]

        wait_for(forked, START_TIMEOUT, f"{self.name}'s workers", every=0.05)
        self.runs.append((pid, node_id))
        return node_id

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def node_id(self) -> str:
        return self.runs[-1][1]

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def zygote(self) -> int | None:
        kids = children(self.pid) if self.proc is not None else []
        return kids[0] if kids else None

    def workers(self) -> list[int]:
        zygote = self.zygote()
        return children(zygote) if zygote is not None else []

    def tree(self) -> list[int]:
        """Supervisor, zygote and workers that are alive."""
        if self.proc is None:
            return []
        zygote = self.zygote()
        pids = [self.pid] if alive(self.pid) else []
        if zygote is not None:
            pids += [zygote, *children(zygote)]
        return pids

    def signal(self, signum: int) -> None:
        """Signal the supervisor process only."""
        os.kill(self.pid, signum)

    def kill_group(self) -> list[int]:
        """SIGKILL the whole node at once: its session's group (supervisor, zygote) and each worker's group."""
        pids = self.tree()
        workers = self.workers()
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for pid in workers:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.reap()
        return pids

    def reap(self, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self.exit_codes.append(code)
        return code

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (continuing it first if stopped) and wait; SIGKILL the group if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        try:
            os.kill(self.pid, signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_group()
            code = None
        self.exit_codes.append(code)
        return code

    def destroy(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill_group()
        elif self.proc is not None:
            for pid in self.tree():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    # -- evidence -------------------------------------------------------------

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def core_totals(self) -> list[dict[str, int]]:
        """The `core totals: k=v ...` line of every run that stopped cleanly."""
        return core_totals(self.log())


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
