"""Which idle nodes claim when a job is dispatched (announce.rs), on a real PostgreSQL with several Rust cores.

Each core here is the engine of one supervisor without workers: a thread takes what it claims and completes it
at once. The poll interval is a minute, so a job taken within seconds was taken because of its announcement, not
found by a poll; heartbeats are fast, so every core knows its peers within a fraction of a second.
"""

from __future__ import annotations

import selectors
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest

import forge
from forge._core import Core
from forge.config import NodeConfig
from forge.supervisor.main import core_settings
from tests.polling import wait_for

NODE = dict(workers=1, poll_interval=60.0, heartbeat_interval=0.2, heartbeat_timeout=2.0, maintenance_interval=3600.0)
PICKUP = 5.0  # seconds: far below the poll interval, far above any wait an announcement asks for


@forge.job(name="wakeups_mail")
def mail(ctx: forge.JobContext, input: dict[str, Any]) -> None:
    """Never run: the test completes what the cores take."""


@forge.job(name="wakeups_report")
def report(ctx: forge.JobContext, input: dict[str, Any]) -> None:
    """Never run, as above."""


@forge.job(name="wakeups_render", worker_capability="gpu")
def render(ctx: forge.JobContext, input: dict[str, Any]) -> None:
    """Never run, as above."""


class Nodes:
    """Cores that complete every job they take, and who took what."""

    def __init__(self) -> None:
        self.cores: list[Core] = []
        self.taken: dict[int, int] = {}  # job id -> index of the core that took it
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, url: str, jobs: list[forge.Job[Any]], capabilities: list[str], room: int = 1_000) -> Core:
        node = NodeConfig(worker_capabilities=capabilities, **NODE)
        core = Core(core_settings(node, url, uuid.uuid4(), {j.name: j for j in jobs}))
        core.request(room)
        self.cores.append(core)
        return core

    def run(self) -> None:
        self._thread = threading.Thread(target=self._complete, daemon=True)
        self._thread.start()
        # every core has read its peers (a heartbeat after the last one registered)
        beats = [c.stats()["heartbeats"] for c in self.cores]
        wait_for(lambda: all(c.stats()["heartbeats"] >= b + 2 for c, b in zip(self.cores, beats)),
                 timeout=10, what="two heartbeats of every core")

    def claims(self) -> int:
        return sum(c.stats()["claims"] for c in self.cores)

    def close(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        for core in self.cores:
            core.close()

    def _complete(self) -> None:
        selector = selectors.DefaultSelector()
        for i, core in enumerate(self.cores):
            selector.register(core.fileno(), selectors.EVENT_READ, (i, core))
        while not self._stop.is_set():
            for core in self.cores:
                core.lease_age_ms()  # the supervisor loop's proof of life: without it the cores stop claiming
            for key, _ in selector.select(0.05):
                i, core = key.data
                core.logs()
                taken = core.take()
                for job in taken:
                    core.start(job.id, job.attempt)
                    core.complete(job.id, job.attempt, None)
                    with self._lock:
                        self.taken[job.id] = i
                if taken:
                    core.request(len(taken))
        selector.close()

    def wait_taken(self, ids: list[int]) -> None:
        wait_for(lambda: all(i in self.taken for i in ids), timeout=PICKUP,
                 what=f"{len([i for i in ids if i not in self.taken])} of {len(ids)} jobs taken")


@contextmanager
def nodes() -> Iterator[Nodes]:
    n = Nodes()
    try:
        yield n
    finally:
        n.close()


def _dispatch(url: str, *jobs: forge.Job[Any]) -> list[int]:
    """One transaction per job, in this order, on one connection (so one follows the other within a millisecond)."""
    ids = []
    with psycopg.connect(url) as conn:
        for job in jobs:
            ids.append(forge.dispatch(conn, job, {}))
            conn.commit()
    return ids


def test_one_of_four_idle_nodes_claims_each_announced_job(database_url):
    with nodes() as n:
        for _ in range(4):
            n.add(database_url, [mail], ["general"])
        n.run()
        before = n.claims()
        ids = []
        for _ in range(40):
            ids += _dispatch(database_url, mail)
            time.sleep(0.02)
        n.wait_taken(ids)
        claims = n.claims() - before
    # every node claiming on every NOTIFY made 4 claims a job; a late cleared notice may cost an extra one
    assert claims / len(ids) < 1.6, f"{claims} claims for {len(ids)} jobs"
    assert len(set(n.taken[i] for i in ids)) > 1, "one node took every job: the ranking does not spread them"


def test_jobs_are_taken_whichever_node_the_ranking_picks(database_url):
    """A picked node may have no room: the others take its jobs after their wait. A cleared notice of a node
    that runs other types, sent while they wait (mail right after report), drops none of them."""
    with nodes() as n:
        n.add(database_url, [mail, report], ["general"], room=0)  # picked for about half the jobs, never claims
        n.add(database_url, [mail, report], ["general"])
        n.add(database_url, [mail], ["general"])  # clears mail, never report
        n.add(database_url, [render], ["gpu"])
        n.run()
        ids = []
        for _ in range(40):
            # one transaction each: a claim takes every due job of its node's types, one dispatched beside too
            ids += _dispatch(database_url, report, mail, render)
            time.sleep(0.01)
        n.wait_taken(ids)
        by_type = {}
        with psycopg.connect(database_url) as conn:
            for job_id, job_type in conn.execute("SELECT id, job_type FROM forge_jobs WHERE id = ANY(%s)", (ids,)):
                by_type.setdefault(job_type, set()).add(n.taken[job_id])
    assert by_type == {"wakeups_mail": by_type["wakeups_mail"], "wakeups_report": {1}, "wakeups_render": {3}}
    assert 0 not in by_type["wakeups_mail"]


def test_a_bare_wake_up_makes_every_node_claim(database_url):
    """The engine's own NOTIFY (jobs handed back or rescued) and older dispatchers' payloads name no job."""
    with nodes() as n:
        for _ in range(3):
            n.add(database_url, [mail], ["general"])
        n.run()
        before = n.claims()
        with psycopg.connect(database_url, autocommit=True) as conn:
            job_id = conn.execute("INSERT INTO forge_jobs (job_type, input, capability) VALUES (%s, '{}', 'general') "
                                  "RETURNING id", (mail.name,)).fetchone()[0]
            conn.execute("SELECT pg_notify('forge_jobs', '0')")
        n.wait_taken([job_id])
        wait_for(lambda: n.claims() - before >= 3, timeout=PICKUP, what="a claim by every node")


@pytest.mark.parametrize("long_name", ["type", "capability"])
def test_a_name_too_long_for_an_announcement_wakes_every_node(database_url, long_name):
    name = "n" * 8000
    job = forge.job(name=name if long_name == "type" else f"wakeups_{long_name}",
                    worker_capability=name if long_name == "capability" else "general")(mail.fn)
    with nodes() as n:
        for _ in range(2):
            n.add(database_url, [job], [job.capability])
        n.run()
        ids = _dispatch(database_url, job)
        n.wait_taken(ids)
