"""The job context under real supervisors: ctx.db (one lazy connection per worker), query/mutate/transaction,
dispatch_job in the job's transaction, and completions written in the job's own transaction (exactly-once
database effects: complete_in_transaction, ctx.complete), sync and async."""

from __future__ import annotations

import time

from testapp import context_jobs as jobs

import forge

from .conftest import finished, job_row, wait_for

MODULES = ("testapp.context_jobs",)


def _effects(db, job_id: int) -> list[tuple]:
    return db.execute("SELECT attempt, note FROM ctx_effects WHERE job_id = %s ORDER BY attempt", (job_id,)).fetchall()


def _children(db, parent: int) -> list[tuple]:
    return db.execute("SELECT status, priority FROM forge_jobs WHERE parent_id = %s ORDER BY id", (parent,)).fetchall()


def _setup(db) -> None:
    db.execute(jobs.EFFECTS_TABLE)


def test_a_mutation_commits_its_writes_and_child_jobs_together_and_a_query_reads_them(supervisor, db):
    _setup(db)
    supervisor(workers=1, modules=MODULES)
    ok = forge.dispatch(db, jobs.mutate_and_query, jobs.Order(note="ok", children=2))
    bad = forge.dispatch(db, jobs.mutate_and_query, jobs.Order(note="bad", fail=True, children=2))
    wait_for(lambda: finished(db, ok, bad) and not db.execute(
        "SELECT count(*) FROM forge_jobs WHERE parent_id = %s AND status <> 'completed'", (ok,)).fetchone()[0],
        what="both jobs and the children")
    row = job_row(db, ok)
    assert row["status"] == "completed"
    assert row["result"]["effects"] == 1
    assert _effects(db, ok) == [(1, "ok")]
    assert _children(db, ok) == [("completed", 2), ("completed", 2)]
    assert sorted(row["result"]["children"]) == [r[0] for r in db.execute(
        "SELECT id FROM forge_jobs WHERE parent_id = %s ORDER BY id", (ok,))]
    # the job raised inside the mutation: its write and its children rolled back with it
    failed = job_row(db, bad)
    assert failed["status"] == "failed"
    assert failed["last_error"]["type"] == "testapp.context_jobs.OrderFailed"
    assert _effects(db, bad) == []
    assert _children(db, bad) == []


def test_a_transaction_commits_its_write_and_child_or_rolls_both_back(supervisor, db):
    _setup(db)
    supervisor(workers=1, modules=MODULES)
    ok = forge.dispatch(db, jobs.in_transaction, jobs.Order(note="ok"))
    bad = forge.dispatch(db, jobs.in_transaction, jobs.Order(note="bad", fail=True))
    wait_for(lambda: finished(db, ok, bad), what="both jobs")
    assert (job_row(db, ok)["status"], job_row(db, ok)["result"]) == ("completed", 1)
    assert _effects(db, ok) == [(1, "ok")]
    assert [status for status, _ in _children(db, ok)] in (["pending"], ["claimed"], ["running"], ["completed"])
    assert _children(db, ok)[0][1] == 1  # priority="high" passed through
    assert job_row(db, bad)["status"] == "failed"
    assert (_effects(db, bad), _children(db, bad)) == ([], [])


def test_a_query_is_read_only(supervisor, db):
    _setup(db)
    supervisor(workers=1, modules=MODULES)
    ids = [forge.dispatch(db, jobs.write_in_query, jobs.Quiet()),
           forge.dispatch(db, jobs.write_in_query_async, jobs.Quiet())]
    wait_for(lambda: finished(db, *ids), what="the jobs")
    for job_id in ids:
        row = job_row(db, job_id)
        assert row["status"] == "failed"
        assert row["last_error"]["type"] == "psycopg.errors.ReadOnlySqlTransaction", row["last_error"]
        assert _effects(db, job_id) == []


