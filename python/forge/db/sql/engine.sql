-- Statements of the supervisor's hot path, run by the Rust core (forge._core).
-- Every statement after the claim is guarded by the lease: id, attempt and
-- owner (claimed_by) must match, so a late or duplicate report changes no row.
-- Parameters are positional ($1...); blocks are named by "-- name:" lines.

-- name: claim
-- Claim up to $1 due jobs for owner $3 among capabilities $2, strictly by
-- priority then scheduled time. SKIP LOCKED lets many nodes claim at once;
-- the join form keeps its speed at large batches.
WITH due AS (
    SELECT id FROM forge_jobs
    WHERE status IN ('pending', 'retry')
      AND scheduled_at <= now()
      AND capability = ANY($2::text[])
    ORDER BY priority, scheduled_at, id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE forge_jobs AS j
    SET status = 'claimed', attempts = j.attempts + 1, claimed_by = $3,
        claimed_at = now(), heartbeat_at = now(), started_at = NULL
    FROM due
    WHERE j.id = due.id
    RETURNING j.id, j.job_type, j.attempts, j.max_attempts, j.priority,
              j.scheduled_at, j.input::text AS input, j.parent_id
)
SELECT id, job_type, attempts, max_attempts, priority, input, parent_id
FROM claimed
ORDER BY priority, scheduled_at, id;

-- name: start
-- Jobs handed to a worker: claimed -> running.
UPDATE forge_jobs AS j
SET status = 'running', started_at = now(), heartbeat_at = now()
FROM unnest($1::bigint[], $2::integer[]) AS s(id, attempt)
WHERE j.id = s.id AND j.attempts = s.attempt AND j.claimed_by = $3
  AND j.status = 'claimed'
RETURNING j.id;

-- name: complete
-- Successful jobs with their encoded results (NULL for None).
UPDATE forge_jobs AS j
SET status = 'completed', completed_at = now(),
    started_at = coalesce(j.started_at, now()), heartbeat_at = now(),
    result = c.result::jsonb, progress = 100
FROM unnest($1::bigint[], $2::integer[], $3::text[]) AS c(id, attempt, result)
WHERE j.id = c.id AND j.attempts = c.attempt AND j.claimed_by = $4
  AND j.status IN ('claimed', 'running')
RETURNING j.id;

-- name: fail
-- Failed attempts: retried after delay_ms when retryable and attempts remain,
-- otherwise failed for good. The delay comes from the job's backoff policy.
UPDATE forge_jobs AS j
SET status = CASE WHEN f.retryable AND j.attempts < j.max_attempts
                  THEN 'retry' ELSE 'failed' END,
    scheduled_at = CASE WHEN f.retryable AND j.attempts < j.max_attempts
                        THEN now() + f.delay_ms * interval '1 millisecond'
                        ELSE j.scheduled_at END,
    failed_at = CASE WHEN f.retryable AND j.attempts < j.max_attempts
                     THEN NULL ELSE now() END,
    claimed_by = CASE WHEN f.retryable AND j.attempts < j.max_attempts
                      THEN NULL ELSE j.claimed_by END,
    started_at = coalesce(j.started_at, now()),
    heartbeat_at = now(),
    crashes = j.crashes + f.crashed::integer,
    last_error = f.error::jsonb
FROM unnest($1::bigint[], $2::integer[], $3::boolean[], $4::float8[], $5::text[], $6::boolean[])
     AS f(id, attempt, retryable, delay_ms, error, crashed)
WHERE j.id = f.id AND j.attempts = f.attempt AND j.claimed_by = $7
  AND j.status IN ('claimed', 'running')
RETURNING j.id, j.status;

-- name: release
-- Jobs handed back unrun (prefetch not started in time, shutdown): pending
-- again at once, and the attempt is not charged.
UPDATE forge_jobs AS j
SET status = 'pending', attempts = j.attempts - 1, claimed_by = NULL,
    claimed_at = NULL, started_at = NULL, heartbeat_at = NULL
FROM unnest($1::bigint[], $2::integer[]) AS r(id, attempt)
WHERE j.id = r.id AND j.attempts = r.attempt AND j.claimed_by = $3
  AND j.status IN ('claimed', 'running')
RETURNING j.id;

-- name: progress
-- Latest progress of running jobs (one row per job in a batch).
UPDATE forge_jobs AS j
SET progress = p.progress, progress_message = p.message, heartbeat_at = now()
FROM unnest($1::bigint[], $2::integer[], $3::smallint[], $4::text[])
     AS p(id, attempt, progress, message)
WHERE j.id = p.id AND j.attempts = p.attempt AND j.claimed_by = $5
  AND j.status IN ('claimed', 'running')
RETURNING j.id;

-- name: heartbeat
-- Renew the leases of every job this node runs, in one statement.
UPDATE forge_jobs AS j
SET heartbeat_at = now()
FROM unnest($1::bigint[], $2::integer[]) AS h(id, attempt)
WHERE j.id = h.id AND j.attempts = h.attempt AND j.claimed_by = $3
  AND j.status IN ('claimed', 'running')
RETURNING j.id;

-- name: node_heartbeat
-- Keep this node's registration fresh.
UPDATE forge_nodes SET heartbeat_at = now() WHERE id = $1;

-- name: notify
-- Wake other nodes after jobs were handed back.
SELECT pg_notify('forge_jobs', '0');
