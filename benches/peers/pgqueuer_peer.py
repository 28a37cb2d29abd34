"""PgQueuer 1.6 behind workloads.Adapter.

Configured for throughput as its docs and tools advise: asyncpg, async
entrypoints, a larger dequeue batch for short jobs (batch_size, default 10;
250 was the best measured here) and one QueueManager process per core.
Jobs run inside PgQueuer's own event loop: no process isolation.
"""

from __future__ import annotations

import asyncio
import signal
import time

import asyncpg
import uvloop
from pgqueuer import PgQueuer
from pgqueuer.db import AsyncpgDriver
from pgqueuer.queries import Queries

from common import Loop, Processes, python_worker
from stamps import write_stamp
from workloads import SqlMonitor

BATCH_SIZE = 250
PROCESSES = 2


class Producer:
    def __init__(self, url: str) -> None:
        self.run = Loop()
        self.conn = self.run(asyncpg.connect(url))
        self.queries = Queries(AsyncpgDriver(self.conn))

    def dispatch(self, task: str, seq: int) -> float:
        # asyncpg outside a transaction block: the INSERT commits on its own.
        self.run(self.queries.enqueue(task, str(seq).encode(), 0))
        return time.time()

    def dispatch_many(self, task: str, count: int) -> None:
        self.run(self.queries.enqueue([task] * count, [None] * count, [0] * count))

    def close(self) -> None:
        self.run(self.conn.close())
        self.run.close()


class Adapter:
    name = "PgQueuer"
    on_postgres = True

    def setup(self, url: str) -> None:
        async def install() -> None:
            conn = await asyncpg.connect(url)
            try:
                await Queries(AsyncpgDriver(conn)).install()
            finally:
                await conn.close()

        asyncio.run(install())

    def teardown(self) -> None:
        """Nothing: the orchestrator drops the database."""

    def producer(self, url: str) -> Producer:
        return Producer(url)

    def start(self, url: str, env: dict[str, str]) -> Processes:
        return Processes([python_worker("pgqueuer_peer", url)] * PROCESSES, env)

    def monitor(self, url: str) -> SqlMonitor:
        # Finished jobs leave the queue table for pgqueuer_log (written in batches).
        done = "FROM pgqueuer_log WHERE status = 'successful'"
        return SqlMonitor(
            url,
            f"SELECT count(*) {done}",
            f"SELECT extract(epoch FROM max(created)) {done}",
        )


def work(url: str) -> None:
    """One worker process: a QueueManager on its own connection until SIGTERM."""

    async def main() -> None:
        pgq = PgQueuer(AsyncpgDriver(await asyncpg.connect(url)))

        @pgq.entrypoint("noop")
        async def noop(job) -> None:
            pass

        @pgq.entrypoint("stamp")
        async def stamp(job) -> None:
            write_stamp(int(job.payload))

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, pgq.shutdown.set)
        await pgq.run(batch_size=BATCH_SIZE)

    uvloop.run(main())
