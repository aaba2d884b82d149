-- Placement. A node declares what it has (capacity) and what it is (labels); a run asks for
-- resources (its request: what LXD then enforces on its container) and may name the labels a
-- node must have (its node selector). A claim reserves the run's request against the node's
-- free capacity under the node's row lock, so no interleaving of claimers exceeds it.
ALTER TABLE nodes
    -- 0: not declared (a runner older than placement); such a node is held to --max-runs only.
    ADD COLUMN capacity_cpus   integer NOT NULL DEFAULT 0 CHECK (capacity_cpus >= 0),
    ADD COLUMN capacity_memory bigint  NOT NULL DEFAULT 0 CHECK (capacity_memory >= 0),
    ADD COLUMN capacity_disk   bigint  NOT NULL DEFAULT 0 CHECK (capacity_disk >= 0),
    -- CPUs may be promised this many times over (memory and disk never are).
    ADD COLUMN cpu_overcommit  double precision NOT NULL DEFAULT 1 CHECK (cpu_overcommit >= 1),
    ADD COLUMN labels          jsonb   NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(labels) = 'object');

ALTER TABLE runs
    ADD COLUMN reserved_disk_bytes bigint NOT NULL DEFAULT 0 CHECK (reserved_disk_bytes >= 0),
    -- Labels a node must have (every key with that value) to take the run.
    ADD COLUMN node_selector jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(node_selector) = 'object');
UPDATE runs SET reserved_disk_bytes = coalesce(disk_limit, 0)
WHERE status IN ('initializing', 'running', 'pause', 'finishing');

-- Fair share. A claim orders the principals that have runs waiting by their weighted dominant
-- share (what their running runs reserve over the ONLINE nodes' capacity, the larger of CPUs
-- and memory, divided by their weight) and takes the first run that fits of the first of them
-- that has one; this index answers "the next waiting run of this principal" in queue order.
CREATE INDEX runs_queue_by_owner ON runs (owner, priority DESC, created_at, id)
    WHERE status = 'waiting';

-- The principals (and the nil owner of `--auth none`) with runs waiting: what they hold, their
-- weight and their running and reserved limits.
CREATE VIEW queue_owners AS
    SELECT u.principal_id AS owner, coalesce(p.weight, 1) AS weight, u.queued_runs,
           u.running_runs, u.reserved_cpus, u.reserved_memory_bytes,
           coalesce(p.max_running_runs, 0) AS max_running_runs,
           coalesce(p.max_reserved_cpus, 0) AS max_reserved_cpus,
           coalesce(p.max_reserved_memory_bytes, 0) AS max_reserved_memory_bytes
    FROM principal_usage_totals u LEFT JOIN principals p ON p.id = u.principal_id
    WHERE u.queued_runs > 0;

CREATE OR REPLACE FUNCTION pirus_grant_runner() RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pirus_runner') THEN
        RETURN;
    END IF;
    REVOKE ALL ON ALL TABLES IN SCHEMA public FROM pirus_runner;
    GRANT SELECT, INSERT, UPDATE, DELETE ON runs, run_attempts TO pirus_runner;
    GRANT SELECT, INSERT ON run_events TO pirus_runner;
    GRANT SELECT, INSERT, UPDATE ON nodes TO pirus_runner;
    GRANT INSERT ON audit_events TO pirus_runner;
    GRANT SELECT ON pipeline_for_runs, file_for_runs, principal_names, principal_for_runs,
                    queue_owners, seaql_migrations
        TO pirus_runner;
    GRANT EXECUTE ON FUNCTION pirus_token(uuid) TO pirus_runner;
END
$$;
REVOKE ALL ON FUNCTION pirus_grant_runner() FROM PUBLIC;

SELECT pirus_grant_runner();
