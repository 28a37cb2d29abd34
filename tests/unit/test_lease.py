"""The lease clock page shared by the supervisor and the zygote, and the timing rules of the self-fence."""

from __future__ import annotations

import os
import time
import traceback
from typing import NoReturn

import pytest

from forge.supervisor import lease
from forge.supervisor.lease import LeaseClock, RenewalDates


def test_the_zygote_never_reads_half_a_renewal() -> None:
    """A reader in another process sees only values that were written, while the writer never stops.

    A torn read looks like a lease as old as the machine's uptime, and the zygote kills every
    worker for it (seen in a benchmark run: struct.pack_into zeroed the stamp before writing it).
    """
    clock = LeaseClock()
    written = (1_000.25, 2_000.5)
    clock.renewed(written[0])
    writer = os.fork()
    if writer == 0:  # the child only writes, then leaves without running any cleanup
        _write_for(clock, written, seconds=1.5)
    try:
        reads, seen, odd = 0, set(), []
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            for _ in range(1_000):
                value = clock.renewed_at()
                seen.add(value)
                if value not in written:
                    odd.append(value)
            reads += 1_000
    finally:
        _, status = os.waitpid(writer, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the writer failed (its traceback is on stderr)"
    assert not odd, f"{len(odd)} of {reads} reads saw a value never written, e.g. {odd[:3]}"
    # the second value reaches the reader only through the shared page: else nothing above was tested
    assert seen == set(written), f"the reader saw only {sorted(seen)}"


def _write_for(clock: LeaseClock, written: tuple[float, float], seconds: float) -> NoReturn:
    """In the forked writer: alternate the two values for `seconds`, then exit 0, or 1 on any error."""
    status = 1
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for _ in range(1_000):
                clock.renewed(written[0])
                clock.renewed(written[1])
        status = 0
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(status)


def test_age_counts_from_the_last_renewal() -> None:
    clock = LeaseClock()
    clock.renewed(100.0)
    assert clock.age(112.5) == 12.5


def test_the_page_holds_the_boot_clock_which_counts_a_suspend() -> None:
    clock = LeaseClock()
    assert abs(clock.renewed_at() - time.clock_gettime(time.CLOCK_BOOTTIME)) < 1.0
    assert abs(lease.now() - time.clock_gettime(time.CLOCK_BOOTTIME)) < 1.0


def test_the_refresh_and_watch_periods_follow_the_fence_limit() -> None:
    assert lease.refresh_period(lease.fence_after(30.0)) == 1.0  # the default: once a second
    assert lease.refresh_period(lease.fence_after(1.0)) == pytest.approx(0.1875)
    assert lease.watch_period(lease.fence_after(30.0)) == 0.1
    assert lease.renewal_slack(0.3, 1.0) == pytest.approx(0.75 - 0.3 - 0.1875)


@pytest.mark.parametrize("timeout", [0.44, 0.5, 1.0, 3.0, 30.0, 3600.0])
@pytest.mark.parametrize("share", [1 / 3, 1 / 5, 1 / 15, 1 / 1000])
def test_every_accepted_setting_renews_before_it_fences_and_fences_before_a_rescue(timeout, share) -> None:
    interval = timeout * share
    if lease.renewal_slack(interval, timeout) < lease.MIN_SLACK:
        pytest.skip("refused by config.py")
    fence = lease.fence_after(timeout)
    # the page at its oldest on a healthy node: an interval, a round of MIN_SLACK, a refresh period
    assert interval + lease.MIN_SLACK + lease.refresh_period(fence) <= fence + 1e-9
    # a frozen arbiter is fenced by the zygote within a watch period, before others rescue at the timeout
    assert fence + lease.watch_period(fence) < timeout


def test_renewals_keep_their_date_and_a_suspend_ages_them() -> None:
    dates = RenewalDates(monotonic=100.0, boottime=1000.0)
    assert dates.date(0.5, 101.0, 1001.0) == 1000.5  # made at monotonic 100.5
    assert dates.date(1.0, 101.5, 1001.5) == 1000.5  # the same renewal, seen again
    # suspended for 60 s: the core's age (monotonic) did not grow, the boot clock did
    assert dates.date(1.2, 101.7, 1061.7) == 1000.5  # so the page shows the suspend at once
    # a round sent before the check that saw the suspend, seen after it, may predate the suspend: dated before it
    assert dates.date(0.4, 102.0, 1062.0) == pytest.approx(1001.6)
    # one made after that check is dated with the offset that includes the suspend
    assert dates.date(0.1, 103.0, 1063.0) == pytest.approx(1062.9)
    # two suspends before the next renewal is seen: a round older than both gets the offset before both
    dates.date(0.2, 103.1, 1123.1)
    dates.date(0.3, 103.2, 1183.2)
    assert dates.date(0.15, 103.2, 1183.2) == pytest.approx(1062.9 + 0.15)
