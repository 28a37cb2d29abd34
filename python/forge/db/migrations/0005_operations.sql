-- Operating jobs by hand (issue 13, forge/operations.py): cancelling a job
-- before it is claimed, discarding a failed one, and pausing a job type on
-- every node.
--
-- A cancelled job must leave the claimable rows, which 0003 tells by
-- claimed_by IS NULL AND failed_at IS NULL (never by status, so that a
-- completion stays a HOT update). A pending job has neither, and a
-- failed_at it never had would put it among the failures the dead letter
-- sweep walks, so when it was cancelled is a column of its own, in the
-- claimable index's predicate and in the CHECK that ties it to status. A
-- discarded job always failed first (only failed and dead_letter jobs are
-- discarded), so its failed_at already keeps it unclaimable; discarded_at
-- says when it was given up. No index looks at a column a completion writes.
-- A retry by hand clears failed_at, dead_lettered_at, cancelled_at,
-- discarded_at and claimed_by: 0003's CHECK refused a retry that set only
-- the status, as a failed job keeps its last owner (claimed_by) and failed_at.
--
-- The claim (engine.sql) tests cancelled_at IS NULL to use the new index:
-- stop nodes running code from before 0005 when applying it (a clean stop
-- hands their jobs back), as for 0003; their claim statement would try to
-- claim a cancelled job, which the CHECK refuses.

ALTER TABLE forge_jobs ADD COLUMN cancelled_at timestamptz, ADD COLUMN discarded_at timestamptz;

-- Rows set to these states by hand before 0005 get their times, so the CHECKs hold.
UPDATE forge_jobs SET cancelled_at = coalesce(failed_at, completed_at, now()) WHERE status = 'cancelled';
UPDATE forge_jobs SET discarded_at = coalesce(failed_at, completed_at, now()) WHERE status = 'discarded';

ALTER TABLE forge_jobs DROP CONSTRAINT forge_jobs_claimable_valid;
ALTER TABLE forge_jobs ADD CONSTRAINT forge_jobs_claimable_valid
    CHECK ((status IN ('pending', 'retry')) = (claimed_by IS NULL AND failed_at IS NULL AND cancelled_at IS NULL));
ALTER TABLE forge_jobs ADD CONSTRAINT forge_jobs_cancelled_valid
    CHECK ((status = 'cancelled') = (cancelled_at IS NOT NULL));
ALTER TABLE forge_jobs ADD CONSTRAINT forge_jobs_discarded_valid
    CHECK ((status = 'discarded') = (discarded_at IS NOT NULL));

DROP INDEX forge_jobs_claimable;
CREATE INDEX forge_jobs_claimable ON forge_jobs (priority, scheduled_at, id)
    WHERE claimed_by IS NULL AND failed_at IS NULL AND cancelled_at IS NULL;

-- Cancelled and discarded rows by age, for retention's pruning in bounded batches.
CREATE INDEX forge_jobs_cancelled ON forge_jobs (cancelled_at) WHERE cancelled_at IS NOT NULL;
CREATE INDEX forge_jobs_discarded ON forge_jobs (discarded_at) WHERE discarded_at IS NOT NULL;

-- Job types no node claims until resumed: a row here holds on every node and
-- across restarts (the claim statement reads it). Running jobs finish.
CREATE TABLE forge_paused (
    job_type  text        PRIMARY KEY,
    paused_at timestamptz NOT NULL DEFAULT now()
);
