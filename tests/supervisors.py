"""Real forge-supervisor processes for the test suites: each with its own folder, forge.toml and log file.

`forge_toml` writes a supervisor's config. `Supervisor` runs one supervisor: start (again after a stop or a
kill: each start is a new run, with a new node id), wait until it registered in forge_nodes (and until its
workers are forked), stop, read its log and the core totals each run logged, and read its process tree
(supervisor -> zygote -> workers) from /proc. The acceptance suite uses it as it is; the fault suite's
`Node` (tests/faults/harness.py) adds what the faults need. Every wait is bounded. `embedded_folder` is a
config folder for supervisors on the embedded default.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Self, TypeAlias, TypeVar

import psycopg

from forge.db.embedded import EmbeddedPostgres

from .polling import wait_for
from .supervisor_log import core_totals

SUPERVISOR = str(Path(sys.executable).with_name("forge-supervisor"))
START_TIMEOUT = 60.0  # seconds a supervisor gets to register, and then to fork its workers
STOP_TIMEOUT = 30.0

T = TypeVar("T")

# --- forge.toml ------------------------------------------------------------------

TomlValue: TypeAlias = "str | bool | int | float | Sequence[TomlValue]"

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def toml_string(text: str) -> str:
    """`text` as a TOML basic string: quotes, backslashes and control characters escaped."""
    out = []
    for char in text:
        if char in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04X}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def toml_value(value: TomlValue) -> str:
    """A TOML string, boolean, integer, float or array (of any of these) for `value`."""
    if isinstance(value, bool):  # before int: bool is an int
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)  # 0.5, 1e-05, 1e+16: all TOML floats
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML value for {value!r} ({type(value).__name__})")


def toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else toml_string(key)


def forge_toml(database_url: str | None, modules: Sequence[str], node: Mapping[str, TomlValue]) -> str:
    """The text of a forge.toml: [database] url (none without one: the embedded default), [app] modules and
    the [node] table's settings."""
    tables: dict[str, Mapping[str, TomlValue]] = {
        **({} if database_url is None else {"database": {"url": database_url}}),
        "app": {"modules": list(modules)},
        "node": node,
    }
    return "\n".join(
        f"[{name}]\n" + "".join(f"{toml_key(k)} = {toml_value(v)}\n" for k, v in table.items())
        for name, table in tables.items()
    )


# --- /proc -----------------------------------------------------------------------


