BEGIN;
SELECT draining FROM nodes WHERE name = 'n1' FOR UPDATE;
SELECT count(*), coalesce(sum(reserved_cpus),0) FROM runs WHERE node = 'n1' AND status IN ('initializing','running','pause','finishing');
SELECT q.owner FROM queue_owners q,
     (SELECT greatest(sum(capacity_cpus * cpu_overcommit), 1)::float8 AS cpus, greatest(sum(capacity_memory), 1)::float8 AS memory
      FROM nodes WHERE NOT draining AND heartbeat_at + make_interval(secs => lease_seconds) >= now()) t
WHERE q.max_running_runs = 0 OR q.running_runs < q.max_running_runs
ORDER BY greatest(q.reserved_cpus / t.cpus, q.reserved_memory_bytes / t.memory) / q.weight, q.queued_runs, q.owner
LIMIT 16;
SAVEPOINT a;
WITH next AS (
  SELECT r.id FROM runs r
  WHERE r.status = 'waiting' AND r.owner = '00000000-0000-0000-0000-000000000001'
    AND (r.cpu_limit IS NULL OR r.cpu_limit <= 64) AND (r.memory_limit IS NULL OR r.memory_limit <= 274877906944)
    AND r.node_selector <@ '{}'::jsonb AND coalesce(r.cpu_limit, 1) <= 64 AND coalesce(r.memory_limit, 1073741824) <= 274877906944
    AND (r.input_file_ids = '{}' OR NOT EXISTS (SELECT 1 FROM file_for_runs f WHERE f.id = ANY (r.input_file_ids) AND f.status <> 'ready'))
    AND NOT EXISTS (SELECT FROM principal_for_runs p WHERE p.id = r.owner
        AND ((p.max_running_runs > 0 AND p.running_runs >= p.max_running_runs)
          OR (p.max_reserved_cpus > 0 AND p.reserved_cpus + coalesce(r.cpu_limit, 1) > p.max_reserved_cpus)))
  ORDER BY r.owner, r.priority DESC, r.created_at, r.id FOR UPDATE SKIP LOCKED LIMIT 1)
UPDATE runs SET status = 'initializing', node = 'n1', attempt = runs.attempt + 1,
       reserved_cpus = coalesce(runs.cpu_limit, 1), reserved_memory_bytes = coalesce(runs.memory_limit, 1073741824)
FROM next WHERE runs.id = next.id RETURNING runs.id;
RELEASE SAVEPOINT a;
ROLLBACK;
