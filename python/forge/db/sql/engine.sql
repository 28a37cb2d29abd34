-- Statements of the supervisor's hot path, run by the Rust core (forge._core).
-- Fencing: every report after the claim (start, heartbeat, complete, fail,
-- release, progress) is guarded by the lease: id, attempt (attempts) and
-- owner (claimed_by) must all match and the job must still be held (claimed
-- or running), so a late, duplicate or rescued report changes no row; the
-- core counts each such report in stats()["fenced"] (a heartbeat that renews
-- nothing counts in "lost" instead).
-- Claimable rows are told by claimed_by IS NULL AND failed_at IS NULL (the
-- forge_jobs_claimable predicate; a CHECK of 0003 ties it to status), and the
-- jobs a node holds are found through forge_claims, so that no index looks at
-- a column a completion writes and completing a job is a HOT update (0003).
-- Maintenance statements (rescue ... reap_nodes) run on every node each
-- maintenance interval, each one bounded (LIMIT 1000) and FOR UPDATE SKIP
-- LOCKED so any number of nodes can sweep at once without waiting on each
-- other or on the claim; a full batch makes the core sweep again at once.
-- Durations are passed as float8 milliseconds; every comparison uses the
-- database clock (now()).
-- Parameters are positional ($1...); blocks are named by "-- name:" lines.

-- name: claim
-- Claim up to $1 due jobs for owner $3 among capabilities $2, strictly by
-- priority then scheduled time. SKIP LOCKED lets many nodes claim at once;
-- the join form keeps its speed at large batches. Only the job types $4 this
-- node has registered are claimed, so a node never takes a job it cannot
-- run (rolling deploys with two code versions are safe). The capability and
-- type tests are filters on the forge_jobs_claimable index scan. The ids
-- taken are recorded in one forge_claims row of the owner, in the same
-- statement, so no job is ever held without one; its id comes back with
-- every row (for close_claims).
WITH due AS (
    SELECT id FROM forge_jobs
    WHERE claimed_by IS NULL AND failed_at IS NULL
      AND scheduled_at <= now()
      AND capability = ANY($2::text[])
      AND job_type = ANY($4::text[])
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
), recorded AS (
    INSERT INTO forge_claims (owner, job_ids)
    SELECT $3, array_agg(id) FROM claimed HAVING count(*) > 0
    RETURNING id
)
SELECT id, job_type, attempts, max_attempts, priority, input, parent_id,
       (SELECT id FROM recorded) AS claim_id
FROM claimed
ORDER BY priority, scheduled_at, id;

-- name: start
-- Jobs handed to a worker: claimed -> running. started_at is when the
-- supervisor handed the job over: $4 says how many milliseconds before this
-- statement that was (report times are now() minus such an age, so they
-- are on the database clock, however late the report is written).
UPDATE forge_jobs AS j
SET status = 'running', started_at = now() - s.ago_ms * interval '1 millisecond',
    heartbeat_at = now()
FROM unnest($1::bigint[], $2::integer[], $4::float8[]) AS s(id, attempt, ago_ms)
WHERE j.id = s.id AND j.attempts = s.attempt AND j.claimed_by = $3
  AND j.status = 'claimed'
RETURNING j.id;

