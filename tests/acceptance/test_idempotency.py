"""Idempotency keys and worker capabilities under real supervisors: the spec's process_payment charges once
however many dispatchers send it at once, before and while it runs and after it completed, and again only
once [retention] idempotency has released its key; jobs go only to nodes with their capability, and those no
live node can run wait, reported by `forge status`, until such a node comes."""

from __future__ import annotations

import functools
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import psycopg
import pytest
from click.testing import CliRunner
from testapp import idempotent

import forge
from forge.cli.main import cli

from .conftest import Supervisor, wait_for

MODULES = ("testapp.jobs", "testapp.idempotent")


@pytest.fixture
def node(supervisor: Callable[..., Supervisor]) -> Callable[..., Supervisor]:
    """Factory: node(retention={...}, **[node] settings) starts a supervisor of MODULES with a [retention] table."""
    return functools.partial(supervisor, modules=MODULES)


def dispatch_at_once(url: str, payment_id: str, seconds: float = 0.0, dispatchers: int = 8) -> set[int]:
    """The ids `dispatchers` threads got dispatching one payment at once, each on its own connection and in its
    own transaction."""
    barrier = threading.Barrier(dispatchers)

    def dispatch(_: int) -> int:
        with psycopg.connect(url) as conn:
            barrier.wait()
            job_id = forge.dispatch(conn, idempotent.process_payment,
                                    idempotent.PaymentInput(payment_id=payment_id, seconds=seconds))
            conn.commit()
            return job_id

    with ThreadPoolExecutor(dispatchers) as pool:
        return set(pool.map(dispatch, range(dispatchers)))


def charges(db) -> list[int]:
    return [r[0] for r in db.execute("SELECT job_id FROM test_events WHERE event = 'charged' ORDER BY at")]


def status_of(db, job_id: int) -> str:
    return db.execute("SELECT status FROM forge_jobs WHERE id = %s", (job_id,)).fetchone()[0]


def test_a_payment_dispatched_twice_is_charged_once(node, db, app_db):
    node(workers=4, maintenance_interval="200ms", retention={"idempotency": "2s"})
    [job_id] = dispatch_at_once(app_db, "pay_1", seconds=1.5)
    wait_for(lambda: charges(db) == [job_id], what="the charge")
    assert status_of(db, job_id) == "running"
    assert dispatch_at_once(app_db, "pay_1") == {job_id}  # while it runs
    wait_for(lambda: status_of(db, job_id) == "completed", what="the payment's completion")
    assert dispatch_at_once(app_db, "pay_1") == {job_id}  # completed, within the window
    time.sleep(0.5)  # a worker is free: a second job would have started by now
    assert charges(db) == [job_id]
    assert db.execute("SELECT count(*) FROM forge_jobs").fetchone()[0] == 1

    # Past [retention] idempotency the sweep releases the key, and the payment may be dispatched again.
    wait_for(lambda: db.execute("SELECT idempotency_key IS NULL FROM forge_jobs WHERE id = %s",
                                (job_id,)).fetchone()[0], timeout=10, what="the key's release")
    [again] = dispatch_at_once(app_db, "pay_1")
    assert again != job_id
    wait_for(lambda: charges(db) == [job_id, again], what="the second charge")


def status_json(url: str) -> dict:
    result = CliRunner().invoke(cli, ["status", "--json"], env={"FORGE_DATABASE_URL": url})
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_jobs_go_only_to_nodes_with_their_capability_and_wait_for_one(node, db, app_db):
    general = node(worker_capabilities=["general"], unknown_type_grace="1s", maintenance_interval="200ms")
    media = node(worker_capabilities=["media"])
    clips = forge.dispatch_many(db, idempotent.transcode, [idempotent.Clip(n) for n in range(20)])
    work = forge.dispatch_many(db, idempotent.general_work, [idempotent.Clip(n) for n in range(20)])

    def owners(ids: list[int]) -> set[str] | None:
        found = db.execute("SELECT status, claimed_by::text FROM forge_jobs WHERE id = ANY(%s)", (ids,)).fetchall()
        return {owner for status, owner in found} if {s for s, _ in found} == {"completed"} else None

    assert wait_for(lambda: owners(clips), what="the media jobs") == {media.node_id}
    assert wait_for(lambda: owners(work), what="the general jobs") == {general.node_id}

    media.stop()
    waiting = forge.dispatch_many(db, idempotent.transcode, [idempotent.Clip(n) for n in range(3)])
    time.sleep(2.5)  # past the general node's unknown_type_grace, many of its sweeps
    assert {status_of(db, job_id) for job_id in waiting} == {"pending"}  # not failed as an unknown type
    assert status_json(app_db)["unschedulable"] == [{"job_type": "transcode", "capability": "media", "pending": 3}]

    again = node(worker_capabilities=["media"])
    assert wait_for(lambda: owners(waiting), what="the waiting media jobs") == {again.node_id}
    assert status_json(app_db)["unschedulable"] == []
