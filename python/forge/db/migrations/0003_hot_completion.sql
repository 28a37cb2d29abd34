-- A job's completion becomes a HOT update: no new primary-key entry, no
-- unique check against the row's older versions, no new heap page. In 0001
-- every index that tells rows apart by state did it with `status` in its
-- predicate, and PostgreSQL updates a row in place (HOT) only when no
-- indexed or predicate column changes, which a completion (status running
-- -> completed) always did. Perf on a no-op run put the completion's
-- primary-key insert at over half of the report connection's CPU.
--
-- So no index looks at a column a completion writes (status, completed_at,
-- started_at, heartbeat_at, result, progress):
--   * claimable rows are told by claimed_by and failed_at, which a claim,
--     a failure, a retry and a release set or clear and a completion keeps;
--     the CHECK below ties them to status, so the database itself refuses a
--     statement that would break the equivalence;
--   * the dead letter indexes use failed_at / dead_lettered_at;
--   * forge_jobs_leased (held rows by owner) is gone. The leases a node
--     holds are found through forge_claims instead: one row per claim
--     statement with the ids it took, written by the claim itself and
--     deleted once none of them is held (see engine.sql: claim,
--     close_claims, rescue, prune_claims, reap_nodes).
-- fillfactor 50 leaves room on each page for a job's next versions, so
-- the claim's new version stays on its page and the completion's fits
-- beside it (a HOT update needs room on the same page).

ALTER TABLE forge_jobs SET (fillfactor = 50);

ALTER TABLE forge_jobs ADD CONSTRAINT forge_jobs_claimable_valid
    CHECK ((status IN ('pending', 'retry')) = (claimed_by IS NULL AND failed_at IS NULL));

DROP INDEX forge_jobs_claimable;
CREATE INDEX forge_jobs_claimable ON forge_jobs (priority, scheduled_at, id)
    WHERE claimed_by IS NULL AND failed_at IS NULL;

DROP INDEX forge_jobs_leased;

DROP INDEX forge_jobs_dead_letter;
CREATE INDEX forge_jobs_dead_letter ON forge_jobs (job_type, failed_at DESC)
    WHERE failed_at IS NOT NULL;

DROP INDEX forge_jobs_failed_at;
CREATE INDEX forge_jobs_failed_at ON forge_jobs (failed_at)
    WHERE failed_at IS NOT NULL AND dead_lettered_at IS NULL;

DROP INDEX forge_jobs_dead_lettered;
CREATE INDEX forge_jobs_dead_lettered ON forge_jobs (dead_lettered_at)
    WHERE dead_lettered_at IS NOT NULL AND dead_letter_retain IS NULL;

DROP INDEX forge_jobs_dead_lettered_retain;
CREATE INDEX forge_jobs_dead_lettered_retain ON forge_jobs (dead_lettered_at)
    WHERE dead_lettered_at IS NOT NULL AND dead_letter_retain IS NOT NULL;

-- Every job held (claimed or running) is listed in a forge_claims row of its
-- owner: the claim statement writes both at once, and a row is deleted only
-- when none of the jobs it lists is still held by its owner. Rescue and
-- node reaping look here; a job's lease is still its own row's (attempts,
-- claimed_by, heartbeat_at).
CREATE TABLE forge_claims (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    owner      uuid        NOT NULL,
    claimed_at timestamptz NOT NULL DEFAULT now(),
    job_ids    bigint[]    NOT NULL
);

CREATE INDEX forge_claims_claimed_at ON forge_claims (claimed_at);
CREATE INDEX forge_claims_owner ON forge_claims (owner);

-- Jobs held when this runs get their claim rows here, so rescue still finds
-- them. A node running code from before 0003 writes none for what it claims
-- afterwards: stop such nodes when applying it (a clean stop hands their
-- unfinished jobs back), do not run both versions side by side.
INSERT INTO forge_claims (owner, claimed_at, job_ids)
SELECT claimed_by, min(claimed_at), array_agg(id ORDER BY id)
FROM forge_jobs
WHERE status IN ('claimed', 'running')
GROUP BY claimed_by;
