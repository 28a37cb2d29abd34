"""The invariant checker itself: it must flag each violation it claims to detect (no supervisor runs here)."""

from __future__ import annotations

from collections.abc import Callable

import psycopg

from . import ledger

NODE_A = "00000000-0000-0000-0000-00000000000a"
NODE_B = "00000000-0000-0000-0000-00000000000b"


def _as(conn: psycopg.Connection, node: str | None, connection: str = "main") -> None:
    """Make the following statements of `conn` a node's writes, as the core names its sessions."""
    conn.execute("SELECT set_config('application_name', %s, false)",
                 (f"forge {node} {connection}" if node else "test",))


def _job(conn: psycopg.Connection, *steps: tuple[str, int, str | None]) -> int:
    """Insert (and acknowledge) a job and walk it through (status, attempts, claimed_by) updates, each written
    as the node that would write it (the new owner, or the one letting go); its id."""
    _as(conn, None)
    (job_id,) = conn.execute(
        "INSERT INTO forge_jobs (job_type, input, max_attempts) VALUES ('fault_work', '{}', 3) RETURNING id"
    ).fetchone()
    ledger.record_acked(conn, [job_id])
    holder: str | None = None
    for status, attempts, owner in steps:
        _as(conn, owner or holder)
        conn.execute("UPDATE forge_jobs SET status = %s, attempts = %s, claimed_by = %s WHERE id = %s",
                     (status, attempts, owner, job_id))
        holder = owner
    _as(conn, None)
    return job_id


def _exec(conn: psycopg.Connection, job_id: int, attempt: int, pid: int, start: str, end: str | None) -> str:
    """An execution's 'start' (and 'end') rows, at now() + the intervals; its exec_id."""
    exec_id = conn.execute("SELECT gen_random_uuid()").fetchone()[0]
    conn.execute("INSERT INTO ledger_executions (exec_id, job_id, attempt, event, pid, sup_pid, at)"
                 " VALUES (%s, %s, %s, 'start', %s, 1, now() + %s::interval)", (exec_id, job_id, attempt, pid, start))
    if end is not None:
        conn.execute("INSERT INTO ledger_executions (exec_id, job_id, attempt, event, pid, sup_pid, at)"
                     " VALUES (%s, %s, %s, 'end', %s, 1, now() + %s::interval)", (exec_id, job_id, attempt, pid, end))
    return exec_id


def _failing(report: ledger.Report) -> set[str]:
    return {line.split("FAIL", 1)[1].split(":", 1)[0].strip() for line in report.text.splitlines() if "FAIL" in line}


def _run_attempt_2_on_b(conn: psycopg.Connection, job: int) -> None:
    """B claims the job (attempt 2), runs and completes it, writing as B."""
    _as(conn, NODE_B)
    conn.execute("UPDATE forge_jobs SET status = 'claimed', attempts = 2, claimed_by = %s WHERE id = %s",
                 (NODE_B, job))
    conn.execute("UPDATE forge_jobs SET status = 'running' WHERE id = %s", (job,))
    conn.execute("UPDATE forge_jobs SET status = 'completed' WHERE id = %s", (job,))
    _as(conn, None)


def _rescued_and_completed_elsewhere(conn: psycopg.Connection) -> int:
    """A job A ran (attempt 1) until rescued as NodeLost, then B ran and completed attempt 2."""
    job = _job(conn, ("claimed", 1, NODE_A), ("running", 1, NODE_A))
    _as(conn, NODE_B, "maintenance")
    conn.execute("UPDATE forge_jobs SET status = 'retry', claimed_by = NULL,"
                 " last_error = '{\"type\": \"forge.errors.NodeLost\"}' WHERE id = %s", (job,))
    _run_attempt_2_on_b(conn, job)
    return job


def test_a_clean_history_passes(fault_db: str) -> None:
    with psycopg.connect(fault_db, autocommit=True) as conn:
        job = _job(conn, ("claimed", 1, NODE_A), ("running", 1, NODE_A), ("completed", 1, NODE_A))
        _exec(conn, job, 1, 100, "1 s", "2 s")
    report = ledger.check(fault_db)
    assert report.ok, report.text


