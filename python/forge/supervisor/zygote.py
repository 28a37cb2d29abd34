"""The zygote: a fork server for worker processes.

Forking a process that runs threads (a tokio runtime, a connection pool) can
deadlock the child on a lock some other thread held. So the supervisor forks
the zygote first, while it is still single-threaded and has only imported the
app, and from then on every worker is forked by the zygote, never by the
supervisor. The zygote runs no job code and opens no connection; it only:
  - forks a worker for each Spawn frame, on the socket passed with it; a fork
    the kernel refuses (the pids limit, memory) is logged and retried with
    backoff, and the node runs on with the workers it has meanwhile,
  - reaps its workers, kills what each left behind (descendants.py) and
    reports each exit status (Exited),
  - outlives the supervisor just long enough to kill every worker and all
    they left: when the supervisor closes the channel, exits or dies in any
    way (the channel's end of stream; PR_SET_PDEATHSIG wakes it too), it
    SIGKILLs every worker and, a subreaper, every orphan re-parented to it,
    until it has no child left, then exits. So nothing a job started runs on
    once its supervisor is gone: not when another node rescues the job.
    Workers die with the zygote (PR_SET_PDEATHSIG SIGKILL) should it be killed
    itself; it ignores the supervisor's signals (signals.py);
  - once its first workers are up and it is idle, imports psycopg (which forge
    itself does not load at import), so workers forked later have ctx.db's
    driver loaded; the first ones load it on their first ctx.db.
Frames travel over a SOCK_SEQPACKET pair so each Spawn keeps its socket.
"""

from __future__ import annotations

import ctypes
import logging
import os
import selectors
import signal
import socket
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable

import msgspec

from . import worker
from .descendants import become_subreaper, kill_leftovers, signal_worker
from .lease import LeaseClock, watch_period
from .lease import now as lease_now
from .protocol import Exited, Fenced, FrameReader, FromZygote, Spawn, Spawned, WorkerSettings, encode
from .signals import worker_signals, zygote_signals

_log = logging.getLogger("forge.zygote")

_PR_SET_PDEATHSIG = 1
#: What the kernel sends the zygote when the supervisor dies: only a wake-up (the loop then sees its parent
#: changed), harmless from anyone else. Not SIGKILL: the zygote must live on to kill what the workers started.
_SUPERVISOR_DIED = signal.SIGCHLD
#: How long the zygote waits before it tries again a fork the kernel refused, first and at most, in seconds.
FORK_RETRY_FIRST = 0.1
FORK_RETRY_MAX = 5.0
#: A worker that could not even start its loop exits with this code.
EXIT_WORKER_BOOT_FAILED = 70


class Zygote:
    """The supervisor's handle on its fork server."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock
        self._reader = FrameReader(FromZygote)

    @classmethod
    def start(cls, lease: LeaseClock, fence_after: float, at_exit: Callable[[], None] = lambda: None) -> "Zygote":
        """Fork the zygote. Must run before this process starts any thread. It calls `at_exit` once it killed
        every worker and all they left (machine.MemoryCgroups.remove: their groups can go only then)."""
        ensure_single_threaded("the supervisor")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            ours.close()
            code = 1
            try:
                code = _Server(theirs, lease, fence_after).serve(parent)
                at_exit()
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        theirs.close()
        return cls(pid, ours)

    def fileno(self) -> int:
        return self.sock.fileno()

    def spawn(self, slot: int, settings: WorkerSettings) -> tuple[socket.socket, socket.socket]:
        """Ask for a worker for `slot`; returns both ends of its socket: the supervisor's, and the worker's.

        The supervisor keeps the worker's end too, to take back frames the worker
        has not read yet (outbox.py); so it never reads an end of stream on its own
        end, and learns of the worker's end from the zygote (Exited).
        """
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        frame = encode(Spawn(slot, msgspec.msgpack.encode(settings)))
        socket.send_fds(self.sock, [frame], [theirs.fileno()])
        return ours, theirs

    def receive(self) -> list[FromZygote] | None:
        """Spawned/Exited reports now readable; None when the zygote is gone."""
        try:
            return self._reader.receive(self.sock, socket.MSG_DONTWAIT)
        except BlockingIOError:  # a stale readiness event
            return []

    def stop(self, timeout: float = 5.0) -> None:
        """Close the channel (the zygote exits, its workers with it) and reap it."""
        self.sock.close()
        _wait_or_kill(self.pid, timeout)


def ensure_single_threaded(who: str) -> None:
    """Refuse to fork while other threads run: they could hold locks the child inherits."""
    count = threading.active_count()
    if count != 1:
        names = ", ".join(t.name for t in threading.enumerate())
        raise RuntimeError(f"{who} must be single-threaded to fork, but runs {count} threads: {names}")


def die_with_parent(parent: int, signum: int = signal.SIGKILL) -> None:
    """Ask the kernel to send this process `signum` (by default SIGKILL) when its parent exits."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


