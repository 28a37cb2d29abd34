"""The core's heartbeat renews a running job's lease only while the supervisor's loop is seen: on a real
PostgreSQL, the test is the loop, and reads the lease clock (lease_age_ms, as the arbiter does every pass)
or stops reading it as a frozen loop would.

Why this reproduction: a loop frozen in a real supervisor (a blocked log write, a C call holding the GIL)
stops only the Python thread, and the test cannot stop one thread of another process (SIGSTOP stops the
core's thread too, which stops the heartbeat anyway); driving the Core by hand freezes exactly the loop.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import psycopg

import forge
from forge._core import Core
from forge.config import NodeConfig
from forge.supervisor.main import core_settings
from tests.polling import wait_for

# fence_after = 0.75 x heartbeat_timeout = 1.5 s; no maintenance sweep before the test ends (none rescues the job)
NODE = NodeConfig(workers=1, poll_interval=0.05, heartbeat_interval=0.2, heartbeat_timeout=2.0,
                  maintenance_interval=3600.0)
FENCE_AFTER = 1.5


@forge.job(name="core_liveness_noop")
def noop(ctx: forge.JobContext, input: dict[str, Any]) -> None:
    """Never run: the test reports for it by hand."""


def _lease_age(db: psycopg.Connection[Any], job_id: int) -> float:
    """Seconds since the job's lease was renewed, by the database's clock."""
    row = db.execute("SELECT extract(epoch FROM now() - heartbeat_at)::float FROM forge_jobs WHERE id = %s",
                     (job_id,)).fetchone()
    assert row is not None
    return float(row[0])


def _passes(core: Core, seconds: float) -> None:
    """The loop running: it reads the lease clock every 50 ms for `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        core.lease_age_ms()
        time.sleep(0.05)


def test_a_running_lease_is_renewed_only_while_the_loop_reads_the_lease_clock(database_url):
    core = Core(core_settings(NODE, database_url, uuid.uuid4(), {noop.name: noop}))
    try:
        with psycopg.connect(database_url, autocommit=True) as db:
            job_id = db.execute("INSERT INTO forge_jobs (job_type, input) VALUES (%s, '{}') RETURNING id",
                                (noop.name,)).fetchone()[0]
            core.request(1)
            taken: list[Any] = []
            wait_for(lambda: taken.extend(core.take()) or taken, what="the job claimed")
            core.start(job_id, taken[0].attempt)
            _passes(core, 1.0)
            assert _lease_age(db, job_id) < 0.5, "the lease is not renewed while the loop runs"

            # the loop freezes: past the fence limit, the running job's lease is no longer renewed
            wait_for(lambda: _lease_age(db, job_id) > NODE.heartbeat_timeout, timeout=FENCE_AFTER + 4.0,
                     what="the running job's lease to go unrenewed while the loop is frozen")
            assert core.stats()["loop_unseen"] > 0
            assert core.lease_age_ms() > FENCE_AFTER * 1000, "the lease clock moved though nothing was renewed"

            # the loop runs again (this call was its first pass): the lease is renewed again
            wait_for(lambda: core.lease_age_ms() is not None and _lease_age(db, job_id) < 0.5, timeout=3.0,
                     what="the lease renewed again once the loop runs")
            lines = [message for _level, message in core.logs()]
            assert any("leases are no longer renewed" in line for line in lines), lines
            assert any("runs again" in line for line in lines), lines
    finally:
        core.close()
