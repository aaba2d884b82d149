-- Every run read (GetRun, ListRuns, WatchRun's snapshot, the TES views) answers the run's
-- output and log file ids, in name order. Looking them up in `files` for every run read (a
-- probe of files_by_run_kind per run) was half of a ListRuns page's cost in PostgreSQL on the
-- seeded benchmark database (pgbench: 6,100 pages/s with the probe, 11,350 without).
--
-- A run gains outputs and logs only while it runs: its runner registers them before it
-- records the end. So the ids are sealed on the run's row once, when it ends, and read from
-- there; a run that has not ended, or whose sealed list went stale, has NULL and is looked up
-- as before. Nothing here is maintained per file: a trigger that rewrote a run's list for
-- every output it gained was quadratic in its outputs, and a hostile pipeline may leave
-- 100,000 of them. Sealing is one aggregate per run; a change to an ended run's outputs or
-- logs (a DeleteFile, a late registration) only clears its seal.
ALTER TABLE runs
    ADD COLUMN output_file_ids uuid[],
    ADD COLUMN log_file_ids uuid[];

-- The ids of run $1's files of kind $2 ('output' or 'log'), in name order: what sealing
-- stores and what a read of an unsealed run computes (the one definition of the list). The
-- body names its parameters by position so that the runner's store test can EXPLAIN it as it
-- stands (it reads files_by_run_kind).
CREATE FUNCTION pirus_run_files(uuid, text) RETURNS uuid[]
LANGUAGE sql STABLE
AS $$
    SELECT coalesce(array_agg(f.id ORDER BY f.name), '{}')
    FROM public.file_for_runs f
    WHERE f.source_run_id = $1 AND f.kind = $2
$$;

-- Seals a run's lists when it ends (and clears them should it ever leave an end). The trigger
-- fires after the row is locked, and the lists are read by a statement of their own, with a
-- snapshot taken after the lock: every registration that held the row (below) has committed.
CREATE FUNCTION pirus_seal_run_files() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF NEW.status NOT IN ('done', 'error', 'canceled') THEN
        NEW.output_file_ids := NULL;
        NEW.log_file_ids := NULL;
    ELSIF TG_OP = 'INSERT' OR OLD.status NOT IN ('done', 'error', 'canceled') THEN
        SELECT public.pirus_run_files(NEW.id, 'output'), public.pirus_run_files(NEW.id, 'log')
        INTO NEW.output_file_ids, NEW.log_file_ids;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER runs_seal_files
    BEFORE INSERT OR UPDATE OF status ON runs
    FOR EACH ROW EXECUTE FUNCTION pirus_seal_run_files();

-- A run's output or log added, removed or renamed clears its seal. The run's row is share-
-- locked first, which waits for a sealing under way to commit (so its lists are then seen and
-- cleared), and makes a sealing that starts meanwhile wait for this transaction (so it reads
-- this file). O(1) per file.
CREATE FUNCTION pirus_unseal_run_files() RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    run uuid;
BEGIN
    FOR run IN
        SELECT DISTINCT c FROM unnest(ARRAY[
            CASE WHEN TG_OP <> 'INSERT' AND OLD.kind IN ('output', 'log') THEN OLD.source_run_id END,
            CASE WHEN TG_OP <> 'DELETE' AND NEW.kind IN ('output', 'log') THEN NEW.source_run_id END
        ]) AS c WHERE c IS NOT NULL
    LOOP
        PERFORM FROM public.runs WHERE id = run FOR SHARE;
        UPDATE public.runs SET output_file_ids = NULL, log_file_ids = NULL
        WHERE id = run AND output_file_ids IS NOT NULL;
    END LOOP;
    RETURN NULL;
END
$$;

CREATE TRIGGER files_unseal_run_files
    AFTER INSERT OR DELETE OR UPDATE OF source_run_id, kind, name ON files
    FOR EACH ROW EXECUTE FUNCTION pirus_unseal_run_files();

-- The runs that already ended.
UPDATE runs
SET output_file_ids = pirus_run_files(id, 'output'), log_file_ids = pirus_run_files(id, 'log')
WHERE status IN ('done', 'error', 'canceled');