class _Server:
    """The zygote's loop: spawn requests, child exits, the lease watch, the supervisor's end."""

    def __init__(self, sock: socket.socket, lease: LeaseClock, fence_after: float) -> None:
        self.sock = sock
        self.lease = lease
        self.fence_after = fence_after
        self.watch_every = watch_period(fence_after)
        self.workers: set[int] = set()
        self.fenced = False
        self.warmed = False
        self.orphaned = False  # the supervisor's end of the channel is closed: it stopped or died
        self.reader = FrameReader(Spawn)
        self.spawns: deque[tuple[Spawn, int]] = deque()  # not forked yet, with their sockets' fds, in order
        self.fork_at = 0.0  # monotonic: when to try forking again after the kernel refused
        self.fork_backoff = FORK_RETRY_FIRST
        self.wake = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def serve(self, parent: int) -> int:
        die_with_parent(parent, _SUPERVISOR_DIED)
        become_subreaper()
        zygote_signals()
        wake_r, wake_w = self.wake
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        selector = selectors.DefaultSelector()
        selector.register(self.sock, selectors.EVENT_READ)
        selector.register(wake_r, selectors.EVENT_READ)
        while True:
            events = selector.select(self._wait_time())
            if not events and self.workers and not self.warmed:
                self._warm()
            for key, _ in events:
                if key.fileobj is self.sock:
                    self._receive()
                else:
                    _drain(wake_r)
                    self._reap()
            if self.orphaned or os.getppid() != parent:  # re-parented: the supervisor died
                break
            self._fork_waiting()
            self._watch_lease()
        self._stop()
        return 0

    def _wait_time(self) -> float:
        """How long the loop may sleep: until the lease's next look, or the next try of a refused fork."""
        if not self.spawns:
            return self.watch_every
        return max(0.0, min(self.watch_every, self.fork_at - time.monotonic()))

    def _receive(self) -> None:
        """Queue the Spawn request now readable (with its socket); the end of stream: the supervisor is gone."""
        data, fds, _flags, _addr = socket.recv_fds(self.sock, 65536, 1)
        if not data:
            self.orphaned = True
        for spawn in self.reader.feed(data):
            self.spawns.append((spawn, fds[0]))

    def _fork_waiting(self) -> None:
        """Fork a worker for each Spawn waiting, in order; one the kernel refuses is tried again after a backoff."""
        while self.spawns and time.monotonic() >= self.fork_at:
            spawn, fd = self.spawns[0]
            try:
                pid = _fork_worker(spawn, fd, self.sock, self.wake)
            except OSError as exc:  # EAGAIN at the pids limit, ENOMEM: the workers running now run on
                _log.error("could not fork a worker for slot %d: %s; trying again in %.1fs",
                           spawn.slot, exc, self.fork_backoff)
                self.fork_at = time.monotonic() + self.fork_backoff
                self.fork_backoff = min(2 * self.fork_backoff, FORK_RETRY_MAX)
                return
            self.spawns.popleft()
            os.close(fd)
            self.fork_backoff = FORK_RETRY_FIRST
            self.workers.add(pid)
            self._tell(Spawned(spawn.slot, pid))

    def _tell(self, frame: FromZygote) -> None:
        """Send the supervisor a report; a supervisor that is gone can take none (the loop then stops)."""
        try:
            self.sock.send(encode(frame))
        except (BrokenPipeError, ConnectionResetError):
            self.orphaned = True

    def _warm(self) -> None:
        """Load what workers need for ctx.db, off the boot's critical path."""
        self.warmed = True
        import psycopg  # noqa: F401 (imported for the import: the workers forked later inherit it)

    def _watch_lease(self) -> None:
        """Kill every worker once when the lease clock goes stale; re-arm when it is renewed."""
        stale = self.lease.age(lease_now()) > self.fence_after
        if stale and not self.fenced and self.workers:
            pids = sorted(self.workers)
            self._tell(Fenced(pids))
            for pid in pids:
                signal_worker(pid, signal.SIGKILL)
        self.fenced = stale

    def _reap(self) -> None:
        """Reap every child that ended; kill what ended workers left, then report their exits."""
        ended = _ended_children()
        exits = [Exited(pid, status) for pid, status in ended if pid in self.workers]
        self.workers.difference_update(exited.pid for exited in exits)
        if ended:  # a leftover that ended may have left children of its own
            kill_leftovers(self.workers)
        for exited in exits:
            self._tell(exited)

    def _stop(self) -> None:
        """The supervisor is done or dead: SIGKILL the workers (and their groups) and all they left, reaping, until
        no child is left. No time limit: a supervisor that stops kills the zygote after a while (Zygote.stop);
        one that died leaves no one else to kill what the jobs started before another node runs them again."""
        for pid in self.workers:
            signal_worker(pid, signal.SIGKILL)
        while kill_leftovers(()):  # each round: what the last one killed left, re-parented here
            _ended_children()
            time.sleep(0.01)


def _ended_children() -> list[tuple[int, int]]:
    """(pid, wait status) of every child that has ended, reaped."""
    ended: list[tuple[int, int]] = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return ended
        if pid == 0:
            return ended
        ended.append((pid, status))


def _fork_worker(spawn: Spawn, fd: int, control: socket.socket, wake: tuple[int, int]) -> int:
    ensure_single_threaded("the zygote")
    zygote = os.getpid()
    pid = os.fork()
    if pid == 0:
        code = EXIT_WORKER_BOOT_FAILED
        try:
            control.close()
            signal.set_wakeup_fd(-1)
            for end in wake:
                os.close(end)
            code = _worker_main(zygote, fd, msgspec.msgpack.decode(spawn.settings, type=WorkerSettings))
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    # Both sides set the process group, so it exists before Spawned is sent and
    # the supervisor can signal the whole group (the job's children too).
    try:
        os.setpgid(pid, pid)
    except OSError:
        pass  # the child already did it, or already exited
    return pid


def _worker_main(zygote: int, fd: int, settings: WorkerSettings) -> int:
    os.setpgid(0, 0)
    die_with_parent(zygote)
    become_subreaper()
    sock = socket.socket(fileno=fd)
    worker_signals(sock)
    for signum in (signal.SIGCHLD, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    logging.getLogger().setLevel(settings.log_level.upper())
    return worker.serve(sock, settings)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _wait_or_kill(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
