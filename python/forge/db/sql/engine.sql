-- Statements of the supervisor's hot path, run by the Rust core (forge._core).
-- Fencing: every report after the claim (start, heartbeat, complete, fail,
-- release, progress, log lines) is guarded by the lease: id, attempt (attempts) and
-- owner (claimed_by) must all match and the job must still be held (claimed
-- or running), so a late, duplicate or rescued report changes no row; the
-- core counts each such report in stats()["fenced"] (a heartbeat that renews
-- nothing counts in "lost" instead).
-- Claimable rows are told by claimed_by IS NULL AND failed_at IS NULL AND
-- cancelled_at IS NULL (the forge_jobs_claimable predicate; a CHECK of 0003,
-- remade by 0005, ties it to status), and the
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
-- run (rolling deploys with two code versions are safe), and never a paused
-- type (forge_paused, 0005: an operator's pause holds on every node). The
-- capability and type tests are filters on the forge_jobs_claimable index
-- scan; the paused types are read once per claim (an InitPlan), so with no
-- pause the filter is a test against an empty array. The ids
-- taken are recorded in one forge_claims row of the owner, in the same
-- statement, so no job is ever held without one; its id comes back with
-- every row (for close_claims).
-- A claim that took fewer than $1 took every job it could claim in its
-- snapshot: when $5 (the node has live peers) it says so on forge_jobs
-- with its owner, snapshot and now(), so peers waiting on announced jobs
-- (the Rust core's announce.rs) need not claim them too. That notice must
-- go out for an empty claim as well, hence the one-row `told` joined to the
-- claimed rows: a claim that took nothing returns one row of nulls. A
-- snapshot too long for a payload sends nothing (peers claim after their wait).
WITH due AS (
    SELECT id FROM forge_jobs
    WHERE claimed_by IS NULL AND failed_at IS NULL AND cancelled_at IS NULL
      AND scheduled_at <= now()
      AND capability = ANY($2::text[])
      AND job_type = ANY($4::text[])
      AND job_type <> ALL(ARRAY(SELECT job_type FROM forge_paused))
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
), notice AS (
    SELECT json_build_object('k', 'c', 'o', $3::text, 's', pg_current_snapshot()::text,
                             'at', floor(extract(epoch FROM now()) * 1000)::bigint)::text AS cleared
    WHERE $5::boolean AND (SELECT count(*) FROM claimed) < $1
), told AS (
    SELECT count(pg_notify('forge_jobs', cleared)) FROM notice WHERE octet_length(cleared) < 7900
)
SELECT c.id, c.job_type, c.attempts, c.max_attempts, c.priority, c.input, c.parent_id,
       (SELECT id FROM recorded) AS claim_id
FROM told LEFT JOIN claimed AS c ON true
ORDER BY c.priority, c.scheduled_at, c.id;

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
-- is when the job ended ($6: milliseconds ago) and started_at when it
-- started ($5, from this same now(), so the two are exactly ordered; NULL
-- when the core did not see the start: the start statement's, else the
-- end's time); completed_at is never before started_at. Each time is
-- computed once per row (t), not once per use.
UPDATE forge_jobs AS j
SET status = 'completed',
    completed_at = greatest(t.ended, coalesce(t.started, j.started_at)),
    started_at = coalesce(t.started, j.started_at, t.ended),
    heartbeat_at = now(),
    result = c.result::jsonb, progress = 100
FROM unnest($1::bigint[], $2::integer[], $3::text[], $5::float8[], $6::float8[])
     AS c(id, attempt, result, started_ago_ms, ended_ago_ms)
CROSS JOIN LATERAL (
    SELECT now() - c.started_ago_ms * interval '1 millisecond' AS started,
           now() - c.ended_ago_ms * interval '1 millisecond' AS ended
) AS t
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
-- from the job's backoff policy. failed_at and started_at are the times of
-- the failure ($10) and of the start ($9), as in complete.
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
                     ELSE greatest(now() - f.ended_ago_ms * interval '1 millisecond',
                                   coalesce(now() - f.started_ago_ms * interval '1 millisecond',
                                            j.started_at)) END,
    claimed_by = CASE WHEN f.retryable AND j.attempts < j.max_attempts
                           AND j.crashes + f.crashed::integer < $8
                      THEN NULL ELSE j.claimed_by END,
    started_at = coalesce(now() - f.started_ago_ms * interval '1 millisecond', j.started_at,
                          now() - f.ended_ago_ms * interval '1 millisecond'),
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
-- again at once, and the attempt is not charged; cancelled instead (0007's
-- trigger) when an operator cancelled them meanwhile.
UPDATE forge_jobs AS j
SET status = 'pending', attempts = j.attempts - 1, claimed_by = NULL,
    claimed_at = NULL, started_at = NULL, heartbeat_at = NULL
FROM unnest($1::bigint[], $2::integer[]) AS r(id, attempt)
WHERE j.id = r.id AND j.attempts = r.attempt AND j.claimed_by = $3
  AND j.status IN ('claimed', 'running')
RETURNING j.id, j.status;

-- name: progress
-- Latest progress of running jobs (one row per job in a batch).
UPDATE forge_jobs AS j
SET progress = p.progress, progress_message = p.message, heartbeat_at = now()
FROM unnest($1::bigint[], $2::integer[], $3::smallint[], $4::text[])
     AS p(id, attempt, progress, message)
WHERE j.id = p.id AND j.attempts = p.attempt AND j.claimed_by = $5
  AND j.status IN ('claimed', 'running')
RETURNING j.id;

-- name: log_lines
-- Job log lines (ctx.log), stored in the order they came, only for jobs
-- owner $7 holds at the line's attempt (claimed or running), as progress
-- is: a late line, or one of a rescued attempt, is dropped. at is when the
-- supervisor got the line ($6: ms ago); node is the owner (0010). The job's row is only read, never
-- locked or written: a line neither waits for a row lock nor costs the
-- job's completion its HOT update. How many were stored comes back.
WITH written AS (
    INSERT INTO forge_job_logs (job_id, attempt, level, message, fields, at, node)
    SELECT l.id, l.attempt, l.level, l.message, l.fields::jsonb,
           now() - l.ago_ms * interval '1 millisecond', $7
    FROM unnest($1::bigint[], $2::integer[], $3::text[], $4::text[], $5::text[], $6::float8[])
         WITH ORDINALITY AS l(id, attempt, level, message, fields, ago_ms, n)
    JOIN forge_jobs AS j ON j.id = l.id AND j.attempts = l.attempt AND j.claimed_by = $7
                         AND j.status IN ('claimed', 'running')
    ORDER BY l.n
    RETURNING 1
)
SELECT count(*) AS written FROM written;

-- name: busy_jobs
-- Which of jobs $1 another session holds a row lock on, so that a report
-- of one would wait for it: every row that can be locked at once is locked
-- (SKIP LOCKED, released at the statement's end); the rows that exist but
-- could not be are the answer. Run only for reports that met a lock
-- (reporter.rs), as locking a row writes it.
WITH free AS MATERIALIZED (
    SELECT id FROM forge_jobs WHERE id = ANY($1::bigint[])
    FOR UPDATE SKIP LOCKED
)
SELECT j.id FROM forge_jobs AS j
WHERE j.id = ANY($1::bigint[]) AND j.id NOT IN (SELECT id FROM free);

-- name: heartbeat
-- Renew the leases of every job this node holds, in one statement, without
-- ever waiting for a row lock: the rows to renew are locked SKIP LOCKED, so
-- a job row another session holds (an operator's SELECT ... FOR UPDATE, a
-- rescuer's sweep) cannot stall the renewal of all the others. One row per
-- lease still held: renewed = true when renewed; false when its row was
-- locked by someone else, with age_ms, how long ago (database clock) the
-- lease was last renewed: by the last committed version of the row the
-- lease is still this node's, and the core gives it up itself before that
-- age could let another node rescue it (heartbeat.rs). A lease with no row
-- is lost. A lock by a rescuer that then takes the job shows as lost at the
-- next renewal. cancel says an operator asked the job to stop (0007): the
-- fallback of request_cancel's notice (operations.sql), read every round.
-- A job that completed itself in its own transaction (context.sql complete)
-- is still this lease's: reported as renewed, never lost, until the
-- supervisor's own report of that end (fenced) ends the lease.
WITH sent AS MATERIALIZED (
    SELECT * FROM unnest($1::bigint[], $2::integer[]) AS h(id, attempt)
), locked AS MATERIALIZED (
    SELECT j.id FROM sent JOIN forge_jobs AS j ON j.id = sent.id
    WHERE j.attempts = sent.attempt AND j.claimed_by = $3
      AND j.status IN ('claimed', 'running')
    FOR UPDATE OF j SKIP LOCKED
), renewed AS (
    UPDATE forge_jobs AS j
    SET heartbeat_at = now()
    FROM locked
    WHERE j.id = locked.id
    RETURNING j.id, j.cancel_requested_at IS NOT NULL AS cancel
)
SELECT id, true AS renewed, 0::float8 AS age_ms, cancel FROM renewed
UNION ALL
SELECT j.id, false, extract(epoch FROM now() - j.heartbeat_at)::float8 * 1000,
       j.cancel_requested_at IS NOT NULL
FROM sent JOIN forge_jobs AS j ON j.id = sent.id
WHERE sent.id NOT IN (SELECT id FROM locked)
  AND j.attempts = sent.attempt AND j.claimed_by = $3
  AND j.status IN ('claimed', 'running')
UNION ALL
SELECT j.id, true, 0::float8, false
FROM sent JOIN forge_jobs AS j ON j.id = sent.id
WHERE j.attempts = sent.attempt AND j.claimed_by = $3 AND j.status = 'completed';

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
-- $4 roles, $5 capabilities, $6 worker count, $7 job types. Other nodes
-- judge job types by these rows (fail_unknown_types).
INSERT INTO forge_nodes (id, hostname, pid, roles, capabilities, workers, job_types)
VALUES ($1, $2, $3, $4, $5, $6, $7);

-- name: stop_node
-- A clean stop: the row stays, for operators to see, until reaped; its
-- heartbeat_at is when its job types were last run here.
UPDATE forge_nodes SET stopped_at = now(), heartbeat_at = now() WHERE id = $1;

-- name: node_heartbeat
-- Keep this node's registration fresh, beside its leases on the heartbeat
-- connection: a row some other session has locked is skipped (renewed at
-- the next beat) rather than waited for.
UPDATE forge_nodes SET heartbeat_at = now()
WHERE id IN (SELECT id FROM forge_nodes WHERE id = $1 FOR UPDATE SKIP LOCKED);

-- name: notify
-- Wake other nodes after jobs were handed back or rescued.
SELECT pg_notify('forge_jobs', '0');

-- name: peers
-- The other live nodes (registered, not stopped, heartbeat within $2 ms),
-- with what they claim: who else may take an announced job (announce.rs).
SELECT id, capabilities, job_types FROM forge_nodes
WHERE id <> $1 AND stopped_at IS NULL
  AND heartbeat_at > now() - $2::float8 * interval '1 millisecond';

-- name: rescue
-- Jobs whose node stopped renewing their lease (heartbeat_at older than the
-- heartbeat timeout $1 ms: the node died, froze or lost the database; a
-- live node renews every heartbeat interval). Only an attempt that started
-- (status running) is charged: a lost lease of a running job is
-- crash-class (crashes + 1, last_error NodeLost), back to retry, claimable
-- at once, while attempts remain and crashes stay below max_crashes $2,
-- otherwise failed (with a "reason" when the crash cap is what stops it).
-- A job its node claimed but never started (prefetched) goes back to retry
-- with nothing charged: no crash, last_error kept, and max_attempts + 1, so
-- it keeps every run it had. Its attempts stay as they are because the
-- attempt number is the lease's identity: were it handed out again, the
-- next claim could give this very (id, attempt, owner) back to the lost
-- owner, whose late reports (it may only have been cut off) would then
-- land on the new lease. A start the lost node reported but never wrote
-- counts as not started: the database is all a rescuer can go by.
-- The old owner's heartbeat and reports no longer match (claimed_by/status
-- changed), so it finds the lease lost and fences itself. Held jobs are
-- found through their owners' forge_claims rows, and only rows older than
-- the timeout: a job's heartbeat_at starts at its claim (the claim row's
-- claimed_at) and only moves forward. A job listed twice (released, then
-- claimed again by the same node) is updated once.
WITH expired AS (
    SELECT j.id, j.status = 'running' AS started,
           j.status = 'claimed' OR (j.attempts < j.max_attempts AND j.crashes + 1 < $2) AS retried
    FROM forge_claims AS c
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
    SET status = CASE WHEN e.retried THEN 'retry' ELSE 'failed' END,
        scheduled_at = CASE WHEN e.retried THEN now() ELSE j.scheduled_at END,
        failed_at = CASE WHEN e.retried THEN NULL ELSE now() END,
        claimed_by = CASE WHEN e.retried THEN NULL ELSE j.claimed_by END,
        max_attempts = j.max_attempts + (NOT e.started)::integer,
        crashes = j.crashes + e.started::integer,
        last_error = CASE WHEN NOT e.started THEN j.last_error ELSE
            jsonb_build_object(
                'type', 'forge.errors.NodeLost',
                'message', format('node %s stopped renewing the lease of job %s (last heartbeat %s)',
                                  j.claimed_by, j.id, j.heartbeat_at),
                'attempt', j.attempts)
            || CASE WHEN j.attempts < j.max_attempts AND j.crashes + 1 >= $2
                    THEN jsonb_build_object('reason', format('crashed %s times (max_crashes %s)',
                                                             j.crashes + 1, $2::integer))
                    ELSE '{}'::jsonb END
        END
    FROM expired AS e
    WHERE j.id = e.id
      AND j.status IN ('claimed', 'running')
      AND j.heartbeat_at < now() - $1::float8 * interval '1 millisecond'
    RETURNING e.started, j.status
)
SELECT count(*) FILTER (WHERE started AND status = 'retry') AS retried,
       count(*) FILTER (WHERE status = 'failed') AS failed,
       count(*) FILTER (WHERE NOT started) AS unstarted
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
-- Failed jobs move to the dead letter queue once failed for their own
-- dead_letter_after, or the default $1 ms when NULL (0: at the next sweep).
-- Two bounded scans, as in prune_dead_letters: the default is a range scan
-- of the forge_jobs_failed_at partial index (0003), rows with their own
-- value are few and scanned whole (forge_jobs_failed_at_own, 0006).
-- Discarded jobs are in neither index (0008): discarded_at IS NULL.
WITH old_default AS (
    SELECT id FROM forge_jobs
    WHERE failed_at IS NOT NULL AND dead_lettered_at IS NULL AND discarded_at IS NULL
      AND dead_letter_after IS NULL AND status = 'failed'
      AND failed_at <= now() - $1::float8 * interval '1 millisecond'
    ORDER BY failed_at
    LIMIT 1000
    FOR UPDATE SKIP LOCKED
), old_own AS (
    SELECT id FROM forge_jobs
    WHERE failed_at IS NOT NULL AND dead_lettered_at IS NULL AND discarded_at IS NULL
      AND dead_letter_after IS NOT NULL AND status = 'failed'
      AND failed_at + dead_letter_after <= now()
    ORDER BY failed_at
    LIMIT 1000
    FOR UPDATE SKIP LOCKED
)
UPDATE forge_jobs AS j
SET status = 'dead_letter', dead_lettered_at = now()
FROM (SELECT id FROM old_default UNION ALL SELECT id FROM old_own) AS old
WHERE j.id = old.id AND j.status = 'failed'
RETURNING j.id;

-- name: prune_dead_letters
-- Dead letters past their retention (the row's dead_letter_retain, or the
-- default $1 ms when NULL) are deleted with their job logs, oldest first, to
-- keep the table and its indexes small. Two bounded scans, one per partial
-- index of 0003: the default retention is an index range scan; rows with
-- their own retention are few and scanned whole. Discarded dead letters are
-- in neither index (0008): discarded_at IS NULL.
WITH old_default AS (
    SELECT id FROM forge_jobs
    WHERE dead_lettered_at IS NOT NULL AND dead_letter_retain IS NULL AND discarded_at IS NULL
      AND status = 'dead_letter'
      AND dead_lettered_at <= now() - $1::float8 * interval '1 millisecond'
    ORDER BY dead_lettered_at
    LIMIT 1000
    FOR UPDATE SKIP LOCKED
), old_own AS (
    SELECT id FROM forge_jobs
    WHERE dead_lettered_at IS NOT NULL AND dead_letter_retain IS NOT NULL AND discarded_at IS NULL
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

-- name: prune_finished
-- [retention]: completed, cancelled and discarded rows past their retention
-- ($2, $3, $4 ms; NULL keeps them forever) are deleted with their job logs.
-- A completed row counts from completed_at; a cancelled or discarded one
-- from cancelled_at or discarded_at (0005), when it was cancelled or
-- discarded, else (rows set so by hand) from failed_at, its last heartbeat
-- or when it was due.
-- No index may look at status or completed_at (completion stays HOT, 0003),
-- so the sweep walks the primary key: one window of at most 1000 rows after
-- id $1 (the walk's cursor, kept by the core), filtered on status first so
-- only finished rows are ever locked (SKIP LOCKED: never waits for, nor
-- blocks, a claim or a report). It returns the counts, the last id of the
-- window and whether the walk is over: the window came back short (the end
-- of the table) or reached rows created after now() - $5 ms, the shortest
-- retention, which nothing can be old enough in yet; the core then starts
-- the next walk at the first id again. A row of a transaction that stayed
-- open past $5 may sit beyond that point: a later walk reaches it.
WITH walked AS MATERIALIZED (
    SELECT id, created_at, status IN ('completed', 'cancelled', 'discarded') AND CASE status
               WHEN 'completed' THEN completed_at <= now() - $2::float8 * interval '1 millisecond'
               WHEN 'cancelled' THEN coalesce(cancelled_at, failed_at, heartbeat_at, scheduled_at)
                                     <= now() - $3::float8 * interval '1 millisecond'
               ELSE coalesce(discarded_at, failed_at, heartbeat_at, scheduled_at)
                    <= now() - $4::float8 * interval '1 millisecond'
               END AS expired
    FROM forge_jobs
    WHERE id > $1
    ORDER BY id
    LIMIT 1000
), old AS (
    SELECT j.id FROM forge_jobs AS j
    WHERE j.id IN (SELECT id FROM walked WHERE expired)
      AND j.status IN ('completed', 'cancelled', 'discarded')
    FOR UPDATE OF j SKIP LOCKED
), gone AS (
    DELETE FROM forge_jobs AS j
    USING old
    WHERE j.id = old.id AND j.status IN ('completed', 'cancelled', 'discarded')
    RETURNING j.id, j.status
), logs AS (
    DELETE FROM forge_job_logs AS l
    USING gone
    WHERE l.job_id = gone.id
)
SELECT (SELECT count(*) FROM gone WHERE status = 'completed') AS completed,
       (SELECT count(*) FROM gone WHERE status = 'cancelled') AS cancelled,
       (SELECT count(*) FROM gone WHERE status = 'discarded') AS discarded,
       (SELECT coalesce(max(id), 0) FROM walked) AS last_id,
       (SELECT count(*) < 1000
               OR coalesce(bool_or(created_at > now() - $5::float8 * interval '1 millisecond'), false)
        FROM walked) AS walked_all;

-- name: release_keys
-- [retention] idempotency: the idempotency keys of completed, cancelled and
-- discarded jobs that ended over $2 ms ago are released (set to NULL), so
-- the key may be dispatched again; unfinished and failed jobs keep theirs
-- until their row goes (0009). When a job ended is completed_at (or
-- cancelled_at, discarded_at), which no index may look at (0003), so the
-- sweep walks forge_jobs_keyed (the keyed rows by id, 0009): one window of
-- at most 1000 keyed rows after id $1 (the walk's cursor, kept by the
-- core), as prune_finished walks the primary key; only the rows it
-- releases are locked (SKIP LOCKED), and the release is checked again on
-- the locked row. It returns how many were released, the last id of the
-- window and whether the walk is over: the window came back short, or
-- reached rows created after now() - $2 ms, which cannot have ended that
-- long ago; the core then starts the next walk at the first id again.
WITH walked AS MATERIALIZED (
    SELECT id, created_at,
           coalesce(CASE status WHEN 'completed' THEN completed_at
                                WHEN 'cancelled' THEN cancelled_at
                                WHEN 'discarded' THEN discarded_at END
                    <= now() - $2::float8 * interval '1 millisecond', false) AS expired
    FROM forge_jobs
    WHERE idempotency_key IS NOT NULL AND id > $1
    ORDER BY id
    LIMIT 1000
), old AS (
    SELECT j.id FROM forge_jobs AS j
    WHERE j.id IN (SELECT id FROM walked WHERE expired)
      AND j.idempotency_key IS NOT NULL
    FOR UPDATE OF j SKIP LOCKED
), released AS (
    UPDATE forge_jobs AS j
    SET idempotency_key = NULL
    FROM old
    WHERE j.id = old.id
      AND CASE j.status WHEN 'completed' THEN j.completed_at
                        WHEN 'cancelled' THEN j.cancelled_at
                        WHEN 'discarded' THEN j.discarded_at END
          <= now() - $2::float8 * interval '1 millisecond'
    RETURNING j.id
)
SELECT (SELECT count(*) FROM released) AS released,
       (SELECT coalesce(max(id), 0) FROM walked) AS last_id,
       (SELECT count(*) < 1000
               OR coalesce(bool_or(created_at > now() - $2::float8 * interval '1 millisecond'), false)
        FROM walked) AS walked_all;

-- name: fail_unknown_types
-- Due jobs of a type no node runs would wait forever, since nodes only
-- claim their own types: fail them with the reason, but only once nobody
-- has run the type for the grace $1 ms ([node] unknown_type_grace), so a
-- restart of the only node of a type, or of every node in turn, fails
-- nothing. A type was last run by a node at that node's heartbeat_at: its
-- last beat, or its stop (stop_node); a node that is not stopped counts as
-- running it for at least the heartbeat timeout $2 ms after its last beat
-- (it may only be slow); forge_job_types remembers the types of reaped
-- registrations (reap_nodes). The job itself must have been due for the
-- grace too, so a type deployed to the dispatchers before the workers has
-- as long. Only when the sweeping node $3 is itself live, so a node whose
-- own registration is stale never judges the others.
-- The cost is bounded on a huge backlog: per priority (0-3, the CHECK of
-- 0001), only the 2,500 claimable rows due longest, a range of the
-- forge_jobs_claimable index that is empty unless jobs have waited past
-- the grace; the types among them are judged once each.
WITH judge AS MATERIALIZED (
    SELECT 1 FROM forge_nodes
    WHERE id = $3 AND stopped_at IS NULL
      AND heartbeat_at > now() - $2::float8 * interval '1 millisecond'
), due AS MATERIALIZED (
    SELECT waiting.id, waiting.job_type FROM generate_series(0, 3) AS p(priority)
    CROSS JOIN LATERAL (
        SELECT id, job_type FROM forge_jobs
        WHERE claimed_by IS NULL AND failed_at IS NULL AND cancelled_at IS NULL
          AND priority = p.priority
          AND scheduled_at <= now() - $1::float8 * interval '1 millisecond'
        ORDER BY scheduled_at, id
        LIMIT 2500) AS waiting
    WHERE EXISTS (SELECT 1 FROM judge)
), unrun AS MATERIALIZED (
    SELECT t.job_type FROM (SELECT DISTINCT job_type FROM due) AS t
    WHERE NOT EXISTS (
        SELECT 1 FROM forge_nodes AS n
        WHERE t.job_type = ANY(n.job_types)
          AND n.heartbeat_at > now() - interval '1 millisecond' * CASE
              WHEN n.stopped_at IS NULL THEN greatest($1::float8, $2::float8) ELSE $1::float8 END)
      AND NOT EXISTS (
        SELECT 1 FROM forge_job_types AS k
        WHERE k.job_type = t.job_type
          AND k.seen_at > now() - $1::float8 * interval '1 millisecond')
), orphaned AS (
    SELECT j.id FROM forge_jobs AS j
    WHERE j.id IN (SELECT due.id FROM due JOIN unrun ON unrun.job_type = due.job_type)
      AND j.claimed_by IS NULL AND j.failed_at IS NULL AND j.cancelled_at IS NULL
    LIMIT 1000
    FOR UPDATE OF j SKIP LOCKED
)
UPDATE forge_jobs AS j
SET status = 'failed', failed_at = now(),
    last_error = jsonb_build_object(
        'type', 'forge.errors.UnknownJobType',
        'message', format('no node has run job type %L for %s (job %s): register it with '
                          '@forge.job in a module listed in [app] modules',
                          j.job_type, $1::float8 * interval '1 millisecond', j.id),
        'attempt', j.attempts)
FROM orphaned
WHERE j.id = orphaned.id AND j.claimed_by IS NULL AND j.failed_at IS NULL AND j.cancelled_at IS NULL
RETURNING j.id;

-- name: reap_nodes
-- Registrations of nodes gone for $1 ms (the core passes max(10 x heartbeat
-- timeout, 1 hour), so stopped nodes stay visible in forge_nodes for an
-- hour and a paused node is long rescued first). Never a node that still
-- has forge_claims rows: every job it holds is listed in one of them. What
-- a deleted row says about its job types (when they were last run there)
-- is kept in forge_job_types, for fail_unknown_types' grace.
WITH gone AS (
    DELETE FROM forge_nodes
    WHERE id IN (
        SELECT n.id FROM forge_nodes AS n
        WHERE n.heartbeat_at < now() - $1::float8 * interval '1 millisecond'
          AND NOT EXISTS (SELECT 1 FROM forge_claims AS c WHERE c.owner = n.id)
        LIMIT 1000
        FOR UPDATE OF n SKIP LOCKED)
    RETURNING id, job_types, heartbeat_at
), remembered AS (
    INSERT INTO forge_job_types (job_type, seen_at)
    SELECT t.job_type, max(gone.heartbeat_at)
    FROM gone CROSS JOIN LATERAL unnest(gone.job_types) AS t(job_type)
    GROUP BY t.job_type
    ON CONFLICT (job_type) DO UPDATE SET seen_at = greatest(forge_job_types.seen_at, excluded.seen_at)
)
SELECT id FROM gone;
