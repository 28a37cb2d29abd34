-- Statements on forge_jobs run through the caller's own psycopg connection
-- (dispatch) or by the CLI. Parameters are positional ($1...).

-- name: insert_job
-- One job, inside the caller's transaction. The NOTIFY is delivered only if
-- that transaction commits; its payload is the delay in ms until the job is
-- due, so idle supervisors wake exactly when it can run.
WITH job AS (
    INSERT INTO forge_jobs (job_type, input, priority, max_attempts, scheduled_at,
                            capability, resources, parent_id, dead_letter_retain)
    VALUES ($1, $2::jsonb, $3, $4,
            coalesce($5::timestamptz, now()) + coalesce($6::float8, 0) * interval '1 second',
            $7, $8::jsonb, $9, $10::float8 * interval '1 second')
    RETURNING id, scheduled_at
)
SELECT id, pg_notify('forge_jobs',
                     greatest(0, ceil(extract(epoch FROM scheduled_at - now()) * 1000))::bigint::text)
FROM job;

-- name: insert_jobs
-- Many jobs of one type in one round trip: $2 is a JSON array of inputs.
-- One NOTIFY for the whole batch.
WITH job AS (
    INSERT INTO forge_jobs (job_type, input, priority, max_attempts, scheduled_at,
                            capability, resources, parent_id, dead_letter_retain)
    SELECT $1, e.value, $3, $4,
           coalesce($5::timestamptz, now()) + coalesce($6::float8, 0) * interval '1 second',
           $7, $8::jsonb, $9, $10::float8 * interval '1 second'
    FROM jsonb_array_elements($2::jsonb) WITH ORDINALITY AS e(value, n)
    ORDER BY e.n
    RETURNING id, scheduled_at
)
SELECT coalesce((SELECT array_agg(id ORDER BY id) FROM job), '{}'::bigint[]),
       pg_notify('forge_jobs',
                 greatest(0, ceil(extract(epoch FROM
                     coalesce($5::timestamptz, now()) + coalesce($6::float8, 0) * interval '1 second'
                     - now()) * 1000))::bigint::text);
