"""The one helper every system's "stamp" job calls; standard library only, so a
job module that imports it loads nothing else (a no-op app stays a no-op app)."""

from __future__ import annotations

import os
import time


def write_stamp(seq: int) -> None:
    """Called first thing by every system's "stamp" job: when this job started, by the shared clock."""
    now = time.time()
    with open(os.environ["BENCH_STAMPS"], "a") as out:
        out.write(f"{seq} {now:.6f}\n")