def test_async_jobs_mutate_query_and_transact_on_an_async_connection(supervisor, db):
    _setup(db)
    supervisor(workers=1, modules=MODULES)
    ok = forge.dispatch(db, jobs.mutate_and_query_async, jobs.Order(note="ok", children=2))
    bad = forge.dispatch(db, jobs.mutate_and_query_async, jobs.Order(note="bad", fail=True))
    wait_for(lambda: finished(db, ok, bad), what="both jobs")
    row = job_row(db, ok)
    assert row["status"] == "completed", row["last_error"]
    assert row["result"]["effects"] == 2  # the mutation's write and the transaction's
    assert sorted(note for _, note in _effects(db, ok)) == ["in transaction", "ok"]
    assert len(_children(db, ok)) == 2
    assert job_row(db, bad)["status"] == "failed"
    assert (_effects(db, bad), _children(db, bad)) == ([], [])


def _worker_connections(db, node: str) -> int:
    return db.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                      (f"forge {node} worker",)).fetchone()[0]


def test_ctx_db_is_opened_on_first_use_once_per_worker_and_kind(supervisor, db):
    sup = supervisor(workers=1, modules=MODULES)
    node = sup.node_id
    quiet = forge.dispatch_many(db, jobs.no_db, [jobs.Quiet()] * 5)
    wait_for(lambda: finished(db, *quiet), what="the jobs that never touch ctx.db")
    assert len({job_row(db, i)["result"] for i in quiet}) == 1  # one worker ran them all ...
    assert _worker_connections(db, node) == 0  # ... and opened no connection
    sync = forge.dispatch_many(db, jobs.backend, [jobs.Quiet()] * 3)
    wait_for(lambda: finished(db, *sync), what="the sync jobs")
    assert len({job_row(db, i)["result"] for i in sync}) == 1  # one connection, reused
    assert _worker_connections(db, node) == 1
    asynchronous = forge.dispatch_many(db, jobs.backend_async, [jobs.Quiet()] * 3)
    wait_for(lambda: finished(db, *asynchronous), what="the async jobs")
    backends = {job_row(db, i)["result"] for i in asynchronous}
    assert len(backends) == 1 and backends != {job_row(db, sync[0])["result"]}
    assert _worker_connections(db, node) == 2  # the async jobs' own AsyncConnection, reused


def _settled_once(db, job_id: int) -> None:
    """The job completed, and stays so: time for a retry (100 ms backoff) or a rescue to have happened."""
    wait_for(lambda: job_row(db, job_id)["status"] == "completed", what="the completion")
    time.sleep(2)


def test_a_worker_killed_right_after_its_job_committed_leaves_it_completed_once(supervisor, db):
    _setup(db)
    sup = supervisor(workers=1, modules=MODULES, heartbeat_interval="200ms", heartbeat_timeout="1.5s",
                     maintenance_interval="200ms")
    ids = [forge.dispatch(db, jobs.charge_once, jobs.Order(note="sync", die_at_commit=True)),
           forge.dispatch(db, jobs.charge_once_async, jobs.Order(note="async", die_at_commit=True)),
           forge.dispatch(db, jobs.complete_then_die, jobs.Order(note="complete"))]
    for job_id in ids:
        _settled_once(db, job_id)
    sup.stop()
    for job_id, note, result in zip(ids, ("sync", "async", "complete"),
                                    ({"charged": "sync"}, {"charged": "async"}, {"completed": "complete"})):
        row = job_row(db, job_id)
        assert (row["status"], row["attempts"], row["result"]) == ("completed", 1, result)
        assert row["completed_at"] >= row["started_at"]
        assert _effects(db, job_id) == [(1, note)]  # applied once: the job did not run again
    pids = db.execute("SELECT pid FROM ctx_effects WHERE job_id = ANY(%s) AND pid <> 0", (ids[:2],)).fetchall()
    assert len({pid for (pid,) in pids}) == 2  # each killed the worker that ran it
    assert sup.core_totals()[-1]["fenced"] >= 3  # the supervisor's reports of the dead workers changed nothing


