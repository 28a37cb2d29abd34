-- Statements of the operations API (forge/operations.py: forge.Jobs and
-- forge.AsyncJobs, which the forge CLI calls), run through the caller's own
-- psycopg connection in its transaction. A changing call by ids first locks
-- the rows it may change (lock_jobs), so that a refusal changes nothing and
-- what it accepted cannot move under it, then changes them all at once.
-- Every statement returns rows. Parameters are positional ($1...).

-- name: get_job
SELECT * FROM forge_jobs WHERE id = $1;

-- name: list_jobs
-- Newest first: the primary key read backwards, so the LIMIT $6 stops the
-- scan early. A NULL filter is no filter: statuses $1, job types $2, created
-- since $3 (a time) or since $4 seconds ago (database clock).
SELECT * FROM forge_jobs
WHERE ($1::text[] IS NULL OR status = ANY($1::text[]))
  AND ($2::text[] IS NULL OR job_type = ANY($2::text[]))
  AND created_at >= coalesce($3::timestamptz, now() - $4::float8 * interval '1 second', '-infinity')
ORDER BY id DESC
LIMIT $5;

-- name: job_logs
-- The log lines (ctx.log) of job $1, every attempt's, in the order written.
SELECT at, attempt, level, message, fields, node FROM forge_job_logs WHERE job_id = $1 ORDER BY id;

-- name: dead_letter_jobs
-- The spec's monitoring query (newest failure first), $1 rows at most.
SELECT * FROM forge_jobs WHERE status = 'dead_letter' ORDER BY failed_at DESC, id DESC LIMIT $1;

-- name: lock_jobs
-- Jobs $1 that a call changing them finds in a state it takes ($2) are
-- locked, in id order so that two such calls never deadlock; the others
-- come back unlocked (accepted = false) with the state they are in, for the
-- refusal. A row that changed since the statement began is judged on its
-- newest version (FOR UPDATE re-checks it), so an accepted row is in an
-- accepted state and stays so until the transaction ends. Rows of running
-- jobs are never locked unless the call takes them, so a refusal in a
-- transaction the caller keeps open cannot hold up their lease renewals.
WITH locked AS MATERIALIZED (
    SELECT id, status, job_type FROM forge_jobs
    WHERE id = ANY($1::bigint[]) AND status = ANY($2::text[])
    ORDER BY id
    FOR UPDATE
)
SELECT id, status, job_type, true AS accepted FROM locked
UNION ALL
SELECT id, status, job_type, false FROM forge_jobs
WHERE id = ANY($1::bigint[]) AND id NOT IN (SELECT id FROM locked);

-- name: pick_failed
-- Up to $5 jobs of type $1 in state $2 (failed or dead_letter) that failed
-- since $3 (a time) or $4 seconds ago, locked for retry_all/discard_all to
-- change next. SKIP LOCKED: a row a sweep or another operator holds is
-- left to them. failed_at IS NOT NULL makes it a range of the
-- forge_jobs_dead_letter index (job_type, failed_at).
SELECT id, job_type FROM forge_jobs
WHERE failed_at IS NOT NULL AND job_type = $1 AND status = $2
  AND failed_at >= coalesce($3::timestamptz, now() - $4::float8 * interval '1 second', '-infinity')
LIMIT $5
FOR UPDATE SKIP LOCKED;

-- name: count_failed
-- How many rows pick_failed would take with no limit: a dry run's count.
SELECT count(*) AS jobs FROM forge_jobs
WHERE failed_at IS NOT NULL AND job_type = $1 AND status = $2
  AND failed_at >= coalesce($3::timestamptz, now() - $4::float8 * interval '1 second', '-infinity');

-- name: retry_jobs
-- Jobs $1 (locked, in a state of $3) back to pending, due now, each with $2
-- more attempts (a NULL: as many as its max_attempts already allows in all). Their history
-- stays: attempts keeps counting and last_error stays until the next
-- attempt ends; crashes start again from 0. Every mark of the end is
-- cleared, as the CHECKs of 0003 and 0005 want of a claimable row (a failed
-- job keeps its last owner in claimed_by), and so is a cancel request (else
-- 0007's trigger would cancel it again at its next end). Idle nodes are woken at commit
-- (a bare delay 0 wakes every node), once for any number of jobs.
WITH retried AS (
    UPDATE forge_jobs AS j
    SET status = 'pending', scheduled_at = now(), crashes = 0,
        max_attempts = j.attempts + coalesce(r.allowance, j.max_attempts),
        claimed_by = NULL, failed_at = NULL, dead_lettered_at = NULL,
        cancelled_at = NULL, discarded_at = NULL, cancel_requested_at = NULL
    FROM unnest($1::bigint[], $2::integer[]) AS r(id, allowance)
    WHERE j.id = r.id AND j.status = ANY($3::text[])
    RETURNING j.id
)
SELECT (SELECT count(*) FROM retried) AS jobs, count(pg_notify('forge_jobs', '0')) AS told
FROM (SELECT 1 FROM retried LIMIT 1) AS one_row;

-- name: discard_jobs
-- Failed jobs $1 (locked, in a state of $2) given up for good: kept for
-- inspection until their retention, never retried by Forge again.
UPDATE forge_jobs SET status = 'discarded', discarded_at = now()
WHERE id = ANY($1::bigint[]) AND status = ANY($2::text[])
RETURNING id;

-- name: cancel_jobs
-- Those of jobs $1 (locked) that no node holds, cancelled before they run:
-- out of the claimable rows at once (cancelled_at, 0005).
UPDATE forge_jobs SET status = 'cancelled', cancelled_at = now()
WHERE id = ANY($1::bigint[]) AND status IN ('pending', 'retry')
RETURNING id;

-- name: request_cancel
-- Those of jobs $1 (locked) that a node holds, asked to stop (0007): the
-- owning node is told at commit (a notice of kind "x" on forge_jobs, read
-- by the core's listener, announce.rs), and its heartbeat renewal reads
-- cancel_requested_at too, should the notice be missed. It kills the
-- worker or drops the unstarted job, and 0007's trigger makes whatever end
-- it reports cancelled. A repeated request keeps the first time.
WITH asked AS (
    UPDATE forge_jobs SET cancel_requested_at = coalesce(cancel_requested_at, now())
    WHERE id = ANY($1::bigint[]) AND status IN ('claimed', 'running')
    RETURNING id, attempts, claimed_by
)
SELECT a.id FROM asked AS a
CROSS JOIN LATERAL (
    SELECT pg_notify('forge_jobs', json_build_object('k', 'x', 'i', a.id, 'a', a.attempts,
                                                     'o', a.claimed_by::text)::text)
) AS told;

-- name: pause
-- Job types $1 no node claims from the next claim on (engine.sql claim);
-- a type already paused keeps its row. The types this call paused come back.
INSERT INTO forge_paused (job_type)
SELECT DISTINCT unnest($1::text[])
ON CONFLICT (job_type) DO NOTHING
RETURNING job_type;

-- name: resume
-- Job types $1 claimable again; idle nodes are woken at commit so that
-- their due jobs are claimed at once, not at the next poll.
WITH resumed AS (
    DELETE FROM forge_paused WHERE job_type = ANY($1::text[]) RETURNING job_type
), told AS (
    SELECT count(pg_notify('forge_jobs', '0')) FROM (SELECT 1 FROM resumed LIMIT 1) AS one_row
)
SELECT job_type FROM resumed, told;

-- name: paused
SELECT job_type FROM forge_paused ORDER BY job_type;
