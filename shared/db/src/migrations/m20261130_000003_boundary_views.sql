-- The typed boundary between the two services: each reads the other's data only through
-- these views (and pirus_db::views, which types their statuses), never its tables. The
-- catalogue owns pipelines and files; the runner owns runs.

-- What the runner needs of a pipeline: its status, image and run settings.
CREATE VIEW pipeline_for_runs AS
    SELECT id, name, version, status, image_sha256, image_file_id, manifest, form
    FROM pipelines;

-- What the runner needs of a file: inputs (their status and digest), and a run's own outputs
-- and logs.
CREATE VIEW file_for_runs AS
    SELECT id, name, kind, status, sha256, source_run_id
    FROM files;

-- What the catalogue needs of runs: which unfinished runs use a pipeline or a file.
CREATE VIEW unfinished_run_uses AS
    SELECT id, pipeline_id, input_file_ids
    FROM runs
    WHERE status NOT IN ('done', 'error', 'canceled');
