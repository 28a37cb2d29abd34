"""Nodes that run different job types: a type is failed as unrunnable (UnknownJobType) only once no node has
registered it for [node] unknown_type_grace, counted from when the last node that ran it stopped; so
restarting the only node of a type, or every node one at a time, fails nothing."""

from __future__ import annotations

import time

from testapp import jobs, other_node

import forge

from .conftest import finished, wait_for

JOBS, OTHER = ["testapp.jobs"], ["testapp.other_node"]


def _backdate(db, ids: list[int]) -> None:
    """Make the jobs due for a long while, as a backlog's are: longer than the grace itself, so that only
    when their type last ran can keep them from failing."""
    db.execute("UPDATE forge_jobs SET scheduled_at = now() - interval '2 hours' WHERE id = ANY(%s)", (ids,))


def _statuses(db, ids: list[int]) -> dict[str, int]:
    rows = db.execute("SELECT status, count(*) FROM forge_jobs WHERE id = ANY(%s) GROUP BY status", (ids,))
    return dict(rows.fetchall())


def test_a_rolling_restart_of_every_node_fails_none_of_their_jobs(supervisor, db):
    # Each node is the only one running its types: while it is down, its backlog has no live node.
    nodes = [(supervisor(modules=JOBS), jobs.double, jobs.N), (supervisor(modules=OTHER), other_node.triple,
                                                               other_node.M)]
    ids: list[int] = []
    for node, job, make in nodes:
        assert node.stop() == 0
        mine = forge.dispatch_many(db, job, [make(n=i) for i in range(20)])
        _backdate(db, mine)
        ids += mine
        time.sleep(3)  # several maintenance rounds (every 1 s) of the node still up
        assert _statuses(db, mine) == {"pending": 20}, "jobs of a type whose node is restarting were failed"
        node.start()
    wait_for(lambda: finished(db, *ids), what="the backlog of both types")
    assert _statuses(db, ids) == {"completed": 40}


def test_a_type_no_node_registered_for_the_grace_fails_as_unknown(supervisor, db):
    runner = supervisor(modules=JOBS)
    supervisor(modules=OTHER, unknown_type_grace="2s")
    assert runner.stop() == 0
    ids = forge.dispatch_many(db, jobs.double, [jobs.N(n=i) for i in range(5)])
    _backdate(db, ids)
    wait_for(lambda: _statuses(db, ids) == {"failed": 5}, timeout=15, what="the orphaned jobs to fail")
    rows = db.execute(
        "SELECT last_error->>'type', last_error->>'message',"
        " extract(epoch FROM failed_at - (SELECT stopped_at FROM forge_nodes WHERE id = %s))"
        " FROM forge_jobs WHERE id = ANY(%s)", (runner.node_id, ids)).fetchall()
    for error_type, message, after_stop in rows:
        assert error_type == "forge.errors.UnknownJobType"
        assert "'double'" in message
        assert after_stop >= 2.0, "failed before the grace had passed since the last node of the type stopped"
