"""A worker busy with a job that turns out long: the loop never blocks on it, and the jobs queued behind it go to
another worker, unstarted and uncharged, and run once."""

from __future__ import annotations

from collections import Counter

from testapp import jobs

import forge

from .conftest import job_row, wait_for


def _completed(db, ids: list[int]) -> bool:
    row = db.execute("SELECT count(*) FROM forge_jobs WHERE id = ANY(%s) AND status = 'completed'", (ids,)).fetchone()
    return row[0] == len(ids)


def test_jobs_queued_behind_one_that_turns_out_long_go_to_another_worker(supervisor, db, tmp_path):
    # Fencing at 75% of 3 s: a loop blocked on the busy worker's socket for 2.25 s kills every worker.
    sup = supervisor(workers=2, heartbeat_interval="500ms", heartbeat_timeout="3s")
    warm = forge.dispatch_many(db, jobs.usually_short, [jobs.Payload()] * 400)
    wait_for(lambda: _completed(db, warm), what="the warm-up jobs")  # now known to be short: batched
    starts = tmp_path / "starts.log"
    slow = forge.dispatch(db, jobs.usually_short, jobs.Payload(seconds=10, log=str(starts)))
    big = forge.dispatch_many(db, jobs.usually_short, [jobs.Payload(data="x" * 200_000, log=str(starts))] * 60)
    # 31 of them are batched behind the slow one, 6 MB for a socket that holds 200 KB
    wait_for(lambda: _completed(db, big), timeout=8, what="the jobs queued behind the slow one, on the other worker")
    assert job_row(db, slow)["status"] == "running", (job_row(db, slow)["last_error"], sup.log_tail())
    wait_for(lambda: _completed(db, [slow]), timeout=20, what="the slow job")
    rows = db.execute("SELECT attempts, crashes FROM forge_jobs WHERE id = ANY(%s)", ([slow, *big],)).fetchall()
    assert set(rows) == {(1, 0)}  # nothing charged, nothing rescued
    runs = Counter(int(line.split()[0]) for line in starts.read_text().splitlines())
    assert runs == Counter({job_id: 1 for job_id in [slow, *big]})  # each ran exactly once
    log = sup.log()
    assert "killing the workers" not in log and "lease clock stale" not in log
    assert sup.stop() == 0
