-- The whole schema the job engine needs, designed once for the mission:
-- results, progress, parent ids, idempotency keys, capabilities, resources,
-- crash counts, dead letters, cron ticks, node heartbeats and job logs.

CREATE TABLE forge_jobs (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_type         text        NOT NULL,
    -- pending > claimed > running > completed | retry > pending | failed > dead_letter
    status           text        NOT NULL DEFAULT 'pending',
    -- 0 critical, 1 high, 2 normal, 3 low: ascending order is claim order.
    priority         smallint    NOT NULL DEFAULT 2,
    input            jsonb       NOT NULL,
    result           jsonb,
    -- attempts counts claims; a claim handed back unstarted does not count.
    attempts         integer     NOT NULL DEFAULT 0,
    max_attempts     integer     NOT NULL DEFAULT 3,
    -- crash-class endings (signal, OOM, lost lease), capped separately.
    crashes          integer     NOT NULL DEFAULT 0,
    scheduled_at     timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    claimed_at       timestamptz,
    started_at       timestamptz,
    completed_at     timestamptz,
    failed_at        timestamptz,
    dead_lettered_at timestamptz,
    heartbeat_at     timestamptz,
    -- the lease owner: the instance id of the supervisor run holding it.
    claimed_by       uuid,
    -- {"type", "message", "traceback", "attempt"} of the latest failure.
    last_error       jsonb,
    progress         smallint    NOT NULL DEFAULT 0,
    progress_message text,
    parent_id        bigint,
    idempotency_key  text,
    capability       text        NOT NULL DEFAULT 'general',
    -- requested resources, e.g. {"cpu": 4, "memory": 8589934592, "gpu": 1}
    resources        jsonb,
    -- how long a failed job stays in the dead letter queue.
    dead_letter_retain interval,
    cron_name        text,
    cron_tick        timestamptz,
    CONSTRAINT forge_jobs_status_valid CHECK (status IN (
        'pending', 'claimed', 'running', 'completed', 'retry',
        'failed', 'dead_letter', 'discarded', 'cancelled')),
    CONSTRAINT forge_jobs_priority_valid CHECK (priority BETWEEN 0 AND 3),
    CONSTRAINT forge_jobs_progress_valid CHECK (progress BETWEEN 0 AND 100),
    CONSTRAINT forge_jobs_attempts_valid CHECK (attempts >= 0 AND max_attempts >= 1)
);

-- The claim index covers only claimable rows, so it stays small however many
-- completed rows accumulate; its order is the claim order.
CREATE INDEX forge_jobs_claimable ON forge_jobs (priority, scheduled_at, id)
    WHERE status IN ('pending', 'retry');

-- Leases held: rescue sweeps and the per-node heartbeat look here.
CREATE INDEX forge_jobs_leased ON forge_jobs (claimed_by)
    WHERE status IN ('claimed', 'running');

-- Dead letter queue, newest failure first (the spec's monitoring query).
CREATE INDEX forge_jobs_dead_letter ON forge_jobs (job_type, failed_at DESC)
    WHERE status IN ('failed', 'dead_letter');

CREATE INDEX forge_jobs_parent ON forge_jobs (parent_id) WHERE parent_id IS NOT NULL;

-- The maintenance sweeps (engine.sql: dead_letter, prune_dead_letters) run on
-- every node each maintenance interval; these partial indexes hold only the
-- rows each sweep looks for, in the order it takes them, so a sweep is an
-- index range scan however many dead letters are retained.
CREATE INDEX forge_jobs_failed_at ON forge_jobs (failed_at) WHERE status = 'failed';
CREATE INDEX forge_jobs_dead_lettered ON forge_jobs (dead_lettered_at)
    WHERE status = 'dead_letter' AND dead_letter_retain IS NULL;
CREATE INDEX forge_jobs_dead_lettered_retain ON forge_jobs (dead_lettered_at)
    WHERE status = 'dead_letter' AND dead_letter_retain IS NOT NULL;

-- Finished rows by age, for pruning in bounded batches.
CREATE INDEX forge_jobs_finished ON forge_jobs (completed_at) WHERE status = 'completed';

-- Idempotency keys are unique per job type while the job is kept.
CREATE UNIQUE INDEX forge_jobs_idempotency ON forge_jobs (job_type, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- One job per cron tick, whichever node inserts it first.
CREATE UNIQUE INDEX forge_jobs_cron_tick ON forge_jobs (cron_name, cron_tick)
    WHERE cron_name IS NOT NULL;

CREATE TABLE forge_nodes (
    id           uuid        PRIMARY KEY,
    hostname     text        NOT NULL,
    pid          integer     NOT NULL,
    roles        text[]      NOT NULL,
    capabilities text[]      NOT NULL,
    workers      integer     NOT NULL,
    job_types    text[]      NOT NULL DEFAULT '{}',
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    stopped_at   timestamptz
);

CREATE TABLE forge_job_logs (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id   bigint      NOT NULL,
    attempt  integer     NOT NULL,
    level    text        NOT NULL,
    message  text        NOT NULL,
    fields   jsonb,
    at       timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX forge_job_logs_job ON forge_job_logs (job_id, id);
