-- Job log lines name the node that ran their attempt (issue 14: a line
-- carries job id, job type, attempt and node): the supervisor run's id, the
-- lease owner that wrote the line (engine.sql log_lines). Lines stored
-- before 0010 have none. The job type is the job's row's.
ALTER TABLE forge_job_logs ADD COLUMN node uuid;
