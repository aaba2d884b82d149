-- Tenancy. Things belong to principals (a person or a service account), not to tokens: a
-- token is one credential of one principal, and rotating it (a new token for the principal,
-- the old one revoked) keeps everything the principal owns. Every existing token gets a
-- principal of its own whose id is the token's accessor id, so the owner columns (which held
-- accessor ids) now name principals without a row being rewritten.
CREATE TABLE principals (
    id                        uuid        PRIMARY KEY,
    name                      text        NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9._-]{1,100}$'),
    kind                      text        NOT NULL CHECK (kind IN ('person', 'service')),
    role                      text        NOT NULL CHECK (role IN ('admin', 'operator', 'user', 'runner')),
    -- Fair-share weight (placement): a principal of weight 2 gets twice the share of one of 1.
    weight                    integer     NOT NULL DEFAULT 1 CHECK (weight >= 1),
    -- Quotas; 0 is unlimited.
    max_stored_bytes          bigint      NOT NULL DEFAULT 0 CHECK (max_stored_bytes >= 0),
    max_files                 bigint      NOT NULL DEFAULT 0 CHECK (max_files >= 0),
    max_queued_runs           bigint      NOT NULL DEFAULT 0 CHECK (max_queued_runs >= 0),
    max_running_runs          bigint      NOT NULL DEFAULT 0 CHECK (max_running_runs >= 0),
    max_reserved_cpus         bigint      NOT NULL DEFAULT 0 CHECK (max_reserved_cpus >= 0),
    max_reserved_memory_bytes bigint      NOT NULL DEFAULT 0 CHECK (max_reserved_memory_bytes >= 0),
    created_at                timestamptz NOT NULL DEFAULT now(),
    -- A disabled principal's tokens are all refused (as a revoked token is).
    disabled_at               timestamptz
);