def test_each_violation_is_flagged(fault_db: str) -> None:
    with psycopg.connect(fault_db, autocommit=True) as conn:
        # lost: left pending; also an illegal pending -> completed
        _job(conn)
        _job(conn, ("completed", 0, NODE_A))
        # two completions; a stale owner completing
        _job(conn, ("claimed", 1, NODE_A), ("running", 1, NODE_A), ("completed", 1, NODE_A),
             ("claimed", 2, NODE_B), ("completed", 2, NODE_A))
        # attempts charged twice by one claim, beyond max_attempts
        _job(conn, ("claimed", 5, NODE_A), ("running", 5, NODE_A), ("completed", 5, NODE_A))
        # left running
        _job(conn, ("claimed", 1, NODE_A), ("running", 1, NODE_A))
        # overlap: attempt 1 (killed, death never observed, rescued as NodeLost) and attempt 2 at once
        job = _rescued_and_completed_elsewhere(conn)
        _exec(conn, job, 1, 200, "-10 s", None)
        _exec(conn, job, 2, 201, "-5 s", "-4 s")
        # an extra execution no fault explains: attempt 1 ran to its end, yet the job ran again
        job = _job(conn, ("claimed", 1, NODE_A), ("running", 1, NODE_A), ("pending", 0, None),
                   ("claimed", 1, NODE_B), ("running", 1, NODE_B), ("completed", 1, NODE_B))
        _exec(conn, job, 1, 300, "-10 s", "-9 s")
        _exec(conn, job, 1, 301, "-5 s", "-4 s")
    report = ledger.check(fault_db)
    print(report.text)
    assert not report.ok
    assert _failing(report) == {
        "no job lost", "at most one completion", "legal transitions", "attempts accounting",
        "attempts within bounds", "nothing left leased", "completed by its owner", "no stale write",
        "no overlapping executions", "extra executions only where a fault cut an attempt",
    }, report.text


def test_an_observed_death_bounds_a_killed_execution(fault_db: str) -> None:
    """A killed execution whose worker was seen dead before the next attempt started is no overlap."""
    with psycopg.connect(fault_db, autocommit=True) as conn:
        job = _rescued_and_completed_elsewhere(conn)
        _exec(conn, job, 1, 400, "-10 s", None)
        conn.execute(
            "INSERT INTO ledger_faults (kind, pid, sup_pid, at) VALUES ('died', 400, 1, now() - interval '8 s')"
        )
        _exec(conn, job, 2, 401, "-5 s", "-4 s")
    report = ledger.check(fault_db)
    assert report.ok, report.text


def test_a_kill_recorded_just_before_the_start_row_bounds_the_execution(fault_db: str) -> None:
    """The job writes its 'start' row after it began; a kill of its pid can be recorded before that row lands
    (the row was already sent, and commits after the kill). That kill ends the execution; one of the same pid
    recorded long before (a reused pid) does not."""
    with psycopg.connect(fault_db, autocommit=True) as conn:
        job = _rescued_and_completed_elsewhere(conn)
        _exec(conn, job, 1, 500, "-10 s", None)
        conn.execute("INSERT INTO ledger_faults (kind, pid, sup_pid, at)"
                     " VALUES ('kill_worker', 500, 1, now() - interval '10.5 s')")
        _exec(conn, job, 2, 501, "-5 s", "-4 s")
    report = ledger.check(fault_db)
    assert report.ok, report.text

    with psycopg.connect(fault_db, autocommit=True) as conn:
        job = _rescued_and_completed_elsewhere(conn)
        _exec(conn, job, 1, 600, "-10 s", None)
        conn.execute("INSERT INTO ledger_faults (kind, pid, sup_pid, at)"
                     " VALUES ('died', 600, 1, now() - interval '60 s')")
        _exec(conn, job, 2, 601, "-5 s", "-4 s")
    report = ledger.check(fault_db)
    assert _failing(report) == {"no overlapping executions"}, report.text


