-- Statements of the schema migrator (rust/src/migrate.rs, through forge.db.migrate).
-- All of them run in one transaction that first takes the advisory lock, so
-- two supervisors starting at once apply each migration exactly once.

-- name: lock
-- Serialise migrators until commit; the key is a fixed hash of a fixed name.
SELECT pg_advisory_xact_lock(hashtext('forge.migrate'));

-- name: create_table
-- The ledger of applied migrations; created under the lock, so no race.
CREATE TABLE IF NOT EXISTS forge_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: table_exists
-- Whether the ledger exists yet (pending() must not create it).
SELECT to_regclass('forge_migrations') IS NOT NULL;

-- name: applied
-- Versions already applied, oldest first.
SELECT version FROM forge_migrations ORDER BY version;

-- name: record
-- Mark one migration applied, in the same transaction that applied it.
INSERT INTO forge_migrations (version, name, applied_at) VALUES ($1, $2, now());
