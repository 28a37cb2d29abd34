-- Lifecycle and retention (issue 13). Numbered 0006 because 0005 is the
-- operations API's (pauses); the two are independent and apply in order.
--
-- A job's own dead_letter_after (@forge.job(dead_letter_after=...)): how
-- long it stays failed before the dead letter queue; NULL means the node's
-- [node] dead_letter_after. Like dead_letter_retain, the rows that set one
-- get their own partial index, so the dead_letter sweep (engine.sql) is a
-- range scan for the default and a scan of the few own ones, never a walk
-- over every failed row.
ALTER TABLE forge_jobs ADD COLUMN dead_letter_after interval;

CREATE INDEX forge_jobs_failed_at_own ON forge_jobs (failed_at)
    WHERE failed_at IS NOT NULL AND dead_lettered_at IS NULL AND dead_letter_after IS NOT NULL;

-- No index for pruning completed rows by completed_at: any index on a column
-- a completion writes (status, completed_at) would make every completion a
-- non-HOT update again (0003). The prune_finished sweep walks the primary
-- key in id order instead (engine.sql), as 0002 planned.
--
-- The table is written and deleted from at the job rate once retention
-- prunes: vacuum it after 2% of its rows changed rather than 20%, so the
-- space of pruned rows is reused by new jobs before the table grows.
ALTER TABLE forge_jobs SET (autovacuum_vacuum_scale_factor = 0.02,
                            autovacuum_vacuum_insert_scale_factor = 0.02);
