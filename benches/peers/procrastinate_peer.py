"""Procrastinate 3.10 behind workloads.Adapter.

Configured as its docs advise for throughput: async tasks, a worker process
per core, each running several jobs at once (concurrency, default 1), with
LISTEN/NOTIFY on. Jobs run inside the worker's event loop: no process isolation.
"""

from __future__ import annotations

import time

from procrastinate import App, PsycopgConnector

from common import Loop, Processes, python_worker
from stamps import write_stamp
from workloads import SqlMonitor

CONCURRENCY = 10
PROCESSES = 2


def make_app(url: str) -> App:
    app = App(connector=PsycopgConnector(conninfo=url))

    @app.task(name="noop")
    async def noop(seq: int = 0) -> None:
        pass

    @app.task(name="stamp")
    async def stamp(seq: int) -> None:
        write_stamp(seq)

    return app


class Producer:
    def __init__(self, url: str) -> None:
        self.run = Loop()
        self.app = self.run(make_app(url).open_async())

    def dispatch(self, task: str, seq: int) -> float:
        self.run(self.app.tasks[task].defer_async(seq=seq))
        return time.time()

    def dispatch_many(self, task: str, count: int) -> None:
        self.run(
            self.app.tasks[task].batch_defer_async(*({"seq": 0} for _ in range(count)))
        )

    def close(self) -> None:
        self.run(self.app.close_async())
        self.run.close()


class Adapter:
    name = "Procrastinate"
    on_postgres = True

    def setup(self, url: str) -> None:
        with make_app(url).open() as app:
            app.schema_manager.apply_schema()

    def teardown(self) -> None:
        """Nothing: the orchestrator drops the database."""

    def producer(self, url: str) -> Producer:
        return Producer(url)

    def start(self, url: str, env: dict[str, str]) -> Processes:
        return Processes([python_worker("procrastinate_peer", url)] * PROCESSES, env)

    def monitor(self, url: str) -> SqlMonitor:
        return SqlMonitor(
            url,
            "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'",
            "SELECT extract(epoch FROM max(at)) FROM procrastinate_events WHERE type = 'succeeded'",
        )


def work(url: str) -> None:
    """One worker process until SIGTERM (Procrastinate installs its own graceful-stop handlers)."""
    make_app(url).run_worker(concurrency=CONCURRENCY)
