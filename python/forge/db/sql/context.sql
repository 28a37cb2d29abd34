-- Statements the job context runs on a worker's own connection to the
-- application database (forge/context.py, context_async.py, completion.py),
-- inside the job's own transaction. Parameters are positional ($1...).

-- name: read_only
-- ctx.query: what follows in this transaction refuses every write. A query
-- inside an open transaction runs in a savepoint that is rolled back after
-- it (it wrote nothing), which takes this setting back with it.
SET LOCAL transaction_read_only = on

-- name: complete
-- The job's own completion, written in the job's transaction just before it
-- commits (complete_in_transaction, ctx.complete), so the job's writes and
-- its end commit together: a worker killed after the commit leaves a
-- completed job that no node runs again, and the supervisor's own report of
-- the same end, later, is fenced (engine.sql complete: the row is no longer
-- claimed or running). Guarded by the lease like every report: id $1,
-- attempt $2, owner $3, a held status; no row back means the lease is gone
-- (rescued, or ended) and the caller rolls the transaction back. $4 is the
-- result's JSON (NULL for None); $5 how many milliseconds ago the worker
-- started the job, for a started_at the core has not written yet. Times are
-- the database's clock when this runs (clock_timestamp: now() is when the
-- transaction began, maybe long before), completed_at never before started_at.
UPDATE forge_jobs AS j
SET status = 'completed',
    completed_at = greatest(t.ended, coalesce(j.started_at, t.started)),
    started_at = coalesce(j.started_at, t.started),
    heartbeat_at = now(),
    result = $4::jsonb, progress = 100
FROM (SELECT clock_timestamp() AS ended) AS c
CROSS JOIN LATERAL (
    SELECT c.ended AS ended, c.ended - $5::float8 * interval '1 millisecond' AS started
) AS t
WHERE j.id = $1 AND j.attempts = $2 AND j.claimed_by = $3::uuid
  AND j.status IN ('claimed', 'running')
RETURNING j.id
