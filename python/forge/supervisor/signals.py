"""Signal dispositions of the zygote and the workers: a stop signal is the supervisor's alone.

A SIGTERM sent to the supervisor's process group (`kill -TERM -- -PGID`,
`timeout`, `tini -g`) reaches the zygote too; one sent to its whole cgroup
(systemd's KillMode=control-group, `systemctl kill`) reaches every worker and
whatever their jobs started. Either must stop the node exactly like one sent
to the supervisor alone, which drains: running jobs get shutdown_grace and
nothing is charged. So the zygote ignores the supervisor's signals, and so
does a worker, except the SIGTERM of a kill the supervisor ordered.

The supervisor orders a kill by half-closing the worker's socket
(shutdown(SHUT_WR), see slot.Slot.kill) before it signals the worker's
process group. The worker's SIGTERM handler looks for that half-close
(POLLRDHUP); with it, it restores SIGTERM's default and re-raises it, so
the worker dies of SIGTERM as before. Being a Python handler, it runs
between bytecodes: a job stuck in C code dies only by the SIGKILL that
follows after kill_grace. The job's own children in the worker's group get
the supervisor's SIGTERM directly. The handlers are Python functions, not
SIG_IGN, so programs a job executes start with the default dispositions.
"""

from __future__ import annotations

import os
import select
import signal
import socket
from types import FrameType

#: The signals the supervisor acts on (arbiter.py): stop, stop, kill now, dump state.
SUPERVISOR_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1)


def zygote_signals() -> None:
    """The zygote ignores the supervisor's signals: it dies with the supervisor, never before it."""
    for signum in SUPERVISOR_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def worker_signals(sock: socket.socket) -> None:
    """A worker ignores the supervisor's signals, but dies of a SIGTERM once the supervisor half-closed `sock`."""
    hung_up = select.poll()
    hung_up.register(sock.fileno(), select.POLLRDHUP)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGTERM and hung_up.poll(0):
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    for signum in SUPERVISOR_SIGNALS:
        signal.signal(signum, on_signal)
