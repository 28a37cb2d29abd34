"""Lifecycle and retention under real supervisors: exhausted jobs reach the dead letter queue (the node's
dead_letter_after, or the job's own), and the maintenance sweep prunes completed, cancelled, discarded and
expired dead-letter rows past their retention while jobs keep flowing."""

from __future__ import annotations

import functools
import threading
import time
from datetime import timedelta
from typing import Callable

import pytest
from testapp import lifecycle

import forge

from .conftest import Supervisor, wait_for

# The README's query ("When jobs fail"): the dead letter queue, newest failure first.
README_QUERY = "SELECT * FROM forge_jobs WHERE status = 'dead_letter' ORDER BY failed_at DESC"
MODULES = ("testapp.jobs", "testapp.lifecycle")


@pytest.fixture
def node(supervisor: Callable[..., Supervisor]) -> Callable[..., Supervisor]:
    """Factory: node(retention={...}, **[node] settings) starts a supervisor with exactly those settings
    (the node's own defaults for the rest, dead_letter_after included) and a [retention] table."""
    return functools.partial(supervisor, modules=MODULES, node_defaults=False)


def status(db, job_id: int) -> str | None:
    row = db.execute("SELECT status FROM forge_jobs WHERE id = %s", (job_id,)).fetchone()
    return None if row is None else row[0]


def test_exhausted_jobs_reach_the_dead_letter_queue_with_the_default_settings(node, db):
    node()
    failing = forge.dispatch(db, lifecycle.fails_for_good, {"n": 1})
    late = forge.dispatch(db, lifecycle.dead_letters_late, {"n": 2})
    wait_for(lambda: status(db, failing) == "dead_letter", timeout=15, what="the exhausted job's dead letter")
    found = db.execute(README_QUERY).fetchall()
    assert [row[0] for row in found] == [failing]
    row = db.execute("SELECT failed_at, dead_lettered_at, last_error->>'message', attempts FROM forge_jobs "
                     "WHERE id = %s", (failing,)).fetchone()
    assert row[0] <= row[1] and row[2] == f"job {failing} fails for good" and row[3] == 1
    # The job's own dead_letter_after (1h) is on its row and holds it in 'failed' past the node's default (0).
    wait_for(lambda: status(db, late) == "failed", what="the late job's failure")
    time.sleep(2.5)  # two maintenance rounds at the default interval of 1 s
    assert status(db, late) == "failed"
    kept = db.execute("SELECT dead_letter_after, dead_letter_retain FROM forge_jobs WHERE id = %s", (late,)).fetchone()
    assert kept == (timedelta(hours=1), timedelta(days=2))


def test_a_jobs_own_dead_letter_after_overrides_the_nodes(node, db):
    node(dead_letter_after="1h", maintenance_interval="200ms")
    slow = forge.dispatch(db, lifecycle.fails_for_good, {"n": 1})
    at_once = forge.dispatch(db, lifecycle.dead_letters_at_once, {"n": 2})
    wait_for(lambda: status(db, at_once) == "dead_letter", timeout=15, what="the job's own dead_letter_after=0")
    assert status(db, slow) == "failed"


def insert_ended(db, status: str, *, ago: str, count: int) -> list[int]:
    """Rows cancelled, discarded or dead-lettered `ago` (cancelled_at, discarded_at, dead_lettered_at; failed_at
    too, as the API sets it), created an hour before that."""
    rows = db.execute(
        "INSERT INTO forge_jobs (job_type, input, status, failed_at, dead_lettered_at, cancelled_at, discarded_at,"
        "                        created_at)"
        " SELECT 'ran', '{\"n\": 0}', %(status)s, now() - %(ago)s::interval,"
        "        CASE WHEN %(status)s = 'dead_letter' THEN now() - %(ago)s::interval END,"
        "        CASE WHEN %(status)s = 'cancelled' THEN now() - %(ago)s::interval END,"
        "        CASE WHEN %(status)s = 'discarded' THEN now() - %(ago)s::interval END,"
        "        now() - %(ago)s::interval - interval '1 hour'"
        " FROM generate_series(1, %(count)s) RETURNING id",
        {"status": status, "ago": ago, "count": count},
    ).fetchall()
    return [r[0] for r in rows]


def existing(db, ids: list[int]) -> set[int]:
    return {r[0] for r in db.execute("SELECT id FROM forge_jobs WHERE id = ANY(%s)", (ids,))}


def ran(db) -> set[int]:
    return {r[0] for r in db.execute("SELECT job_id FROM test_events WHERE event = 'start'")}


class Flow:
    """Dispatches batches of `ran` jobs from a thread until stopped; `ids` are every job it dispatched."""

    def __init__(self, url: str) -> None:
        self.url, self.ids, self.stopped = url, [], threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stopped.is_set():
                self.ids.extend(forge.dispatch_many(conn, lifecycle.ran, [{"n": i} for i in range(50)]))
                time.sleep(0.05)

    def __enter__(self) -> Flow:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join(10)


def test_finished_rows_are_pruned_after_their_retention_while_jobs_keep_flowing(node, db, app_db):
    node(maintenance_interval="200ms", dead_letter_retain="3s",
         retention={"completed": "4s", "cancelled": "1h", "discarded": "1h"})
    old = {s: insert_ended(db, s, ago="2 hours", count=1500) for s in ("cancelled", "discarded", "dead_letter")}
    fresh = {s: insert_ended(db, s, ago="0 s", count=5) for s in ("cancelled", "discarded", "dead_letter")}
    waiting = db.execute("INSERT INTO forge_jobs (job_type, input, scheduled_at, created_at) VALUES"
                         " ('ran', '{\"n\": 0}', now() + interval '1 hour', now() - interval '2 hours')"
                         " RETURNING id").fetchone()[0]
    size = "SELECT pg_total_relation_size('forge_jobs')"
    before = db.execute(size).fetchone()[0]
    with Flow(app_db) as flow:
        wait_for(lambda: not any(existing(db, ids) for ids in old.values()), timeout=20,
                 what="the old cancelled, discarded and dead-letter rows to be pruned")
        wait_for(lambda: len(flow.ids) > 500 and not existing(db, flow.ids[:100]), timeout=20,
                 what="the first completed jobs to be pruned while jobs flow")
        time.sleep(1)
    assert existing(db, flow.ids[-50:]), "the last jobs dispatched are already gone: pruned too early?"
    wait_for(lambda: not existing(db, flow.ids), timeout=30, what="every completed job to be pruned")
    assert set(flow.ids) <= ran(db), "a job was deleted without having run"
    # The fresh dead letters expire after 3 s (dead_letter_retain); the fresh cancelled and discarded are
    # within their hour; the waiting job is claimable and never touched.
    wait_for(lambda: not existing(db, fresh["dead_letter"]), timeout=15, what="the fresh dead letters' expiry")
    kept = [*fresh["cancelled"], *fresh["discarded"], waiting]
    assert existing(db, kept) == set(kept)
    after = db.execute(size).fetchone()[0]
    print(f"forge_jobs: {before} bytes before, {after} after {len(flow.ids)} jobs flowed through")
