-- Runners connect as a database role of their own, `pirus_runner`, with only what a runner
-- needs: its runs (their attempts and events), the nodes, appending to the audit trail, the
-- read-only views of pipelines and files (migration 3), and reading which migrations are
-- applied. It cannot read or change tokens, pipelines, files, uploads or blobs, read the
-- audit trail, or change the schema. deploy/setup.sh creates the role; the service account
-- that owns the schema grants (this migration when the role exists, else `pirus_grant_runner()`
-- once it does).

-- A token by its accessor id, for verifying a caller's token: the one read of `tokens` the
-- runner may make. It runs as the schema's owner; the runner never sees the table itself.
CREATE FUNCTION pirus_token(accessor uuid)
RETURNS TABLE (
    accessor_id uuid, name text, role text, node text, secret_hash bytea,
    expires_at timestamptz, revoked_at timestamptz, created_at timestamptz
)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT t.accessor_id, t.name, t.role, t.node, t.secret_hash,
           t.expires_at, t.revoked_at, t.created_at
    FROM public.tokens t
    WHERE t.accessor_id = accessor
$$;
REVOKE ALL ON FUNCTION pirus_token(uuid) FROM PUBLIC;

-- What the runner role may do. A later migration that changes what runners need redefines
-- this function and calls it again.
CREATE FUNCTION pirus_grant_runner() RETURNS void
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
    GRANT SELECT ON pipeline_for_runs, file_for_runs, seaql_migrations TO pirus_runner;
    GRANT EXECUTE ON FUNCTION pirus_token(uuid) TO pirus_runner;
END
$$;
REVOKE ALL ON FUNCTION pirus_grant_runner() FROM PUBLIC;

SELECT pirus_grant_runner();
