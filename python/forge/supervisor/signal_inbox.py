"""The supervisor's signals, as the arbiter's loop receives them: a handler only records the signal.

The handlers run between bytecodes, anywhere in the loop; all they do is append the signal to a list, and
Python's wake-up fd (set_wakeup_fd) writes a byte to a pipe the loop's selector watches, so a signal that
arrives while the loop sleeps in select() wakes it. The loop then takes the signals and acts on them.
"""

from __future__ import annotations

import os
import signal


class SignalInbox:
    def __init__(self) -> None:
        self._received: list[int] = []
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def install(self, *signums: signal.Signals) -> None:
        """Record these signals from now on (in the main thread)."""
        signal.set_wakeup_fd(self._wake_w)
        for signum in signums:
            signal.signal(signum, self._record)

    def fileno(self) -> int:
        """Readable once a signal came: select on it, then drain()."""
        return self._wake_r

    def drain(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def take(self) -> list[int]:
        """The signals received since the last call, oldest first."""
        taken, self._received[:] = self._received[:], []
        return taken

    def _record(self, signum: int, _frame: object) -> None:
        self._received.append(signum)
