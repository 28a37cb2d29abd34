"""A supervisor's hold on the embedded cluster: marked used while it runs, and restarted if its postmaster dies.

The supervisor never stops the cluster (it outlives its starters; `forge db stop` stops it). While it runs,
a thread checks every WATCH_PERIOD seconds that the postmaster lives and, when it is gone, starts the
cluster again on its port (EmbeddedPostgres.start: locked across processes, so supervisors that share the
cluster restart it once); the Rust core reconnects by itself once it accepts connections.

A thread may run here although the supervisor must not fork once it has threads: the zygote is forked
before the cluster is reached, and the restart runs pg_ctl through subprocess, whose child execs at once
(CPython's _posixsubprocess runs no Python code between fork or vfork and exec), the pattern that is safe
in a threaded process.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from forge.errors import DatabaseError

if TYPE_CHECKING:  # the supervisor imports this module at boot, before it may load psycopg (embedded.py does)
    from forge.db.embedded import EmbeddedPostgres

__all__ = ["WATCH_PERIOD", "kept_up"]

WATCH_PERIOD = 1.0  # seconds between two checks that the postmaster lives

_log = logging.getLogger("forge.supervisor")


@contextlib.contextmanager
def kept_up(cluster: EmbeddedPostgres, period: float = WATCH_PERIOD) -> Iterator[str]:
    """Use `cluster` while inside: started if it is not, its URL yielded, restarted whenever it dies."""
    with cluster.used():
        url = cluster.start()
        stopping = threading.Event()
        watch = threading.Thread(
            target=_watch, args=(cluster, period, stopping), name="forge-embedded-watch", daemon=True
        )
        watch.start()
        try:
            yield url
        finally:
            stopping.set()
            watch.join()  # a restart under way ends within pg_ctl's timeout


def _watch(cluster: EmbeddedPostgres, period: float, stopping: threading.Event) -> None:
    """Start `cluster` each time it is found down, until `stopping`: a warning when it goes down, at the first
    failed restart of that outage, and when it is back."""
    failures = 0
    while not stopping.wait(period):
        try:
            if not cluster.running():
                if failures == 0:
                    _log.warning("embedded PostgreSQL at %s is down; restarting it", cluster.data_dir)
                cluster.start()
                _log.warning("embedded PostgreSQL at %s is running again", cluster.data_dir)
        except (DatabaseError, OSError) as exc:
            # A killed postmaster's backends hold its shared memory for a moment: the next round tries again.
            if failures == 0:
                _log.warning("embedded PostgreSQL at %s: restart failed, retrying: %s", cluster.data_dir, exc)
            failures += 1
            continue
        failures = 0
