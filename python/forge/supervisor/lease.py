"""The lease clock: when this node last renewed its leases, shared with the zygote.

The Rust core renews every lease this node holds in one statement per
heartbeat interval. If that has not succeeded for `fence_after` seconds
(75% of heartbeat_timeout), other nodes are about to rescue our jobs, so
our workers must die first: a job must never run twice at once. The arbiter
checks this itself; the zygote checks it too, from this shared page, so
that a supervisor that is frozen (SIGSTOP, a stuck loop) is fenced as well.
"""

from __future__ import annotations

import mmap
import time

#: Fence at this fraction of heartbeat_timeout: well before the rescue, with a heartbeat interval to spare.
FENCE_FRACTION = 0.75


def fence_after(heartbeat_timeout: float) -> float:
    """Seconds without a lease renewal after which a node kills its own workers."""
    return heartbeat_timeout * FENCE_FRACTION


class LeaseClock:
    """A CLOCK_MONOTONIC timestamp in an anonymous shared page, created before the zygote is forked."""

    def __init__(self) -> None:
        self._page = mmap.mmap(-1, mmap.PAGESIZE)  # MAP_SHARED: the zygote sees our writes
        # One aligned 8-byte store or load per access, so the zygote never
        # reads half a write. (struct.pack_into zeroes its target before
        # writing: a reader in between saw 0.0, an age of the whole uptime,
        # and killed every worker.)
        self._stamp = memoryview(self._page).cast("d")
        self.renewed(time.monotonic())

    def renewed(self, at: float) -> None:
        self._stamp[0] = at

    def renewed_at(self) -> float:
        return self._stamp[0]

    def age(self, now: float) -> float:
        return now - self.renewed_at()
