"""Celery 5.7 with a Redis broker behind workloads.Adapter.

Configured as Celery's optimizing guide advises for many short tasks: the
prefork pool with one child per core, a large prefetch multiplier (64),
results ignored, and the gossip/mingle/heartbeat chatter off. Jobs run in
separate worker processes, as Forge's do.

Celery has no database to read completions from: each child counts its
finished tasks in Redis (one pipelined INCR + SET per task, task_postrun).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import redis
from celery import Celery
from celery.signals import task_postrun

from common import Processes
from stamps import write_stamp

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
QUEUE = "forge_bench"
DONE, LAST = f"{QUEUE}:done", f"{QUEUE}:last"
CONCURRENCY = 2
PREFETCH_MULTIPLIER = 64

app = Celery("forge_bench", broker=REDIS_URL)
app.conf.update(
    task_ignore_result=True,
    task_default_queue=QUEUE,
    worker_prefetch_multiplier=PREFETCH_MULTIPLIER,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="noop")
def noop(seq: int = 0) -> None:
    pass


@app.task(name="stamp")
def stamp(seq: int) -> None:
    write_stamp(seq)


_counter: redis.Redis | None = None


@task_postrun.connect
def _count(**_: object) -> None:
    global _counter
    if _counter is None:  # one client per worker child, made after the fork
        _counter = redis.Redis.from_url(REDIS_URL)
    pipe = _counter.pipeline(transaction=False)
    pipe.incr(DONE)
    pipe.set(LAST, repr(time.time()))
    pipe.execute()


class Producer:
    def dispatch(self, task: str, seq: int) -> float:
        app.tasks[task].apply_async(args=(seq,))  # returns once Redis has the message
        return time.time()

    def dispatch_many(self, task: str, count: int) -> None:
        # Celery has no bulk enqueue: one publish per task over one producer connection.
        with app.producer_or_acquire() as producer:
            for seq in range(count):
                app.tasks[task].apply_async(args=(seq,), producer=producer)

    def close(self) -> None:
        pass


class Monitor:
    def __init__(self) -> None:
        self.redis = redis.Redis.from_url(REDIS_URL)

    def completed(self) -> int:
        return int(self.redis.get(DONE) or 0)

    def last_completion(self) -> float:
        return float(self.redis.get(LAST))

    def close(self) -> None:
        self.redis.close()


class Adapter:
    name = "Celery"
    on_postgres = False

    def setup(self, url: str) -> None:
        """No database to make: start from none of this benchmark's keys."""
        self.teardown()

    def teardown(self) -> None:
        """Delete this benchmark's keys (its queue, counters, kombu's bookkeeping) from Redis."""
        client = redis.Redis.from_url(REDIS_URL)
        keys = [
            QUEUE,
            DONE,
            LAST,
            "unacked",
            "unacked_index",
            "unacked_mutex",
            *client.keys("_kombu.binding.*"),
        ]
        client.delete(*keys)
        client.close()

    def producer(self, url: str) -> Producer:
        return Producer()

    def start(self, url: str, env: dict[str, str]) -> Processes:
        celery = str(Path(sys.executable).with_name("celery"))
        command = [
            celery,
            "--quiet",
            "-A",
            "celery_peer",
            "worker",
            "--pool",
            "prefork",
            "--concurrency",
            str(CONCURRENCY),
            "--prefetch-multiplier",
            str(PREFETCH_MULTIPLIER),
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--queues",
            QUEUE,
            "--loglevel",
            "WARNING",
        ]
        return Processes([command], env)

    def monitor(self, url: str) -> Monitor:
        return Monitor()
