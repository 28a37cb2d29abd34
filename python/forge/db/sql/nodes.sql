-- The forge_nodes table: one row per supervisor run (instance id new at every start).

-- name: register_node
INSERT INTO forge_nodes (id, hostname, pid, roles, capabilities, workers, job_types)
VALUES ($1, $2, $3, $4, $5, $6, $7);

-- name: stop_node
-- A clean stop: the row stays for the dashboard until pruned.
UPDATE forge_nodes SET stopped_at = now(), heartbeat_at = now() WHERE id = $1;