def test_complete_in_transaction_rolls_back_with_a_failing_body_and_its_report_is_fenced_quietly(supervisor, db):
    _setup(db)
    sup = supervisor(workers=1, modules=MODULES)
    ok = forge.dispatch(db, jobs.charge_once, jobs.Order(note="ok"))
    bad = forge.dispatch(db, jobs.charge_once, jobs.Order(note="bad", fail=True))
    wait_for(lambda: finished(db, ok, bad), what="both jobs")
    sup.stop()
    row = job_row(db, ok)
    assert (row["status"], row["attempts"], row["result"]) == ("completed", 1, {"charged": "ok"})
    assert _effects(db, ok) == [(1, "ok")] and len(_children(db, ok)) == 1
    row = job_row(db, bad)
    assert (row["status"], row["attempts"]) == ("failed", 3)
    assert (_effects(db, bad), _children(db, bad)) == ([], [])  # every attempt's write rolled back
    assert sup.core_totals()[-1]["fenced"] >= 1  # the worker's own report of ok's completion
    assert " ERROR " not in sup.log(), sup.log_tail()


def test_a_job_that_completed_in_its_transaction_is_not_taken_for_lost_while_it_works_on(supervisor, db):
    sup = supervisor(workers=1, modules=MODULES, heartbeat_interval="200ms", heartbeat_timeout="1.5s")
    job_id = forge.dispatch(db, jobs.complete_then_linger, jobs.Linger(seconds=1.0))
    wait_for(lambda: job_row(db, job_id)["status"] == "completed", what="the completion")
    started = db.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                         (f"forge {sup.node_id} worker",)).fetchone()[0]
    time.sleep(1.5)  # the job works on past its commit, for several heartbeats
    sup.stop()
    row = job_row(db, job_id)
    assert (row["status"], row["attempts"], row["result"]) == ("completed", 1, {"completed": True})
    assert started == 1
    assert "lease(s) lost" not in sup.log() and " ERROR " not in sup.log(), sup.log_tail()
    assert sup.core_totals()[-1]["fenced"] == 1  # the worker's report, after it returned


def test_a_raise_after_the_commit_leaves_the_job_completed_and_an_open_transaction_is_rolled_back(supervisor, db):
    _setup(db)
    sup = supervisor(workers=1, modules=MODULES)
    raised = forge.dispatch(db, jobs.complete_then_raise, jobs.Quiet())
    left = forge.dispatch(db, jobs.leave_open, jobs.Order(note="uncommitted"))
    wait_for(lambda: finished(db, raised, left), what="the jobs")
    after = forge.dispatch(db, jobs.transaction_status, jobs.Quiet())  # the same worker, its next job
    wait_for(lambda: finished(db, after), what="the next job")
    sup.stop()
    row = job_row(db, raised)
    assert (row["status"], row["result"]) == ("completed", {"completed": "before the raise"})
    assert "after its completion committed (ctx.complete); it stays completed" in sup.log()  # a warning
    assert job_row(db, left)["result"] == "INTRANS"
    assert job_row(db, after)["result"] == "IDLE"
    assert _effects(db, left) == []  # what the job left uncommitted was rolled back
    assert "left a transaction open on ctx.db" in sup.log()


def test_dispatch_job_with_an_idempotency_key_makes_one_child(supervisor, db):
    supervisor(workers=1, modules=MODULES)
    parent = forge.dispatch(db, jobs.dispatch_keyed, jobs.Order(children=3))
    wait_for(lambda: finished(db, parent), what="the job that dispatches its child three times")
    ids = job_row(db, parent)["result"]
    assert len(ids) == 3 and len(set(ids)) == 1
    assert [row[0] for row in db.execute("SELECT id FROM forge_jobs WHERE parent_id = %s", (parent,))] == ids[:1]
