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
