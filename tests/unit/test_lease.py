"""The lease clock page shared by the supervisor and the zygote."""

from __future__ import annotations

import os
import time

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
        try:
            end = time.monotonic() + 1.5
            while time.monotonic() < end:
                for _ in range(1_000):
                    clock.renewed(written[0])
                    clock.renewed(written[1])
        finally:
            os._exit(0)
    try:
        reads, odd = 0, []
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            for _ in range(1_000):
                value = clock.renewed_at()
                if value not in written:
                    odd.append(value)
            reads += 1_000
    finally:
        os.waitpid(writer, 0)
    assert not odd, f"{len(odd)} of {reads} reads saw a value never written, e.g. {odd[:3]}"


def test_age_counts_from_the_last_renewal() -> None:
    clock = LeaseClock()
    clock.renewed(100.0)
    assert clock.age(112.5) == 12.5
