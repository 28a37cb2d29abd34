-- forge_jobs_finished (completed_at of completed rows) was made for pruning
-- completed jobs, which nothing does: the spec keeps finished jobs and prunes
-- only dead letters. Every completion paid an entry in it (one of the four
-- index entries a job's claim and completion write), so it goes. A future
-- pruning of completed rows can walk the primary key in id order instead.
DROP INDEX forge_jobs_finished;
