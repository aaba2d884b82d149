-- Identity: tokens (the secret is kept only as its SHA-256), an audit trail of every change,
-- and owners. A file, upload or run belongs to the accessor that created it; a run's outputs
-- and logs to the run's owner. Rows older than identity have no owner until the first admin
-- token is made (`pirus-catalogue token bootstrap`), which takes them.
CREATE TABLE tokens (
    accessor_id  uuid        PRIMARY KEY,
    name         text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    role         text        NOT NULL CHECK (role IN ('admin', 'operator', 'user', 'runner')),
    -- The node a runner token acts for; runner tokens only.
    node         text        CHECK ((role = 'runner') = (node IS NOT NULL)),
    secret_hash  bytea       NOT NULL CHECK (length(secret_hash) = 32),
    expires_at   timestamptz,
    revoked_at   timestamptz,
    created_by   uuid,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE audit_events (
    id           uuid        PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now(),
    -- NULL for a caller that could not be identified.
    accessor_id  uuid,
    service      text        NOT NULL,
    action       text        NOT NULL,
    target       text        NOT NULL DEFAULT '',
    outcome      text        NOT NULL,
    peer         text        NOT NULL DEFAULT ''
);
CREATE INDEX audit_events_by_time ON audit_events (id);

ALTER TABLE files ADD COLUMN owner uuid;
ALTER TABLE uploads ADD COLUMN owner uuid;
ALTER TABLE runs ADD COLUMN owner uuid;
CREATE INDEX files_owner ON files (owner, id);
CREATE INDEX runs_owner ON runs (owner, id);

-- Idempotency keys are per owner: one user's request_id never answers another's file or run.
ALTER TABLE files DROP CONSTRAINT files_request_id_key;
ALTER TABLE runs DROP CONSTRAINT runs_request_id_key;
CREATE UNIQUE INDEX files_owner_request_id ON files (owner, request_id) WHERE request_id IS NOT NULL;
CREATE UNIQUE INDEX runs_owner_request_id ON runs (owner, request_id) WHERE request_id IS NOT NULL;

-- What the catalogue needs of runs for identity: who owns a run, which node holds it, and
-- what it reads (its pipeline and inputs), while it is unfinished.
CREATE VIEW run_for_files AS
    SELECT id, owner, node, pipeline_id, input_file_ids,
           status NOT IN ('done', 'error', 'canceled') AS unfinished
    FROM runs;

-- What the runner needs of files for identity: who owns them.
CREATE OR REPLACE VIEW file_for_runs AS
    SELECT id, name, kind, status, sha256, source_run_id, owner
    FROM files;
