"""The lease clock: when this node last renewed its leases, shared with the zygote, and the timing rules of the fence.

The Rust core renews every lease this node holds in one statement per
heartbeat interval. If that has not succeeded for `fence_after` seconds
(75% of heartbeat_timeout), other nodes are about to rescue our jobs, so
our workers must die first: a job must never run twice at once. The arbiter
checks this itself; the zygote checks it too, from this shared page, so
that a supervisor that is frozen (SIGSTOP, a stuck loop) is fenced as well.

Every time here is CLOCK_BOOTTIME, which goes on while the machine is
suspended, as other nodes' clocks and the database's now() do. The core's
lease age is CLOCK_MONOTONIC (Rust's Instant), which stops during a suspend:
after a suspend longer than heartbeat_timeout our leases have been rescued,
yet that age reads as it did before. RenewalDates re-dates the core's
renewals on CLOCK_BOOTTIME so that both fences see the suspend at once.
"""

from __future__ import annotations

import mmap
import time

#: Fence at this fraction of heartbeat_timeout: well before the rescue, with a heartbeat interval to spare.
FENCE_FRACTION = 0.75
#: The arbiter refreshes the page at this fraction of fence_after, at least every MAX_REFRESH seconds.
REFRESH_FRACTION = 0.25
MAX_REFRESH = 1.0
#: The zygote looks at the page at least this often, in seconds.
MAX_WATCH = 0.1
#: What a renewal round and a loop pass may take on a healthy but busy node (a slow commit, a GC pause, a
#: scheduler delay) without this node fencing itself: a lease setting that leaves less is refused (config.py).
MIN_SLACK = 0.1
#: Two renewal times from the core this close together are the same renewal (its age is in whole ms).
_SAME_RENEWAL = 0.002


def now() -> float:
    """The lease clock's time: CLOCK_BOOTTIME, in seconds."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def fence_after(heartbeat_timeout: float) -> float:
    """Seconds without a lease renewal after which a node kills its own workers."""
    return heartbeat_timeout * FENCE_FRACTION


def refresh_period(fence: float) -> float:
    """How often the arbiter writes the page, whatever else it does, for a fence limit of `fence` seconds."""
    return min(MAX_REFRESH, fence * REFRESH_FRACTION)


def watch_period(fence: float) -> float:
    """How often the zygote reads the page: a frozen arbiter is fenced within this of the limit."""
    return min(MAX_WATCH, refresh_period(fence))


def renewal_slack(heartbeat_interval: float, heartbeat_timeout: float) -> float:
    """How long a renewal round may take before a healthy node fences itself.

    The page is at its oldest just before the arbiter sees a renewal: a heartbeat
    interval, the round's own time, then up to a refresh period. Whatever of
    fence_after that leaves is the round's (and the loop's) allowance.
    """
    fence = fence_after(heartbeat_timeout)
    return fence - heartbeat_interval - refresh_period(fence)


class LeaseClock:
    """A CLOCK_BOOTTIME timestamp in an anonymous shared page, created before the zygote is forked."""

    def __init__(self) -> None:
        self._page = mmap.mmap(-1, mmap.PAGESIZE)  # MAP_SHARED: the zygote sees our writes
        # One aligned 8-byte store or load per access, so the zygote never
        # reads half a write. (struct.pack_into zeroes its target before
        # writing: a reader in between saw 0.0, an age of the whole uptime,
        # and killed every worker.)
        self._stamp = memoryview(self._page).cast("d")
        self.renewed(now())

    def renewed(self, at: float) -> None:
        self._stamp[0] = at

    def renewed_at(self) -> float:
        return self._stamp[0]

    def age(self, at: float) -> float:
        return at - self.renewed_at()


class RenewalDates:
    """Dates the core's lease renewals on CLOCK_BOOTTIME, from its CLOCK_MONOTONIC lease age.

    The two clocks differ by the time the machine spent suspended: each time
    that offset grows, the check that saw it is recorded. A suspend happened
    somewhere between that check and the one before, so a renewal made before
    the check gets the offset from before it: the safe side (older), at worst
    one needless fence. A renewal keeps the date it was first seen with.
    """

    def __init__(self, monotonic: float, boottime: float) -> None:
        # (from the check at this monotonic time on, the clocks' offset): one entry per suspend seen
        self._offsets = [(float("-inf"), boottime - monotonic)]
        self._renewal = float("-inf")  # the last renewal seen, on CLOCK_MONOTONIC
        self._date = boottime

    def date(self, age: float, monotonic: float, boottime: float) -> float:
        """When the renewal the core reports `age` seconds old at `monotonic` was made, on CLOCK_BOOTTIME."""
        offset = boottime - monotonic
        if offset > self._offsets[-1][1] + _SAME_RENEWAL:
            self._offsets.append((monotonic, offset))
        renewal = monotonic - age
        if renewal > self._renewal + _SAME_RENEWAL:
            while len(self._offsets) > 1 and self._offsets[1][0] <= renewal:
                del self._offsets[0]  # later renewals come after it too
            self._renewal = renewal
            self._date = renewal + self._offsets[0][1]
        return self._date
