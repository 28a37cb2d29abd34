"""The lease clock page shared by the supervisor and the zygote."""

from __future__ import annotations

import os
import time
import traceback
from typing import NoReturn

from forge.supervisor.lease import LeaseClock


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
