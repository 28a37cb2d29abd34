-- Statements on forge_jobs run through the caller's own psycopg connection
-- (dispatch) or by the CLI. Parameters are positional ($1...).

-- name: insert_job
-- One job, inside the caller's transaction. The NOTIFY is delivered only if
-- that transaction commits. It announces the job to the nodes (the Rust
-- core's announce.rs: how many, type, capability, when due, this
-- transaction's id), so only as many wake to claim as the jobs need; a
-- type or capability too long for a payload sends the bare delay in ms
-- instead, which wakes every node.
WITH job AS (
    INSERT INTO forge_jobs (job_type, input, priority, max_attempts, scheduled_at,
                            capability, resources, parent_id, dead_letter_retain, dead_letter_after)
    VALUES ($1, $2::jsonb, $3, $4,
            coalesce($5::timestamptz, now()) + coalesce($6::float8, 0) * interval '1 second',
            $7, $8::jsonb, $9, $10::float8 * interval '1 second', $11::float8 * interval '1 second')
    RETURNING id, scheduled_at
)
SELECT id, pg_notify('forge_jobs', CASE WHEN octet_length(announcement) < 7900 THEN announcement
                                        ELSE delay_ms::text END)
FROM job,
     LATERAL (SELECT greatest(0, ceil(extract(epoch FROM scheduled_at - now()) * 1000))::bigint) AS d(delay_ms),
     LATERAL (SELECT json_build_object('k', 'a', 'd', delay_ms, 'n', 1,
                                       'at', floor(extract(epoch FROM scheduled_at) * 1000)::bigint,
                                       'x', pg_current_xact_id()::text, 't', $1::text, 'c', $7::text)::text)
         AS a(announcement);

-- name: insert_jobs
-- Many jobs of one type in one round trip: $2 is a JSON array of inputs.
-- One NOTIFY for the whole batch, announcing them as insert_job does.
WITH job AS (
    INSERT INTO forge_jobs (job_type, input, priority, max_attempts, scheduled_at,
                            capability, resources, parent_id, dead_letter_retain, dead_letter_after)
    SELECT $1, e.value, $3, $4,
           coalesce($5::timestamptz, now()) + coalesce($6::float8, 0) * interval '1 second',
           $7, $8::jsonb, $9, $10::float8 * interval '1 second', $11::float8 * interval '1 second'
    FROM jsonb_array_elements($2::jsonb) WITH ORDINALITY AS e(value, n)
    ORDER BY e.n
    RETURNING id, scheduled_at
), due AS (
    SELECT at, greatest(0, ceil(extract(epoch FROM at - now()) * 1000))::bigint AS delay_ms
    FROM (SELECT coalesce($5::timestamptz, now()) + coalesce($6::float8, 0) * interval '1 second') AS t(at)
), told AS (
    SELECT delay_ms,
           json_build_object('k', 'a', 'd', delay_ms, 'n', (SELECT count(*) FROM job),
                             'at', floor(extract(epoch FROM at) * 1000)::bigint,
                             'x', pg_current_xact_id()::text, 't', $1::text, 'c', $7::text)::text AS announcement
    FROM due
)
SELECT coalesce((SELECT array_agg(id ORDER BY id) FROM job), '{}'::bigint[]),
       pg_notify('forge_jobs', CASE WHEN octet_length(announcement) < 7900 THEN announcement
                                    ELSE delay_ms::text END)
FROM told;
