-- What a run executes, whoever submitted it: its plan (steps, and for a plan that stages its
-- own files, the inputs it places and the outputs it picks up), written at submission by the
-- edge that took the run (SubmitRun, TES) and read by the runner that executes it. Runs queued
-- before this migration have none: a pipeline run's plan is then its pipeline's command, and
-- a TES task's is made from runs.tes by the runner's TES edge.
ALTER TABLE runs ADD COLUMN plan jsonb;
