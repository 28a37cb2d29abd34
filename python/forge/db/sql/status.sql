-- Statements of `forge status` (forge/status.py): the queue at a glance,
-- read in a bounded time however many finished rows the table keeps.
-- Every row is counted in exactly one of four parts, told apart by the
-- columns the partial indexes of 0003 look at (a CHECK ties them to status):
--   claimable  claimed_by IS NULL AND failed_at IS NULL AND cancelled_at IS
--              NULL (pending, retry): exact, through forge_jobs_claimable;
--   failed     failed_at IS NOT NULL (failed, dead_letter, and any other
--              ended state that keeps its failure): exact, through
--              forge_jobs_dead_letter;
--   cancelled  cancelled_at IS NOT NULL AND failed_at IS NULL: exact,
--              through forge_jobs_cancelled (0005);
--   held       claimed or running: exact, through forge_claims (every held
--              job is listed in a claim row of its owner), by primary key;
--   finished   the rest (completed): no index holds them, so they are
--              counted on a page sample (TABLESAMPLE SYSTEM) of the table
--              when it is bigger than the sample, and exactly when it is not.
-- Parameters are positional ($1...).

-- name: snapshot
-- The statements below read one snapshot, and change nothing.
SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY;

-- name: table_pages
-- The table's size in pages, now (not as of the last ANALYZE): what the
-- sample's percentage is taken of.
SELECT pg_relation_size('forge_jobs') / current_setting('block_size')::bigint;

-- name: claimable
-- Pending and retrying jobs by type, status, priority and the worker
-- capability they need (status.py tells which no live node has), with how
-- long the oldest of each group that is due has been due (NULL when none is).
SELECT job_type, status, priority, capability, count(*),
       extract(epoch FROM now() - min(scheduled_at) FILTER (WHERE scheduled_at <= now()))::float8
FROM forge_jobs
WHERE claimed_by IS NULL AND failed_at IS NULL AND cancelled_at IS NULL
GROUP BY job_type, status, priority, capability;

-- name: failed
-- Jobs that keep a failure (failed_at), by type, status and priority.
SELECT job_type, status, priority, count(*)
FROM forge_jobs
WHERE failed_at IS NOT NULL
GROUP BY job_type, status, priority;

-- name: cancelled
-- Cancelled jobs (that never failed), by type, status and priority.
SELECT job_type, status, priority, count(*)
FROM forge_jobs
WHERE cancelled_at IS NOT NULL AND failed_at IS NULL
GROUP BY job_type, status, priority;

-- name: held
-- Claimed and running jobs by owner, type, status and priority. A job listed
-- in two claim rows of its owner (handed back and claimed again) counts once.
SELECT j.claimed_by, j.job_type, j.status, j.priority, count(*)
FROM (SELECT DISTINCT c.owner, listed.id
      FROM forge_claims AS c CROSS JOIN LATERAL unnest(c.job_ids) AS listed(id)) AS h
JOIN forge_jobs AS j ON j.id = h.id AND j.claimed_by = h.owner
WHERE j.status IN ('claimed', 'running')
GROUP BY j.claimed_by, j.job_type, j.status, j.priority;

-- name: finished
-- The other rows by type, status and priority, on a sample of $1 percent of
-- the table's pages (100: every page, an exact count); the caller scales the
-- counts up by 100 / $1.
SELECT job_type, status, priority, count(*)
FROM forge_jobs TABLESAMPLE SYSTEM ($1::float8)
WHERE claimed_by IS NOT NULL AND failed_at IS NULL AND cancelled_at IS NULL
  AND status NOT IN ('claimed', 'running')
GROUP BY job_type, status, priority;

-- name: nodes
-- Nodes alive: registered, not stopped, heartbeat within $1 seconds (the
-- heartbeat timeout, after which their leases are rescued).
SELECT id, hostname, pid, roles, workers, capabilities, job_types, started_at, heartbeat_at
FROM forge_nodes
WHERE stopped_at IS NULL AND heartbeat_at > now() - $1::float8 * interval '1 second'
ORDER BY hostname, pid, id;

-- name: paused_table_exists
-- Whether the schema keeps paused job types yet (an older one pauses none).
SELECT to_regclass('forge_paused') IS NOT NULL;

-- name: paused
-- The paused job types.
SELECT job_type FROM forge_paused ORDER BY job_type;

-- name: known_job_types
-- The job types some registered node runs, or some claimable job waits in
-- (what `forge queues pause --all` pauses). The DISTINCT hashes the claimable
-- rows' types as they are read; without it the UNION sorted every claimable
-- row first (1,000,000 pending jobs: 0.65 s, spilling to disk; with it 0.22 s).
SELECT job_type FROM forge_nodes CROSS JOIN LATERAL unnest(job_types) AS t(job_type)
UNION
SELECT DISTINCT job_type FROM forge_jobs WHERE claimed_by IS NULL AND failed_at IS NULL AND cancelled_at IS NULL
ORDER BY job_type;