def process_state(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process from /proc/<pid>/stat, None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return fields[0], int(fields[1])


def alive(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie (a zombie has died; it is only not reaped yet)."""
    state = process_state(pid)
    return state is not None and state[0] not in ("Z", "X")


def stopped(pid: int) -> bool:
    """Whether `pid` is stopped (SIGSTOP)."""
    state = process_state(pid)
    return state is not None and state[0] == "T"


def children(pid: int) -> list[int]:
    """Live children of `pid`, by scanning /proc (this kernel has no /proc/<pid>/task/*/children)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            state = process_state(int(entry))
            if state is not None and state[1] == pid and state[0] not in ("Z", "X"):
                found.append(int(entry))
    return sorted(found)


# --- a supervisor ----------------------------------------------------------------


@contextlib.contextmanager
def embedded_folder(prefix: str) -> Iterator[Path]:
    """A short /tmp config folder for supervisors on the embedded default; its cluster (which outlives them)
    is stopped before the folder is removed."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        EmbeddedPostgres(path / ".forge" / "postgres").stop()
        shutil.rmtree(path, ignore_errors=True)


class Supervisor:
    """One forge-supervisor process (one run at a time) with its own folder, forge.toml and log file.

    `url` is what the supervisor connects to (written in its forge.toml); `direct_url` is PostgreSQL as the
    test reaches it, where it looks for the supervisor's forge_nodes row: the same unless the supervisor
    goes through a proxy. With url None the supervisor starts its embedded PostgreSQL: set direct_url once
    its URL is known, before waiting for the registration. `app_path` is put first on the supervisor's
    PYTHONPATH, for `modules`.
    """

    def __init__(self, folder: Path, url: str | None, *, modules: Sequence[str], node: Mapping[str, TomlValue],
                 app_path: Path, direct_url: str | None = None, name: str | None = None,
                 start_timeout: float = START_TIMEOUT) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.name = name or folder.name
        self.url = url
        self.direct_url = direct_url or url
        self.app_path = app_path
        self.settings = dict(node)
        self.start_timeout = start_timeout
        self.config = folder / "forge.toml"
        self.log_path = folder / "supervisor.log"
        self.config.write_text(forge_toml(url, modules, self.settings))
        self.proc: subprocess.Popen[bytes] | None = None  # the current (last) run
        self.runs: list[tuple[int, str]] = []  # (pid, node id) of every run that registered
        self._procs: list[subprocess.Popen[bytes]] = []

    # -- lifecycle ------------------------------------------------------------

    def start(self, *, env: Mapping[str, str] | None = None, start_new_session: bool = False, wait: bool = True,
              wait_workers: bool = False, output: int | None = None) -> Self:
        """Start a run, appending a line that says so to the log.

        env: variables added to this process's environment (from which FORGE_DATABASE_URL is dropped: the
        config's url is the one); start_new_session: in a session (and process group) of its own; wait: until
        it registers in forge_nodes; wait_workers: and then until its workers are forked; output: a file
        descriptor for its stdout and stderr instead of the log (e.g. a pipe the test reads, or does not).
        """
        inherited = {k: v for k, v in os.environ.items() if k != "FORGE_DATABASE_URL"}
        pythonpath = os.pathsep.join(p for p in (str(self.app_path), inherited.get("PYTHONPATH", "")) if p)
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start {time.strftime('%H:%M:%S')} =====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [SUPERVISOR, "-c", str(self.config)], stdout=log if output is None else output,
                stderr=log if output is None else output, stdin=subprocess.DEVNULL,
                env={**inherited, "PYTHONPATH": pythonpath, **(env or {})}, start_new_session=start_new_session,
            )
        self._procs.append(self.proc)
        if wait:
            self.wait_registered(workers=wait_workers)
        return self

    def wait_registered(self, *, workers: bool = False) -> str:
        """Wait until this run registered in forge_nodes (and, with `workers`, forked as many workers as its
        row says); record it in `runs` and return its node id. AssertionError if it exits or times out."""
        proc = self._proc()
        direct_url = self.direct_url
        assert direct_url is not None, f"{self.name}: no URL to look for its registration at"

        def registered() -> tuple[str, int] | None:
            with psycopg.connect(direct_url, autocommit=True) as conn:
                row = conn.execute(
                    "SELECT id::text, workers FROM forge_nodes WHERE pid = %s ORDER BY started_at DESC LIMIT 1",
                    (proc.pid,),
                ).fetchone()
            return (row[0], row[1]) if row else None

        node_id, count = self._wait_while_running(registered, f"{self.name} to register")
        self.runs.append((proc.pid, node_id))
        if workers:
            self._wait_while_running(lambda: len(self.workers()) >= count, f"{self.name}'s {count} workers to fork")
        return node_id

    def _wait_while_running(self, condition: Callable[[], T | None], what: str) -> T:
        """wait_for(condition) for up to start_timeout s, failing at once (with the log's tail) if the run exits."""
        proc = self._proc()

        def check() -> T | None:
            if proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {proc.returncode}:\n{self.log_tail()}")
            return condition()

        try:
            result: T = wait_for(check, self.start_timeout, what, every=0.05)
        except AssertionError as error:
            if proc.poll() is None:  # timed out: show what it was doing
                raise AssertionError(f"{error}; {self.name}'s log ends:\n{self.log_tail()}") from None
            raise
        return result

    def stop(self, signum: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int | None:
        """Send `signum` (continuing the supervisor first: a paused one would not act on it) and wait for the
        run to exit: its exit code (None if never started). subprocess.TimeoutExpired after `timeout` s."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.send_signal(signum)
        return self.wait(timeout)

    def wait(self, timeout: float) -> int:
        """Wait for the run to exit (reaping it): its exit code. subprocess.TimeoutExpired after `timeout` s."""
        return self._proc().wait(timeout)

    # -- state ----------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self._proc().pid

    @property
    def node_id(self) -> str:
        """The node id of the last run that registered."""
        return self.runs[-1][1]

    @property
    def exit_codes(self) -> list[int | None]:
        """The exit code of every run, oldest first (None: not exited, or not reaped yet)."""
        return [proc.returncode for proc in self._procs]

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def zygote(self) -> int | None:
        """The zygote: the supervisor's (first) live child, which forks the workers."""
        kids = children(self.pid) if self.proc is not None else []
        return kids[0] if kids else None

    def workers(self) -> list[int]:
        """The live workers: the zygote's children."""
        zygote = self.zygote()
        return children(zygote) if zygote is not None else []

    # -- evidence -------------------------------------------------------------

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def core_totals(self) -> list[dict[str, int]]:
        """The core's totals (`core totals: k=v ...`) of every run that stopped cleanly, oldest first."""
        return core_totals(self.log())

    def _proc(self) -> subprocess.Popen[bytes]:
        assert self.proc is not None, f"{self.name} was never started"
        return self.proc
