-- When each job type was last run by a node whose registration has since
-- been deleted (engine.sql reap_nodes writes it as it deletes them). With
-- forge_nodes (live nodes, and stopped or silent ones until reaped) it says
-- when any node last ran a type, which is what a type must be unrun for,
-- [node] unknown_type_grace, before its due jobs fail as UnknownJobType
-- (engine.sql fail_unknown_types). One row per type ever reaped: small.
CREATE TABLE forge_job_types (
    job_type text        PRIMARY KEY,
    seen_at  timestamptz NOT NULL
);
