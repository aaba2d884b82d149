-- Seeds a migrated Pirus database for load measurements: one READY pipeline (`seed` 1.0.0),
-- RUNS runs with EVENTS events each, and FILES files, spread over 100 owners, of which
-- OWNER (an accessor id; the load generator's user) owns one in ten. Run it as
--   SELECT pg_temp.pirus_seed(100000, 10, 100000, '<accessor uuid>');
-- after this file (psql -f, or any client that sends it as one batch). Ids are UUIDv7
-- stamped over the last 30 days, in creation order, as the services make them; statuses are
-- mostly ended (90% done, 5% error, 3% canceled, 2% waiting), as in a deployment that has
-- been running for a while. Nothing here bypasses a constraint: the rows are what the
-- services would have written (no node, so no runner claims or re-adopts them; waiting runs
-- stay queued unless a runner is started to take them).

CREATE FUNCTION pg_temp.uuid7(at timestamptz) RETURNS uuid LANGUAGE sql VOLATILE AS $$
  SELECT encode(
    set_bit(set_bit(
      overlay(uuid_send(gen_random_uuid())
              PLACING substring(int8send(floor(extract(epoch FROM at) * 1000)::bigint) FROM 3)
              FROM 1 FOR 6),
      52, 1), 53, 1),
    'hex')::uuid
$$;

CREATE FUNCTION pg_temp.pirus_seed(n_runs int, n_events int, n_files int, seed_owner uuid)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  pipeline uuid := pg_temp.uuid7(now() - interval '31 days');
  owners uuid[];
BEGIN
  SELECT array_agg(gen_random_uuid()) INTO owners FROM generate_series(1, 99);
  owners := owners || seed_owner;
  INSERT INTO pipelines (id, status, name, version, image_sha256, manifest, form, installed_at)
  VALUES (pipeline, 'ready', 'seed', '1.0.0', repeat('0', 64),
          '{"run": "/bin/true", "inputs": "/pipeline/inputs", "outputs": "/pipeline/outputs",
            "logs": "/pipeline/logs", "network": false}',
          '{"type": "object"}', now());

  CREATE TEMP TABLE seed_runs ON COMMIT DROP AS
  SELECT pg_temp.uuid7(at) AS id, at, i,
         CASE WHEN i % 100 < 90 THEN 'done' WHEN i % 100 < 95 THEN 'error'
              WHEN i % 100 < 98 THEN 'canceled' ELSE 'waiting' END AS status,
         CASE WHEN i % 10 = 0 THEN seed_owner ELSE owners[1 + (i % 99)] END AS owner
  FROM (SELECT i, now() - interval '30 days' + (i * interval '30 days' / n_runs) AS at
        FROM generate_series(1, n_runs) AS i) AS t
  ORDER BY at;

  -- Half the files are users' data, half the outputs and logs of ended runs (a log and an
  -- output each, for the first runs), as a run read finds them. They go in before the runs,
  -- as a runner registers a run's outputs before it records the end (which seals their ids on
  -- the run's row).
  INSERT INTO files (id, name, kind, status, size, created_at, ready_at, updated_at, owner)
  SELECT pg_temp.uuid7(at), 'seed-' || i || '.fastq.gz', 'data', 'ready', 1000 + i, at, at, at,
         CASE WHEN i % 10 = 0 THEN seed_owner ELSE owners[1 + (i % 99)] END
  FROM (SELECT i, now() - interval '30 days' + (i * interval '30 days' / n_files) AS at
        FROM generate_series(1, n_files - n_files / 2) AS i) AS t
  ORDER BY at;
  INSERT INTO files (id, name, kind, status, size, source_run_id, created_at, ready_at,
                     updated_at, owner)
  SELECT pg_temp.uuid7(r.at + interval '1 minute'), k.name, k.kind, 'ready', 100, r.id,
         r.at + interval '1 minute', r.at + interval '1 minute', r.at + interval '1 minute',
         r.owner
  FROM (SELECT * FROM seed_runs WHERE status <> 'waiting' ORDER BY i LIMIT n_files / 4) AS r,
       (VALUES ('out.log', 'log'), ('result.txt', 'output')) AS k (name, kind);

  INSERT INTO runs (id, pipeline_id, pipeline_name, pipeline_version, image_sha256, name,
                    status, config, priority, attempt, exit_code, error_message, last_seq,
                    created_at, started_at, ended_at, updated_at, owner)
  SELECT id, pipeline, 'seed', '1.0.0', repeat('0', 64), 'seed run ' || i,
         status, '{}', 0,
         CASE WHEN status = 'waiting' THEN 0 ELSE 1 END,
         CASE status WHEN 'done' THEN 0 WHEN 'error' THEN 1 END,
         CASE WHEN status = 'error' THEN 'command exited with status 1' ELSE '' END,
         CASE WHEN status = 'waiting' THEN 1 ELSE n_events END,
         at,
         CASE WHEN status = 'waiting' THEN NULL ELSE at + interval '1 second' END,
         CASE WHEN status IN ('waiting') THEN NULL ELSE at + interval '1 minute' END,
         at, seed_runs.owner
  FROM seed_runs;

  -- WAITING, INITIALIZING, RUNNING with progress, FINISHING, then the end.
  INSERT INTO run_events (run_id, seq, attempt, status, progress_value, progress_label, message, at)
  SELECT r.id, s,
         CASE WHEN s = 1 THEN 0 ELSE 1 END,
         CASE WHEN s = 1 THEN 'waiting' WHEN s = 2 THEN 'initializing'
              WHEN s = n_events THEN r.status WHEN s = n_events - 1 THEN 'finishing'
              ELSE 'running' END,
         CASE WHEN s BETWEEN 3 AND n_events - 2 THEN (s - 2)::float / greatest(n_events - 4, 1) ELSE 0 END,
         CASE WHEN s BETWEEN 3 AND n_events - 2 THEN (s - 2) || ' / ' || greatest(n_events - 4, 1) ELSE '' END,
         CASE WHEN s = 1 THEN 'queued' ELSE 'seeded' END,
         r.at + s * interval '1 second'
  FROM seed_runs r, generate_series(1, n_events) AS s
  WHERE r.status <> 'waiting' OR s = 1;

  INSERT INTO run_attempts (run_id, attempt, node, status, started_at, ended_at)
  SELECT id, 1, 'seed-node', status, at + interval '1 second', at + interval '1 minute'
  FROM seed_runs WHERE status <> 'waiting';

  ANALYZE pipelines; ANALYZE runs; ANALYZE run_events; ANALYZE run_attempts; ANALYZE files;
  RETURN pipeline::text;
END
$$;