def _child(conn: psycopg.Connection, exec_id: str, pid: int, at: str, event: str = "child") -> None:
    """A 'child' row (a process the execution started) or 'child_end' row (the job reaped it) at now() + at."""
    conn.execute("INSERT INTO ledger_executions (exec_id, job_id, attempt, event, pid, sup_pid, at)"
                 " SELECT exec_id, job_id, attempt, %s, %s, sup_pid, now() + %s::interval"
                 " FROM ledger_executions WHERE exec_id = %s AND event = 'start'", (event, pid, at, exec_id))


def _died(conn: psycopg.Connection, pid: int, at: str) -> None:
    conn.execute("INSERT INTO ledger_faults (kind, pid, sup_pid, at) VALUES ('died', %s, 1, now() + %s::interval)",
                 (pid, at))


def _child_outliving_its_worker(fault_db: str, child_end: Callable[[psycopg.Connection, str], None]) -> set[str]:
    """Attempt 1's worker (killed, seen dead at -8 s) started a child (pid 901) at -9.9 s; attempt 2 ran from -5 s
    on another node. child_end(conn, attempt 1's exec_id) writes how the child ended; the checks that fail."""
    with psycopg.connect(fault_db, autocommit=True) as conn:
        job = _rescued_and_completed_elsewhere(conn)
        first = _exec(conn, job, 1, 900, "-10 s", None)
        _died(conn, 900, "-8 s")
        _child(conn, first, 901, "-9.9 s")
        child_end(conn, first)
        _exec(conn, job, 2, 902, "-5 s", "-4 s")
    report = ledger.check(fault_db)
    print(report.text)
    return _failing(report)


def test_a_child_that_outlives_its_worker_into_the_next_execution_is_an_overlap(fault_db: str) -> None:
    assert _child_outliving_its_worker(fault_db, lambda conn, _: _died(conn, 901, "-3 s")) == {
        "no overlapping executions"}


def test_a_child_whose_death_was_never_observed_leaves_its_execution_unbounded(fault_db: str) -> None:
    """Whatever became of its worker; and a death of its pid long before its 'child' row (a reused pid) is not its
    death."""
    assert _child_outliving_its_worker(fault_db, lambda conn, _: _died(conn, 901, "-60 s")) == {
        "no overlapping executions"}


def test_a_child_seen_dead_before_the_next_execution_is_no_overlap(fault_db: str) -> None:
    assert _child_outliving_its_worker(fault_db, lambda conn, _: _died(conn, 901, "-6 s")) == set()


def test_a_child_reaped_by_its_job_ends_there(fault_db: str) -> None:
    """A 'child_end' row (the job waited for it) bounds the child."""
    assert _child_outliving_its_worker(fault_db, lambda conn, exec_id: _child(conn, exec_id, 901, "-7 s",
                                                                              "child_end")) == set()


RESCUER = "forge 00000000-0000-0000-0000-00000000000c maintenance"  # a core's maintenance connection


def _rescued_claim(conn: psycopg.Connection, rescuer: psycopg.Connection, change: str) -> int:
    """A job A claimed but never started, rescued with `change`, then run and completed by B."""
    job = _job(conn, ("claimed", 1, NODE_A))
    rescuer.execute(f"UPDATE forge_jobs SET status = 'retry', claimed_by = NULL, {change} WHERE id = %s", (job,))
    _run_attempt_2_on_b(conn, job)
    return job


def test_a_rescue_charges_a_claim_that_never_started_nothing(fault_db: str) -> None:
    with psycopg.connect(fault_db, autocommit=True) as conn, \
            psycopg.connect(fault_db, autocommit=True, application_name=RESCUER) as rescuer:
        _rescued_claim(conn, rescuer, "max_attempts = max_attempts + 1")
    report = ledger.check(fault_db)
    assert report.ok, report.text

    with psycopg.connect(fault_db, autocommit=True) as conn, \
            psycopg.connect(fault_db, autocommit=True, application_name=RESCUER) as rescuer:
        _rescued_claim(conn, rescuer, "crashes = crashes + 1")  # what the rescue did before: a crash charged
    report = ledger.check(fault_db)
    assert _failing(report) == {"attempts accounting"}, report.text


