-- Indexes for the hot queries at scale (checked by EXPLAIN on a seeded database in the
-- runner's store tests):
-- a run's outputs and logs, which every run read embeds (by run, kind, in name order), where
-- the planner otherwise picked files_by_kind and filtered every output of every run;
CREATE INDEX files_by_run_kind ON files (source_run_id, kind, name) INCLUDE (id)
    WHERE source_run_id IS NOT NULL;
-- a user's runs with a status (ListRuns of a user, filtered), where runs_owner alone read
-- every run of the owner to find a page of one status.
CREATE INDEX runs_owner_status ON runs (owner, status, id);
-- Files not READY (uploads under way, failed ones): the claim skips runs with such inputs,
-- and reads this small index instead of every file.
CREATE INDEX files_not_ready ON files (id) WHERE status <> 'ready';