-- name: complete
-- Successful jobs with their encoded results (NULL for None). completed_at
-- is when the job ended ($6: milliseconds ago), never before its start; a
-- job whose start was not written yet (it ended in the same flush) gets
-- started_at from $5 (milliseconds ago; NULL: the end's time).
UPDATE forge_jobs AS j
SET status = 'completed',
    completed_at = greatest(now() - c.ended_ago_ms * interval '1 millisecond', j.started_at),
    started_at = coalesce(j.started_at,
                          now() - coalesce(c.started_ago_ms, c.ended_ago_ms) * interval '1 millisecond'),
    heartbeat_at = now(),
    result = c.result::jsonb, progress = 100
FROM unnest($1::bigint[], $2::integer[], $3::text[], $5::float8[], $6::float8[])
     AS c(id, attempt, result, started_ago_ms, ended_ago_ms)
WHERE j.id = c.id AND j.attempts = c.attempt AND j.claimed_by = $4
  AND j.status IN ('claimed', 'running')
RETURNING j.id;

-- name: fail
-- Failed attempts: retried after delay_ms when retryable, attempts remain and
-- the crash count (after this attempt's crash, if it was one) is below
-- max_crashes $8; otherwise failed for good. A crash-class ending (signal,
-- OOM, os._exit) increments crashes. When the crash cap is what stops a job
-- that would otherwise be retried (a poison pill), last_error gets a
-- "reason" and the row comes back with poisoned = true. The delay comes
-- from the job's backoff policy. failed_at and a missing started_at are the
-- times of the failure ($10) and of the start ($9), as in complete.
UPDATE forge_jobs AS j
SET status = CASE WHEN f.retryable AND j.attempts < j.max_attempts
                       AND j.crashes + f.crashed::integer < $8
                  THEN 'retry' ELSE 'failed' END,
    scheduled_at = CASE WHEN f.retryable AND j.attempts < j.max_attempts
                             AND j.crashes + f.crashed::integer < $8
                        THEN now() + f.delay_ms * interval '1 millisecond'
                        ELSE j.scheduled_at END,
    failed_at = CASE WHEN f.retryable AND j.attempts < j.max_attempts
                          AND j.crashes + f.crashed::integer < $8
                     THEN NULL
                     ELSE greatest(now() - f.ended_ago_ms * interval '1 millisecond', j.started_at) END,
    claimed_by = CASE WHEN f.retryable AND j.attempts < j.max_attempts
                           AND j.crashes + f.crashed::integer < $8
                      THEN NULL ELSE j.claimed_by END,
    started_at = coalesce(j.started_at,
                          now() - coalesce(f.started_ago_ms, f.ended_ago_ms) * interval '1 millisecond'),
    heartbeat_at = now(),
    crashes = j.crashes + f.crashed::integer,
    last_error = CASE WHEN f.retryable AND j.attempts < j.max_attempts
                           AND j.crashes + f.crashed::integer >= $8
                      THEN f.error::jsonb || jsonb_build_object('reason', format(
                          'crashed %s times (max_crashes %s)',
                          j.crashes + f.crashed::integer, $8::integer))
                      ELSE f.error::jsonb END
FROM unnest($1::bigint[], $2::integer[], $3::boolean[], $4::float8[], $5::text[], $6::boolean[],
            $9::float8[], $10::float8[])
     AS f(id, attempt, retryable, delay_ms, error, crashed, started_ago_ms, ended_ago_ms)
WHERE j.id = f.id AND j.attempts = f.attempt AND j.claimed_by = $7
  AND j.status IN ('claimed', 'running')
RETURNING j.id, j.status,
          (j.status = 'failed' AND f.retryable AND j.attempts < j.max_attempts) AS poisoned;

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

-- name: close_claims
-- Claim rows $1 of owner $2 whose jobs have all ended, written after the
-- reports that ended them. A row that still lists a job its owner holds
-- (the core's count was wrong, or the job's end report failed) is kept;
-- prune_claims deletes it once nothing it lists is held.
DELETE FROM forge_claims AS c
WHERE c.id = ANY($1::bigint[]) AND c.owner = $2
  AND NOT EXISTS (
      SELECT 1 FROM unnest(c.job_ids) AS listed(id)
      JOIN forge_jobs AS j ON j.id = listed.id
      WHERE j.claimed_by = c.owner AND j.status IN ('claimed', 'running'))
RETURNING c.id;

-- name: register_node
-- This supervisor run announces itself (the id is new at every start and is
-- the lease owner of every job the run claims): $1 id, $2 hostname, $3 pid,
-- $4 roles, $5 capabilities, $6 worker count, $7 job types.
INSERT INTO forge_nodes (id, hostname, pid, roles, capabilities, workers, job_types)
VALUES ($1, $2, $3, $4, $5, $6, $7);

-- name: stop_node
-- A clean stop: the row stays, for operators to see, until reaped.
UPDATE forge_nodes SET stopped_at = now(), heartbeat_at = now() WHERE id = $1;

-- name: node_heartbeat
-- Keep this node's registration fresh.
UPDATE forge_nodes SET heartbeat_at = now() WHERE id = $1;

-- name: notify
-- Wake other nodes after jobs were handed back or rescued.
SELECT pg_notify('forge_jobs', '0');

-- name: rescue
-- Jobs whose node stopped renewing their lease (heartbeat_at older than the
-- heartbeat timeout $1 ms: the node died, froze or lost the database; a
-- live node renews every heartbeat interval). A lost lease is crash-class:
-- crashes + 1. Back to retry, claimable at once, while attempts remain and
-- crashes stay below max_crashes $2; otherwise failed (with a "reason" when
-- the crash cap is what stops it). The old owner's heartbeat and reports no
-- longer match (claimed_by/status changed), so it finds the lease lost and
-- fences itself. Held jobs are found through their owners' forge_claims
-- rows, and only rows older than the timeout: a job's heartbeat_at starts
-- at its claim (the claim row's claimed_at) and only moves forward. A job
-- listed twice (released, then claimed again by the same node) is updated
-- once.
WITH expired AS (
    SELECT j.id FROM forge_claims AS c
    CROSS JOIN LATERAL unnest(c.job_ids) AS listed(id)
    JOIN forge_jobs AS j ON j.id = listed.id
    WHERE c.claimed_at < now() - $1::float8 * interval '1 millisecond'
      AND j.claimed_by = c.owner
      AND j.status IN ('claimed', 'running')
      AND j.heartbeat_at < now() - $1::float8 * interval '1 millisecond'
    LIMIT 1000
    FOR UPDATE OF j SKIP LOCKED
), rescued AS (
    UPDATE forge_jobs AS j
    SET status = CASE WHEN j.attempts < j.max_attempts AND j.crashes + 1 < $2
                      THEN 'retry' ELSE 'failed' END,
        scheduled_at = CASE WHEN j.attempts < j.max_attempts AND j.crashes + 1 < $2
                            THEN now() ELSE j.scheduled_at END,
        failed_at = CASE WHEN j.attempts < j.max_attempts AND j.crashes + 1 < $2
                         THEN NULL ELSE now() END,
        claimed_by = CASE WHEN j.attempts < j.max_attempts AND j.crashes + 1 < $2
                          THEN NULL ELSE j.claimed_by END,
        crashes = j.crashes + 1,
        last_error = jsonb_build_object(
            'type', 'forge.errors.NodeLost',
            'message', format('node %s stopped renewing the lease of job %s (last heartbeat %s)',
                              j.claimed_by, j.id, j.heartbeat_at),
            'attempt', j.attempts)
          || CASE WHEN j.attempts < j.max_attempts AND j.crashes + 1 >= $2
                  THEN jsonb_build_object('reason', format('crashed %s times (max_crashes %s)',
                                                           j.crashes + 1, $2::integer))
                  ELSE '{}'::jsonb END
    FROM expired
    WHERE j.id = expired.id
      AND j.status IN ('claimed', 'running')
      AND j.heartbeat_at < now() - $1::float8 * interval '1 millisecond'
    RETURNING j.status
)
SELECT count(*) FILTER (WHERE status = 'retry') AS retried,
       count(*) FILTER (WHERE status = 'failed') AS failed
FROM rescued;

-- name: prune_claims
-- Claim rows older than the heartbeat timeout $1 ms that list no job their
-- owner still holds: what a node that died or stopped without closing them
-- left, after rescue has taken its jobs back, and rows a close kept.
-- Oldest first.
DELETE FROM forge_claims
WHERE id IN (
    SELECT c.id FROM forge_claims AS c
    WHERE c.claimed_at < now() - $1::float8 * interval '1 millisecond'
      AND NOT EXISTS (
          SELECT 1 FROM unnest(c.job_ids) AS listed(id)
          JOIN forge_jobs AS j ON j.id = listed.id
          WHERE j.claimed_by = c.owner AND j.status IN ('claimed', 'running'))
    ORDER BY c.claimed_at
    LIMIT 1000
    FOR UPDATE OF c SKIP LOCKED)
RETURNING id;

-- name: dead_letter
-- Failed jobs move to the dead letter queue once failed for $1 ms (0: at the
-- next sweep). Uses the forge_jobs_failed_at partial index (0003).
WITH old AS (
    SELECT id FROM forge_jobs
    WHERE failed_at IS NOT NULL AND dead_lettered_at IS NULL
      AND status = 'failed'
      AND failed_at <= now() - $1::float8 * interval '1 millisecond'
    ORDER BY failed_at
    LIMIT 1000
    FOR UPDATE SKIP LOCKED
)
UPDATE forge_jobs AS j
SET status = 'dead_letter', dead_lettered_at = now()
FROM old
WHERE j.id = old.id AND j.status = 'failed'
RETURNING j.id;

-- name: prune_dead_letters
-- Dead letters past their retention (the row's dead_letter_retain, or the
-- default $1 ms when NULL) are deleted with their job logs, oldest first, to
-- keep the table and its indexes small. Two bounded scans, one per partial
-- index of 0003: the default retention is an index range scan; rows with
-- their own retention are few and scanned whole.
WITH old_default AS (
    SELECT id FROM forge_jobs
    WHERE dead_lettered_at IS NOT NULL AND dead_letter_retain IS NULL
      AND status = 'dead_letter'
      AND dead_lettered_at <= now() - $1::float8 * interval '1 millisecond'
    ORDER BY dead_lettered_at
    LIMIT 1000
    FOR UPDATE SKIP LOCKED
), old_own AS (
    SELECT id FROM forge_jobs
    WHERE dead_lettered_at IS NOT NULL AND dead_letter_retain IS NOT NULL
      AND status = 'dead_letter'
      AND dead_lettered_at + dead_letter_retain <= now()
    ORDER BY dead_lettered_at
    LIMIT 1000
    FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM forge_jobs AS j
    USING (SELECT id FROM old_default UNION ALL SELECT id FROM old_own) AS old
    WHERE j.id = old.id AND j.status = 'dead_letter'
    RETURNING j.id
), logs AS (
    DELETE FROM forge_job_logs AS l
    USING gone
    WHERE l.job_id = gone.id
)
SELECT count(*) AS pruned FROM gone;

-- name: fail_unknown_types
-- Due jobs of a type that no live node runs (a live node: not stopped and a
-- node heartbeat within the heartbeat timeout $1 ms) would wait forever,
-- since nodes only claim their own types: fail them with the reason. Only
-- jobs due for longer than the timeout, so a starting node has time to
-- register; and only when the sweeping node $2 is itself live, so a node
-- whose own registration is stale never judges the others. The cost is
-- bounded on a huge backlog: only the first 10,000 due claimable rows in
-- claim order (the forge_jobs_claimable index) are looked at.
WITH due AS MATERIALIZED (
    SELECT id, job_type, scheduled_at FROM forge_jobs
    WHERE claimed_by IS NULL AND failed_at IS NULL
      AND scheduled_at <= now()
    ORDER BY priority, scheduled_at, id
    LIMIT 10000
), live AS MATERIALIZED (
    SELECT id, job_types FROM forge_nodes
    WHERE stopped_at IS NULL
      AND heartbeat_at > now() - $1::float8 * interval '1 millisecond'
), orphaned AS (
    SELECT j.id FROM forge_jobs AS j
    WHERE j.id IN (
        SELECT due.id FROM due
        WHERE due.scheduled_at <= now() - $1::float8 * interval '1 millisecond'
          AND NOT EXISTS (SELECT 1 FROM live WHERE due.job_type = ANY(live.job_types)))
      AND j.claimed_by IS NULL AND j.failed_at IS NULL
      AND EXISTS (SELECT 1 FROM live WHERE live.id = $2)
    LIMIT 1000
    FOR UPDATE OF j SKIP LOCKED
)
UPDATE forge_jobs AS j
SET status = 'failed', failed_at = now(),
    last_error = jsonb_build_object(
        'type', 'forge.errors.UnknownJobType',
        'message', format('no live node runs job type %L (job %s): register it with '
                          '@forge.job in a module listed in [app] modules', j.job_type, j.id),
        'attempt', j.attempts)
FROM orphaned
WHERE j.id = orphaned.id AND j.claimed_by IS NULL AND j.failed_at IS NULL
RETURNING j.id;

-- name: reap_nodes
-- Registrations of nodes gone for $1 ms (the core passes max(10 x heartbeat
-- timeout, 1 hour), so stopped nodes stay visible in forge_nodes for an
-- hour and a paused node is long rescued first). Never a node that still
-- has forge_claims rows: every job it holds is listed in one of them.
DELETE FROM forge_nodes
WHERE id IN (
    SELECT n.id FROM forge_nodes AS n
    WHERE n.heartbeat_at < now() - $1::float8 * interval '1 millisecond'
      AND NOT EXISTS (SELECT 1 FROM forge_claims AS c WHERE c.owner = n.id)
    LIMIT 1000
    FOR UPDATE OF n SKIP LOCKED)
RETURNING id;