def _failing_alone(fault_db: str, history: Callable[[psycopg.Connection], None]) -> set[str]:
    """The checks a history breaks, written after a clean job (so the run has executions)."""
    with psycopg.connect(fault_db, autocommit=True) as conn:
        job = _job(conn, ("claimed", 1, NODE_A), ("running", 1, NODE_A), ("completed", 1, NODE_A))
        _exec(conn, job, 1, 700, "-1 s", "-0.5 s")
        history(conn)
    return _failing(ledger.check(fault_db))


def test_a_row_deleted_by_hand_is_a_lost_job(fault_db: str) -> None:
    def deleted(conn: psycopg.Connection) -> None:
        job = _job(conn, ("claimed", 1, NODE_A), ("running", 1, NODE_A), ("completed", 1, NODE_A))
        conn.execute("DELETE FROM forge_jobs WHERE id = %s", (job,))

    assert _failing_alone(fault_db, deleted) == {"no job lost"}


def test_a_completion_written_without_the_lease_is_a_stale_write(fault_db: str) -> None:
    """B holds attempt 2; A, whose attempt 1 was rescued, completes the row without the lease guard (claimed_by
    stays B's, so "completed by its owner" alone cannot see it)."""
    def stale(conn: psycopg.Connection) -> None:
        job = _job(conn, ("claimed", 1, NODE_A), ("running", 1, NODE_A))
        _as(conn, NODE_B, "maintenance")
        conn.execute("UPDATE forge_jobs SET status = 'retry', claimed_by = NULL WHERE id = %s", (job,))
        _as(conn, NODE_B)
        conn.execute("UPDATE forge_jobs SET status = 'claimed', attempts = 2, claimed_by = %s WHERE id = %s",
                     (NODE_B, job))
        conn.execute("UPDATE forge_jobs SET status = 'running' WHERE id = %s", (job,))
        _as(conn, NODE_A)
        conn.execute("UPDATE forge_jobs SET status = 'completed' WHERE id = %s", (job,))

    assert _failing_alone(fault_db, stale) == {"no stale write"}


def test_a_heartbeat_of_a_lost_lease_is_a_stale_write(fault_db: str) -> None:
    def late_heartbeat(conn: psycopg.Connection) -> None:
        job = _job(conn, ("claimed", 1, NODE_A), ("running", 1, NODE_A), ("pending", 0, None),
                   ("claimed", 1, NODE_B), ("running", 1, NODE_B), ("completed", 1, NODE_B))
        _as(conn, NODE_A)
        conn.execute("UPDATE forge_jobs SET heartbeat_at = now() WHERE id = %s", (job,))

    assert _failing_alone(fault_db, late_heartbeat) == {"no stale write"}


def test_a_write_to_a_held_row_by_an_unidentified_session_fails(fault_db: str) -> None:
    """Writer identity must be known: a core that did not name its sessions would make the check vacuous."""
    def anonymous(conn: psycopg.Connection) -> None:
        job = _job(conn, ("claimed", 1, NODE_A), ("running", 1, NODE_A))
        conn.execute("UPDATE forge_jobs SET status = 'completed' WHERE id = %s", (job,))

    assert _failing_alone(fault_db, anonymous) == {"no stale write"}


def test_a_fault_after_the_repeat_does_not_explain_it(fault_db: str) -> None:
    """Attempt 1 ran to its end and was handed back; the job ran again; the only fault on its worker came after
    the second execution had started, so nothing explains the repeat."""
    def late_fault(conn: psycopg.Connection) -> None:
        job = _job(conn, ("claimed", 1, NODE_A), ("running", 1, NODE_A), ("pending", 0, None),
                   ("claimed", 1, NODE_B), ("running", 1, NODE_B), ("completed", 1, NODE_B))
        _exec(conn, job, 1, 800, "-10 s", "-9 s")
        _exec(conn, job, 1, 801, "-5 s", "-4 s")
        conn.execute("INSERT INTO ledger_faults (kind, pid, sup_pid, at)"
                     " VALUES ('kill_worker', 800, 1, now() - interval '3 s')")

    assert _failing_alone(fault_db, late_fault) == {"extra executions only where a fault cut an attempt"}
