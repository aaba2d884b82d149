-- GA4GH TES tasks. A task is a run: the same row, queue, claims and events. What only a task
-- has (its executors, inputs, outputs, tags, TES name and description) is kept as submitted,
-- validated and normalised, in runs.tes; a run submitted over gRPC has NULL there and is never
-- a task.
ALTER TABLE runs ADD COLUMN tes jsonb;

-- One task log per attempt: the executors' start and end times, exit codes and the tails of
-- their output, written by the runner that held the attempt before it records the attempt's
-- end.
ALTER TABLE run_attempts ADD COLUMN tes_log jsonb;

-- ListTasks: a caller's tasks in creation order (ids are UUIDv7), and the tag filters.
CREATE INDEX runs_tes_by_owner ON runs (owner, id) WHERE tes IS NOT NULL;
CREATE INDEX runs_tes_tags ON runs USING gin ((tes -> 'tags')) WHERE tes IS NOT NULL;

-- A task's outputs are reported with their sizes.
CREATE OR REPLACE VIEW file_for_runs AS
    SELECT id, name, kind, status, sha256, source_run_id, owner, size
    FROM files;
