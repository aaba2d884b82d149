-- Every run read (GetRun, ListRuns, WatchRun's snapshot, the TES views) answers the run's
-- output and log file ids. They were looked up per run in `files` (a LATERAL probe of
-- files_by_run_kind), which was 70% of a ListRuns page's execution in PostgreSQL on the seeded
-- benchmark database. They are now kept on the run's row, in name order as before, by a
-- trigger on `files`: whatever writes a run's files (the catalogue storing an output or a log,
-- deleting one) updates the run's row in the same transaction, so a read never sees one
-- without the other.
ALTER TABLE runs
    ADD COLUMN output_file_ids uuid[] NOT NULL DEFAULT '{}',
    ADD COLUMN log_file_ids uuid[] NOT NULL DEFAULT '{}';

CREATE FUNCTION pirus_run_file_ids() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    changed uuid[] := '{}';
    run uuid;
BEGIN
    IF TG_OP <> 'INSERT' AND OLD.source_run_id IS NOT NULL AND OLD.kind IN ('output', 'log') THEN
        changed := changed || OLD.source_run_id;
    END IF;
    IF TG_OP <> 'DELETE' AND NEW.source_run_id IS NOT NULL AND NEW.kind IN ('output', 'log') THEN
        changed := changed || NEW.source_run_id;
    END IF;
    FOR run IN SELECT DISTINCT c FROM unnest(changed) AS c LOOP
        -- The run's row is locked first, so the ids below are read (by a statement of their
        -- own, with a snapshot taken after the lock) once every other transaction that changed
        -- this run's files has committed: two outputs stored at once both end up listed.
        PERFORM FROM public.runs WHERE id = run FOR UPDATE;
        UPDATE public.runs r
        SET output_file_ids = f.outputs, log_file_ids = f.logs
        FROM (SELECT coalesce(array_agg(x.id ORDER BY x.name) FILTER (WHERE x.kind = 'output'),
                              '{}') AS outputs,
                     coalesce(array_agg(x.id ORDER BY x.name) FILTER (WHERE x.kind = 'log'),
                              '{}') AS logs
              FROM public.files x
              WHERE x.source_run_id = run AND x.kind IN ('output', 'log')) AS f
        WHERE r.id = run;
    END LOOP;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION pirus_run_file_ids() FROM PUBLIC;

CREATE TRIGGER files_run_file_ids
    AFTER INSERT OR DELETE OR UPDATE OF source_run_id, kind, name ON files
    FOR EACH ROW EXECUTE FUNCTION pirus_run_file_ids();

-- The runs that already have outputs or logs.
UPDATE runs r
SET output_file_ids = f.outputs, log_file_ids = f.logs
FROM (SELECT source_run_id,
             coalesce(array_agg(id ORDER BY name) FILTER (WHERE kind = 'output'), '{}') AS outputs,
             coalesce(array_agg(id ORDER BY name) FILTER (WHERE kind = 'log'), '{}') AS logs
      FROM files
      WHERE source_run_id IS NOT NULL AND kind IN ('output', 'log')
      GROUP BY source_run_id) AS f
WHERE r.id = f.source_run_id;
