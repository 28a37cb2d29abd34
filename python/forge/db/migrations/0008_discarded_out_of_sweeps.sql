-- Discarded failures leave the dead letter sweeps' indexes (issue 13).
-- Numbered 0008 because 0007 is the cancelling of held jobs'; the two are
-- independent and apply in order.
--
-- A job discarded by hand (operations.sql discard_jobs) keeps its failed_at,
-- and its dead_lettered_at if it was a dead letter: they are its history, and
-- failed_at keeps it out of the claimable rows (0005). But the partial
-- indexes of the dead_letter and prune_dead_letters sweeps (0003, 0006) are
-- told by those columns alone, so a discarded row stayed in them until
-- retention pruned it ([retention] discarded, 7 days by default), and as the
-- oldest entries it was read first by every sweep on every node and then
-- left by the sweep's status test: 100,000 jobs discarded at once were
-- 100,000 rows read per sweep. Their predicates now leave out rows with a
-- discarded_at (the CHECK of 0005 ties it to status = 'discarded'); the
-- sweeps test discarded_at IS NULL too, to use them. A discard is rare and
-- no completion writes discarded_at, so completions stay HOT (0003).
--
-- The sweeps (engine.sql) read the new predicates: stop nodes running code
-- from before 0008 when applying it, as for 0003 and 0005; theirs would
-- find no index for their scans until stopped.

DROP INDEX forge_jobs_failed_at;
CREATE INDEX forge_jobs_failed_at ON forge_jobs (failed_at)
    WHERE failed_at IS NOT NULL AND dead_lettered_at IS NULL AND discarded_at IS NULL;

DROP INDEX forge_jobs_failed_at_own;
CREATE INDEX forge_jobs_failed_at_own ON forge_jobs (failed_at)
    WHERE failed_at IS NOT NULL AND dead_lettered_at IS NULL AND dead_letter_after IS NOT NULL
      AND discarded_at IS NULL;

DROP INDEX forge_jobs_dead_lettered;
CREATE INDEX forge_jobs_dead_lettered ON forge_jobs (dead_lettered_at)
    WHERE dead_lettered_at IS NOT NULL AND dead_letter_retain IS NULL AND discarded_at IS NULL;

DROP INDEX forge_jobs_dead_lettered_retain;
CREATE INDEX forge_jobs_dead_lettered_retain ON forge_jobs (dead_lettered_at)
    WHERE dead_lettered_at IS NOT NULL AND dead_letter_retain IS NOT NULL AND discarded_at IS NULL;