-- A valid, unused principal name made from `wanted` (a token's name): lowercased, every run
-- of other characters made one '-', cut to 90 characters, then '-2', '-3'... until free.
-- Callers serialise on the advisory lock below so that two never pick the same name.
CREATE FUNCTION pirus_principal_name(wanted text) RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    base text := left(btrim(regexp_replace(lower(wanted), '[^a-z0-9._-]+', '-', 'g'), '-'), 90);
    candidate text;
    n integer := 1;
BEGIN
    IF base = '' THEN
        base := 'principal';
    END IF;
    candidate := base;
    WHILE EXISTS (SELECT FROM public.principals WHERE name = candidate) LOOP
        n := n + 1;
        candidate := base || '-' || n;
    END LOOP;
    RETURN candidate;
END
$$;

DO $$
DECLARE
    t record;
BEGIN
    FOR t IN SELECT accessor_id, name, role, created_at FROM tokens ORDER BY created_at, accessor_id
    LOOP
        INSERT INTO principals (id, name, kind, role, created_at)
        VALUES (t.accessor_id, pirus_principal_name(t.name),
                CASE WHEN t.role = 'runner' THEN 'service' ELSE 'person' END, t.role, t.created_at);
    END LOOP;
END
$$;

ALTER TABLE tokens ADD COLUMN principal_id uuid REFERENCES principals (id);
UPDATE tokens SET principal_id = accessor_id;
ALTER TABLE tokens ALTER COLUMN principal_id SET NOT NULL;
CREATE INDEX tokens_by_principal ON tokens (principal_id);

-- Audit events name the principal as well as the token.
ALTER TABLE audit_events ADD COLUMN principal_id uuid;
UPDATE audit_events e SET principal_id = t.principal_id
FROM tokens t WHERE t.accessor_id = e.accessor_id;

CREATE INDEX files_by_owner_kind ON files (owner, kind, id);
CREATE INDEX uploads_by_owner ON uploads (owner) WHERE file_id IS NULL;

-- What a claimed run holds of its node: the CPUs and memory its container was given (its
-- request, or the node's default for what it did not ask). Set when the run is claimed.
ALTER TABLE runs
    ADD COLUMN reserved_cpus integer NOT NULL DEFAULT 0 CHECK (reserved_cpus >= 0),
    ADD COLUMN reserved_memory_bytes bigint NOT NULL DEFAULT 0 CHECK (reserved_memory_bytes >= 0);
UPDATE runs SET reserved_cpus = coalesce(cpu_limit, 1), reserved_memory_bytes = coalesce(memory_limit, 0)
WHERE status IN ('initializing', 'running', 'pause', 'finishing');

-- Usage, as counters kept by triggers in the same transaction as what they count. A
-- principal's counters are spread over 64 rows (shards): a transaction adds to the one its
-- session (backend) picks, so that one principal's concurrent writes, which come over
-- different connections, do not queue on one row.
-- The usage is the sum of the shards. A change that would take a principal with a limit past
-- it locks the principal's row first, so that two such changes are checked one after the
-- other against everything committed: racing requests never together pass a limit.
CREATE TABLE principal_usage (
    principal_id          uuid     NOT NULL,
    shard                 smallint NOT NULL CHECK (shard BETWEEN 0 AND 63),
    stored_bytes          bigint   NOT NULL DEFAULT 0,
    files                 bigint   NOT NULL DEFAULT 0,
    queued_runs           bigint   NOT NULL DEFAULT 0,
    running_runs          bigint   NOT NULL DEFAULT 0,
    reserved_cpus         bigint   NOT NULL DEFAULT 0,
    reserved_memory_bytes bigint   NOT NULL DEFAULT 0,
    PRIMARY KEY (principal_id, shard)
);

CREATE VIEW principal_usage_totals AS
    SELECT principal_id,
           sum(stored_bytes)::bigint AS stored_bytes, sum(files)::bigint AS files,
           sum(queued_runs)::bigint AS queued_runs, sum(running_runs)::bigint AS running_runs,
           sum(reserved_cpus)::bigint AS reserved_cpus,
           sum(reserved_memory_bytes)::bigint AS reserved_memory_bytes
    FROM principal_usage GROUP BY principal_id;

-- Refuses a change that takes `used` past `quota` (0: unlimited) by `asked`, naming the quota,
-- what is used and the limit. SQLSTATE PQ001 is what the services answer RESOURCE_EXHAUSTED.
CREATE FUNCTION pirus_quota_check(who text, quota text, used bigint, asked bigint, max bigint)
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    IF asked > 0 AND max > 0 AND used + asked > max THEN
        RAISE EXCEPTION USING ERRCODE = 'PQ001',
            MESSAGE = format('quota %s of principal %s: %s used, %s more asked, the limit is %s',
                             quota, who, used, asked, max);
    END IF;
END
$$;

-- Adds to `owner`'s counters; checks each growing counter against its limit unless `checked`
-- is false (a run's logs, a retried run going back to the queue: what must never fail).
-- `queued_checked` is apart: only a new run is held to max_queued_runs.
CREATE FUNCTION pirus_charge(owner uuid, bytes bigint, nfiles bigint, queued bigint,
                             running bigint, cpus bigint, memory bigint,
                             checked boolean, queued_checked boolean)
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    p public.principals;
    u record;
BEGIN
    IF owner IS NULL OR (bytes = 0 AND nfiles = 0 AND queued = 0 AND running = 0
                         AND cpus = 0 AND memory = 0) THEN
        RETURN;
    END IF;
    IF (checked AND (bytes > 0 OR nfiles > 0 OR running > 0 OR cpus > 0 OR memory > 0))
       OR (queued_checked AND queued > 0) THEN
        SELECT * INTO p FROM public.principals WHERE id = owner;
        IF FOUND AND ((checked AND ((bytes > 0 AND p.max_stored_bytes > 0)
                                    OR (nfiles > 0 AND p.max_files > 0)
                                    OR (running > 0 AND p.max_running_runs > 0)
                                    OR (cpus > 0 AND p.max_reserved_cpus > 0)
                                    OR (memory > 0 AND p.max_reserved_memory_bytes > 0)))
                      OR (queued_checked AND queued > 0 AND p.max_queued_runs > 0)) THEN
            -- One checked change at a time per principal, against everything committed.
            PERFORM FROM public.principals WHERE id = owner FOR NO KEY UPDATE;
            SELECT coalesce(sum(x.stored_bytes), 0)::bigint AS stored_bytes,
                   coalesce(sum(x.files), 0)::bigint AS files,
                   coalesce(sum(x.queued_runs), 0)::bigint AS queued_runs,
                   coalesce(sum(x.running_runs), 0)::bigint AS running_runs,
                   coalesce(sum(x.reserved_cpus), 0)::bigint AS reserved_cpus,
                   coalesce(sum(x.reserved_memory_bytes), 0)::bigint AS reserved_memory_bytes
            INTO u FROM public.principal_usage x WHERE x.principal_id = owner;
            IF checked THEN
                PERFORM public.pirus_quota_check(p.name, 'max_stored_bytes', u.stored_bytes, bytes, p.max_stored_bytes);
                PERFORM public.pirus_quota_check(p.name, 'max_files', u.files, nfiles, p.max_files);
                PERFORM public.pirus_quota_check(p.name, 'max_running_runs', u.running_runs, running, p.max_running_runs);
                PERFORM public.pirus_quota_check(p.name, 'max_reserved_cpus', u.reserved_cpus, cpus, p.max_reserved_cpus);
                PERFORM public.pirus_quota_check(p.name, 'max_reserved_memory_bytes', u.reserved_memory_bytes, memory, p.max_reserved_memory_bytes);
            END IF;
            IF queued_checked THEN
                PERFORM public.pirus_quota_check(p.name, 'max_queued_runs', u.queued_runs, queued, p.max_queued_runs);
            END IF;
        END IF;
    END IF;
    INSERT INTO public.principal_usage AS x (principal_id, shard, stored_bytes, files, queued_runs,
                                             running_runs, reserved_cpus, reserved_memory_bytes)
    VALUES (owner, (pg_backend_pid() % 64)::smallint, bytes, nfiles, queued, running, cpus, memory)
    ON CONFLICT (principal_id, shard) DO UPDATE SET
        stored_bytes = x.stored_bytes + excluded.stored_bytes,
        files = x.files + excluded.files,
        queued_runs = x.queued_runs + excluded.queued_runs,
        running_runs = x.running_runs + excluded.running_runs,
        reserved_cpus = x.reserved_cpus + excluded.reserved_cpus,
        reserved_memory_bytes = x.reserved_memory_bytes + excluded.reserved_memory_bytes;
END
$$;
REVOKE ALL ON FUNCTION pirus_charge(uuid, bigint, bigint, bigint, bigint, bigint, bigint, boolean, boolean) FROM PUBLIC;

-- A file counts once, with its size once known; a run's logs are charged but never refused
-- (the run's own bounds cap them), so that a run past its owner's quota keeps its logs.
-- Only the catalogue (the schema's owner) writes files and uploads: these run as it.
CREATE FUNCTION pirus_charge_file() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.owner IS NOT DISTINCT FROM NEW.owner THEN
        PERFORM public.pirus_charge(NEW.owner, coalesce(NEW.size, 0) - coalesce(OLD.size, 0),
                                    0, 0, 0, 0, 0, NEW.kind <> 'log', false);
        RETURN NULL;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM public.pirus_charge(OLD.owner, -coalesce(OLD.size, 0), -1, 0, 0, 0, 0, false, false);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        PERFORM public.pirus_charge(NEW.owner, coalesce(NEW.size, 0), 1, 0, 0, 0, 0,
                                    NEW.kind <> 'log', false);
    END IF;
    RETURN NULL;
END
$$;
-- WHEN clauses spare the function call where nothing counted changes (checked by the server,
-- not by PL/pgSQL): an upload's offset moving on a file of known size, a status change.
CREATE TRIGGER files_usage_insert AFTER INSERT ON files
    FOR EACH ROW EXECUTE FUNCTION pirus_charge_file();
CREATE TRIGGER files_usage_delete AFTER DELETE ON files
    FOR EACH ROW EXECUTE FUNCTION pirus_charge_file();
CREATE TRIGGER files_usage_update AFTER UPDATE OF size, owner ON files
    FOR EACH ROW
    WHEN (OLD.size IS DISTINCT FROM NEW.size OR OLD.owner IS DISTINCT FROM NEW.owner)
    EXECUTE FUNCTION pirus_charge_file();

-- What an upload holds beyond its file's size: a partial upload (tus concatenation, no file of
-- its own) its length, or while it is not known the bytes received; an upload of deferred
-- length the bytes received until its length is declared (its file is then charged that).
CREATE FUNCTION pirus_upload_charge(u uploads) RETURNS bigint
LANGUAGE sql IMMUTABLE
AS $$
    SELECT CASE WHEN u.file_id IS NULL THEN coalesce(u.size, u."offset")
                WHEN u.size IS NULL THEN u."offset"
                ELSE 0 END
$$;

CREATE FUNCTION pirus_charge_upload() RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    before bigint := CASE WHEN TG_OP = 'INSERT' THEN 0 ELSE public.pirus_upload_charge(OLD) END;
    after bigint := CASE WHEN TG_OP = 'DELETE' THEN 0 ELSE public.pirus_upload_charge(NEW) END;
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.owner IS DISTINCT FROM NEW.owner THEN
        PERFORM public.pirus_charge(OLD.owner, -before, 0, 0, 0, 0, 0, false, false);
        PERFORM public.pirus_charge(NEW.owner, after, 0, 0, 0, 0, 0, true, false);
    ELSIF after <> before THEN
        PERFORM public.pirus_charge(coalesce(NEW.owner, OLD.owner), after - before, 0, 0, 0, 0, 0,
                                    true, false);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER uploads_usage_insert AFTER INSERT ON uploads
    FOR EACH ROW WHEN (NEW.file_id IS NULL OR NEW.size IS NULL)
    EXECUTE FUNCTION pirus_charge_upload();
CREATE TRIGGER uploads_usage_delete AFTER DELETE ON uploads
    FOR EACH ROW WHEN (OLD.file_id IS NULL OR OLD.size IS NULL)
    EXECUTE FUNCTION pirus_charge_upload();
CREATE TRIGGER uploads_usage_update AFTER UPDATE OF size, "offset", owner ON uploads
    FOR EACH ROW
    WHEN (OLD.file_id IS NULL OR OLD.size IS NULL OR NEW.size IS NULL
          OR OLD.owner IS DISTINCT FROM NEW.owner)
    EXECUTE FUNCTION pirus_charge_upload();

-- Runs: queued while waiting; running, with what they reserve, from their claim until they
-- end (INITIALIZING, RUNNING, PAUSE, FINISHING). A new run is held to max_queued_runs, a claim
-- to the running and reserved limits; a run going back to the queue is never refused.
CREATE FUNCTION pirus_charge_run() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    active text[] := ARRAY['initializing', 'running', 'pause', 'finishing'];
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM public.pirus_charge(OLD.owner, 0, 0, (OLD.status = 'waiting')::int * -1,
            (OLD.status = ANY (active))::int * -1,
            CASE WHEN OLD.status = ANY (active) THEN -OLD.reserved_cpus ELSE 0 END,
            CASE WHEN OLD.status = ANY (active) THEN -OLD.reserved_memory_bytes ELSE 0 END,
            false, false);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        PERFORM public.pirus_charge(NEW.owner, 0, 0, (NEW.status = 'waiting')::int,
            (NEW.status = ANY (active))::int,
            CASE WHEN NEW.status = ANY (active) THEN NEW.reserved_cpus ELSE 0 END,
            CASE WHEN NEW.status = ANY (active) THEN NEW.reserved_memory_bytes ELSE 0 END,
            TG_OP = 'UPDATE' AND OLD.status = 'waiting', TG_OP = 'INSERT');
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER runs_usage_insert AFTER INSERT ON runs
    FOR EACH ROW EXECUTE FUNCTION pirus_charge_run();
CREATE TRIGGER runs_usage_delete AFTER DELETE ON runs
    FOR EACH ROW EXECUTE FUNCTION pirus_charge_run();
CREATE TRIGGER runs_usage_update AFTER UPDATE OF status, owner, reserved_cpus, reserved_memory_bytes ON runs
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.owner IS DISTINCT FROM NEW.owner
          OR OLD.reserved_cpus <> NEW.reserved_cpus
          OR OLD.reserved_memory_bytes <> NEW.reserved_memory_bytes)
    EXECUTE FUNCTION pirus_charge_run();

-- Usage recounted from the rows: what the counters should hold. `pirus-catalogue usage
-- --check` compares the two; they never differ unless something wrote around the triggers.
CREATE FUNCTION pirus_usage_recount()
RETURNS TABLE (principal_id uuid, stored_bytes bigint, files bigint, queued_runs bigint,
               running_runs bigint, reserved_cpus bigint, reserved_memory_bytes bigint)
LANGUAGE sql STABLE
AS $$
    SELECT owner, sum(b)::bigint, sum(f)::bigint, sum(q)::bigint, sum(r)::bigint,
           sum(c)::bigint, sum(m)::bigint
    FROM (
        SELECT owner, coalesce(size, 0) AS b, 1 AS f, 0 AS q, 0 AS r, 0 AS c, 0 AS m
        FROM public.files WHERE owner IS NOT NULL
        UNION ALL
        SELECT u.owner, public.pirus_upload_charge(u), 0, 0, 0, 0, 0
        FROM public.uploads u WHERE u.owner IS NOT NULL
        UNION ALL
        SELECT owner, 0, 0, (status = 'waiting')::int,
               (status IN ('initializing', 'running', 'pause', 'finishing'))::int,
               CASE WHEN status IN ('initializing', 'running', 'pause', 'finishing')
                    THEN reserved_cpus ELSE 0 END,
               CASE WHEN status IN ('initializing', 'running', 'pause', 'finishing')
                    THEN reserved_memory_bytes ELSE 0 END
        FROM public.runs WHERE owner IS NOT NULL
    ) x
    GROUP BY owner
$$;

-- The counters start from a recount of what exists.
INSERT INTO principal_usage (principal_id, shard, stored_bytes, files, queued_runs,
                             running_runs, reserved_cpus, reserved_memory_bytes)
SELECT principal_id, 0, stored_bytes, files, queued_runs, running_runs, reserved_cpus,
       reserved_memory_bytes
FROM pirus_usage_recount();

-- Principals' names, for what shows or filters by owner (both services).
CREATE VIEW principal_names AS SELECT id, name FROM principals;

-- What the runner reads of principals: limits and usage (claims).
CREATE VIEW principal_for_runs AS
    SELECT p.id, p.name, p.weight, p.max_running_runs, p.max_reserved_cpus,
           p.max_reserved_memory_bytes, u.running_runs, u.reserved_cpus, u.reserved_memory_bytes
    FROM principals p
    CROSS JOIN LATERAL (
        -- One principal's shards, by the primary key: a claim reads only its run's owner's.
        SELECT coalesce(sum(x.running_runs), 0)::bigint AS running_runs,
               coalesce(sum(x.reserved_cpus), 0)::bigint AS reserved_cpus,
               coalesce(sum(x.reserved_memory_bytes), 0)::bigint AS reserved_memory_bytes
        FROM principal_usage x WHERE x.principal_id = p.id
    ) u;

-- A token by its accessor id, with its principal: the principal's role is the token's, and a
-- disabled principal's tokens are refused.
DROP FUNCTION pirus_token(uuid);
CREATE FUNCTION pirus_token(accessor uuid)
RETURNS TABLE (
    accessor_id uuid, name text, role text, node text, secret_hash bytea,
    expires_at timestamptz, revoked_at timestamptz, created_at timestamptz,
    principal_id uuid, principal_name text, disabled_at timestamptz
)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT t.accessor_id, t.name, p.role, t.node, t.secret_hash,
           t.expires_at, t.revoked_at, t.created_at, p.id, p.name, p.disabled_at
    FROM public.tokens t JOIN public.principals p ON p.id = t.principal_id
    WHERE t.accessor_id = accessor
$$;
REVOKE ALL ON FUNCTION pirus_token(uuid) FROM PUBLIC;

-- The runner's role gets the new views (and EXECUTE on pirus_token again) from
-- pirus_grant_runner(), redefined by migration 11, which always applies with this one.
