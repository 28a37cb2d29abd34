-- Statements on forge_jobs run through the caller's own psycopg connection
-- (dispatch) or by the CLI. Parameters are positional ($1...).

-- name: insert_job
-- One job, inside the caller's transaction. The NOTIFY is delivered only if
-- that transaction commits. It announces the job to the nodes (the Rust
-- core's announce.rs: how many, type, capability, when due, this
-- transaction's id), so only as many wake to claim as the jobs need; a
-- type or capability too long for a payload sends the bare delay in ms
-- instead, which wakes every node.
-- $12 is the idempotency key (NULL: none). A job of this type holding the
-- key (forge_jobs_idempotency, 0001/0009) makes the insert do nothing, and
-- the id returned is that job's, announced to nobody. ON CONFLICT waits for
-- a conflicting row of a transaction still open; DO NOTHING then neither
-- locks nor writes the existing row (DO UPDATE would: a new version of a
-- running job's row, locked until this caller commits, holding back its
-- reports and lease renewals meanwhile). But a row committed after this
-- statement's snapshot is not seen by the lookup here, so the id comes back
-- NULL: dispatch.py runs the statement again, whose new snapshot (READ
-- COMMITTED) sees it. (Under REPEATABLE READ, ON CONFLICT itself raises a
-- serialization failure for a conflicting row its snapshot cannot see.)
WITH job AS (
    INSERT INTO forge_jobs (job_type, input, priority, max_attempts, scheduled_at,
                            capability, resources, parent_id, dead_letter_retain, dead_letter_after,
                            idempotency_key)
    VALUES ($1, $2::jsonb, $3, $4,
            coalesce($5::timestamptz, now()) + coalesce($6::float8, 0) * interval '1 second',
            $7, $8::jsonb, $9, $10::float8 * interval '1 second', $11::float8 * interval '1 second',
            $12::text)
    ON CONFLICT (job_type, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id, scheduled_at
), told AS (
    SELECT id, pg_notify('forge_jobs', CASE WHEN octet_length(announcement) < 7900 THEN announcement
                                            ELSE delay_ms::text END)
    FROM job,
         LATERAL (SELECT greatest(0, ceil(extract(epoch FROM scheduled_at - now()) * 1000))::bigint) AS d(delay_ms),
         LATERAL (SELECT json_build_object('k', 'a', 'd', delay_ms, 'n', 1,
                                           'at', floor(extract(epoch FROM scheduled_at) * 1000)::bigint,
                                           'x', pg_current_xact_id()::text, 't', $1::text, 'c', $7::text)::text)
             AS a(announcement)
)
SELECT coalesce((SELECT id FROM told),
                (SELECT id FROM forge_jobs WHERE job_type = $1 AND idempotency_key = $12::text));

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

-- name: insert_keyed_jobs
-- insert_jobs for jobs that each have an idempotency key ($12, a JSON array
-- of strings in the order of the inputs $2: parsed as jsonb, it costs a
-- sixth of a text[] parameter's time on 50,000 keys): one round trip, ids in
-- input order. An
-- input whose key an earlier one of the batch has conflicts with the row
-- that one inserted, so it is not inserted (DO NOTHING skips it, where DO
-- UPDATE would refuse the statement: "cannot affect row a second time"),
-- and every input gets the id of its key's job: the one inserted, or the
-- one already there (insert_job says how a conflict is
-- handled: a NULL id is a conflicting row this snapshot cannot see, and
-- dispatch.py sends those inputs again). Only the inserted jobs are
-- announced. The lookup of the keys not inserted is one probe of
-- forge_jobs_idempotency each, skipped for the inserted ones: the LIMIT
-- keeps the planner from flattening it into a join with every keyed job of
-- the type (a merge join over a scan of them all, seen on 50,000 rows).
-- The rows are inserted in key order, so that batches sharing keys never
-- deadlock: a conflicting insert waits for the transaction holding the key,
-- and two batches taking their keys in different orders would each wait
-- for the other (seen with 3,000 keys in opposite orders); in one order,
-- whoever waits holds no key the other still needs. Their ids are still
-- drawn in input order (`numbered`: what the identity's default would do,
-- an id per input, inserted or not), so the claim, which takes equal jobs
-- by id, runs them in the order given.
WITH given AS MATERIALIZED (
    SELECT e.n, e.value, k.key
    FROM jsonb_array_elements($2::jsonb) WITH ORDINALITY AS e(value, n)
    JOIN jsonb_array_elements_text($12::jsonb) WITH ORDINALITY AS k(key, n) ON k.n = e.n
), numbered AS MATERIALIZED (
    SELECT nextval((SELECT pg_get_serial_sequence('forge_jobs', 'id'))::regclass) AS id, value, key, n
    FROM (SELECT * FROM given ORDER BY n) AS g
), job AS (
    INSERT INTO forge_jobs (id, job_type, input, priority, max_attempts, scheduled_at,
                            capability, resources, parent_id, dead_letter_retain, dead_letter_after,
                            idempotency_key)
    OVERRIDING SYSTEM VALUE
    SELECT id, $1, value, $3, $4,
           coalesce($5::timestamptz, now()) + coalesce($6::float8, 0) * interval '1 second',
           $7, $8::jsonb, $9, $10::float8 * interval '1 second', $11::float8 * interval '1 second', key
    FROM numbered
    ORDER BY key, n
    ON CONFLICT (job_type, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id, idempotency_key AS key
), due AS (
    SELECT at, greatest(0, ceil(extract(epoch FROM at - now()) * 1000))::bigint AS delay_ms
    FROM (SELECT coalesce($5::timestamptz, now()) + coalesce($6::float8, 0) * interval '1 second') AS t(at)
), told AS (
    SELECT count(pg_notify('forge_jobs', CASE WHEN octet_length(announcement) < 7900 THEN announcement
                                              ELSE delay_ms::text END))
    FROM (SELECT delay_ms,
                 json_build_object('k', 'a', 'd', delay_ms, 'n', (SELECT count(*) FROM job),
                                   'at', floor(extract(epoch FROM at) * 1000)::bigint,
                                   'x', pg_current_xact_id()::text, 't', $1::text, 'c', $7::text)::text
          FROM due WHERE EXISTS (SELECT 1 FROM job)) AS a(delay_ms, announcement)
)
SELECT array_agg(coalesce(j.id, held.id) ORDER BY g.n), (SELECT * FROM told)
FROM given AS g
LEFT JOIN job AS j ON j.key = g.key
LEFT JOIN LATERAL (SELECT f.id FROM forge_jobs AS f
                   WHERE j.id IS NULL AND f.job_type = $1 AND f.idempotency_key = g.key
                   LIMIT 1) AS held ON true;
