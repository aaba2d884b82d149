-- Pirus initial schema.
--
-- Conventions:
-- * Ids are UUIDv7, made by the services: time-ordered, so the primary key doubles as the keyset
--   for "newest last" paging and inserts stay at the right edge of the index.
-- * States are lowercase text with CHECK constraints: readable in psql, and adding a state is
--   one ALTER of a constraint rather than a type migration.
-- * Every filter a List RPC offers has an index that ends with the id, so each page is one index
--   range scan whatever the table size.

-- Content-addressed storage. A blob is the bytes of one or more files with the same SHA-256;
-- ref_count counts the files that point at it, so deleting one file never breaks another.
CREATE TABLE blobs (
    sha256      text        PRIMARY KEY CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size        bigint      NOT NULL CHECK (size >= 0),
    ref_count   bigint      NOT NULL DEFAULT 0 CHECK (ref_count >= 0),
    created_at  timestamptz NOT NULL DEFAULT now()
);
-- The collector removes blobs nobody points at any more.
CREATE INDEX blobs_unreferenced ON blobs (created_at) WHERE ref_count = 0;

-- Runner nodes. A node's row is its lease: heartbeat_at is renewed every few seconds; a node
-- not heard from for lease_seconds is recorded offline by whichever runner notices first.
-- incarnation changes on every start, so a runner that restarts under the same name takes the
-- node over and an older process still alive can tell it lost it.
CREATE TABLE nodes (
    name           text        PRIMARY KEY CHECK (name <> ''),
    address        text        NOT NULL,
    status         text        NOT NULL DEFAULT 'online'
                               CHECK (status IN ('online', 'draining', 'offline')),
    draining       boolean     NOT NULL DEFAULT false,
    max_runs       integer     NOT NULL CHECK (max_runs >= 0),
    lxd_version    text,
    lxd_available  boolean     NOT NULL DEFAULT false,
    lease_seconds  integer     NOT NULL CHECK (lease_seconds > 0),
    incarnation    uuid        NOT NULL,
    started_at     timestamptz NOT NULL DEFAULT now(),
    heartbeat_at   timestamptz NOT NULL DEFAULT now()
);

-- Pipelines: a package upload, then an installed pipeline.
CREATE TABLE pipelines (
    id               uuid        PRIMARY KEY,
    status           text        NOT NULL
                                 CHECK (status IN ('uploading', 'pause', 'installing', 'ready', 'error')),
    name             text        NOT NULL DEFAULT '',
    version          text        NOT NULL DEFAULT '',
    description      text        NOT NULL DEFAULT '',
    license          text        NOT NULL DEFAULT '',
    developers       text[]      NOT NULL DEFAULT '{}',
    pirus_api        text        NOT NULL DEFAULT '',
    package_file_id  uuid,
    image_file_id    uuid,
    image_sha256     text        CHECK (image_sha256 ~ '^[0-9a-f]{64}$'),
    -- The validated manifest with its defaults applied (paths, resources, timeout, network).
    manifest         jsonb,
    -- The run-configuration form, normalised to JSON Schema draft 2020-12.
    form             jsonb,
    error_message    text        NOT NULL DEFAULT '',
    request_id       text        UNIQUE,
    created_at       timestamptz NOT NULL DEFAULT now(),
    installed_at     timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
-- Name + version is unique among installed pipelines: the install that would repeat one ends in
-- error (a pipeline being installed has no name until its manifest is read). Failed installs
-- do not block a retry.
CREATE UNIQUE INDEX pipelines_name_version ON pipelines (name, version) WHERE status = 'ready';
-- Installs to run or resume.
CREATE INDEX pipelines_installing ON pipelines (id) WHERE status = 'installing';
CREATE INDEX pipelines_by_status ON pipelines (status, id);
CREATE INDEX pipelines_by_name ON pipelines (name, id);

-- Documents of an installed pipeline (form, icon, help, readme, license, manifest). Bounded in
-- size at install (16 MiB each), so they live in the database with the pipeline.
CREATE TABLE pipeline_documents (
    pipeline_id   uuid   NOT NULL REFERENCES pipelines (id) ON DELETE CASCADE,
    name          text   NOT NULL CHECK (name IN ('form', 'icon', 'help', 'readme', 'license', 'manifest')),
    content_type  text   NOT NULL,
    content       bytea  NOT NULL,
    PRIMARY KEY (pipeline_id, name)
);

-- Runs. The row holds the current attempt; run_attempts keeps the history.
CREATE TABLE runs (
    id                uuid        PRIMARY KEY,
    pipeline_id       uuid        NOT NULL,
    pipeline_name     text        NOT NULL,
    pipeline_version  text        NOT NULL,
    image_sha256      text        NOT NULL CHECK (image_sha256 ~ '^[0-9a-f]{64}$'),
    name              text        NOT NULL,
    status            text        NOT NULL
                                  CHECK (status IN ('waiting', 'initializing', 'running', 'pause',
                                                    'finishing', 'done', 'error', 'canceled')),
    -- What a client asked for (pause, resume, cancel); the owning runner's reconciler drives
    -- the container towards it and records what happened in status.
    desired_state     text        CHECK (desired_state IN ('running', 'pause', 'canceled')),
    config            jsonb       NOT NULL,
    input_file_ids    uuid[]      NOT NULL DEFAULT '{}',
    priority          integer     NOT NULL DEFAULT 0,
    request_id        text        UNIQUE,
    cpu_limit         integer     CHECK (cpu_limit > 0),
    memory_limit      bigint      CHECK (memory_limit > 0),
    timeout_seconds   bigint      CHECK (timeout_seconds > 0),
    max_attempts      integer     NOT NULL DEFAULT 1 CHECK (max_attempts >= 1),
    -- The attempt is the fencing token: a runner acts on a run only while it holds the current
    -- attempt on its node. 0 while never claimed.
    attempt           integer     NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    node              text        REFERENCES nodes (name),
    progress_value    double precision NOT NULL DEFAULT 0,
    progress_label    text        NOT NULL DEFAULT '',
    exit_code         integer,
    error_message     text        NOT NULL DEFAULT '',
    -- The seq of the run's newest event; bumped under the row lock by the transaction that
    -- appends an event, so seq is gap-free and strictly increasing per run.
    last_seq          bigint      NOT NULL DEFAULT 0,
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    ended_at          timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'waiting') = (node IS NULL) OR status IN ('done', 'error', 'canceled'))
);
-- The queue: runners claim the next waiting run by priority then age, FOR UPDATE SKIP LOCKED.
CREATE INDEX runs_queue ON runs (priority DESC, created_at, id) WHERE status = 'waiting';
-- A node's unfinished runs: slot counting, the reconciler, lease expiry.
CREATE INDEX runs_active_by_node ON runs (node)
    WHERE status IN ('initializing', 'running', 'pause', 'finishing');
-- Runs with a pending control request.
CREATE INDEX runs_desired ON runs (node) WHERE desired_state IS NOT NULL;
CREATE INDEX runs_by_status ON runs (status, id);
CREATE INDEX runs_by_pipeline ON runs (pipeline_id, id);
CREATE INDEX runs_by_node ON runs (node, id);

CREATE TABLE run_attempts (
    run_id         uuid        NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    attempt        integer     NOT NULL CHECK (attempt >= 1),
    node           text        NOT NULL,
    status         text        NOT NULL,
    error_message  text        NOT NULL DEFAULT '',
    started_at     timestamptz NOT NULL DEFAULT now(),
    ended_at       timestamptz,
    PRIMARY KEY (run_id, attempt)
);

-- Every status or progress change of a run, appended in the same transaction as the change.
CREATE TABLE run_events (
    run_id          uuid             NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq             bigint           NOT NULL CHECK (seq >= 1),
    attempt         integer          NOT NULL DEFAULT 0,
    status          text             NOT NULL,
    progress_value  double precision NOT NULL DEFAULT 0,
    progress_label  text             NOT NULL DEFAULT '',
    message         text             NOT NULL DEFAULT '',
    at              timestamptz      NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (run_id, seq)
);

-- Files: user data, packages, images, run outputs and logs.
CREATE TABLE files (
    id              uuid        PRIMARY KEY,
    name            text        NOT NULL,
    kind            text        NOT NULL DEFAULT 'data'
                                CHECK (kind IN ('data', 'package', 'image', 'output', 'log')),
    status          text        NOT NULL
                                CHECK (status IN ('uploading', 'pause', 'ready', 'error')),
    -- NULL while the length is deferred (tus creation-defer-length).
    size            bigint      CHECK (size >= 0),
    -- Announced at creation; the finished upload is verified against it.
    expected_sha256 text        CHECK (expected_sha256 ~ '^[0-9a-f]{64}$'),
    -- Set once the content is stored: the blob holding it.
    sha256          text        REFERENCES blobs (sha256),
    tags            text[]      NOT NULL DEFAULT '{}',
    -- Not a foreign key: a run's outputs are deleted with the run by DeleteRun, and the
    -- catalogue may register files for runs it has not seen yet.
    source_run_id   uuid,
    error_message   text        NOT NULL DEFAULT '',
    request_id      text        UNIQUE,
    created_at      timestamptz NOT NULL DEFAULT now(),
    ready_at        timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX files_by_status ON files (status, id);
CREATE INDEX files_by_kind ON files (kind, id);
CREATE INDEX files_by_run ON files (source_run_id, id) WHERE source_run_id IS NOT NULL;
-- Registering a run's outputs and logs is idempotent: one file per run, kind and name.
CREATE UNIQUE INDEX files_run_output ON files (source_run_id, kind, name)
    WHERE source_run_id IS NOT NULL AND kind IN ('output', 'log');
CREATE INDEX files_by_sha256 ON files (sha256) WHERE sha256 IS NOT NULL;

ALTER TABLE pipelines
    ADD CONSTRAINT pipelines_package_file FOREIGN KEY (package_file_id) REFERENCES files (id),
    ADD CONSTRAINT pipelines_image_file FOREIGN KEY (image_file_id) REFERENCES files (id);

-- Resumable uploads, one per file being filled. The id is what clients address: the file id,
-- or the pipeline id for a package upload (file_id then names the package file). A tus partial
-- upload (concatenation) has no file of its own: its bytes become part of a final upload's.
CREATE TABLE uploads (
    id             uuid        PRIMARY KEY,
    -- Which tus endpoint addresses it: /uploads/files/ or /uploads/pipelines/.
    endpoint       text        NOT NULL CHECK (endpoint IN ('files', 'pipelines')),
    file_id        uuid        UNIQUE REFERENCES files (id) ON DELETE CASCADE,
    pipeline_id    uuid        REFERENCES pipelines (id) ON DELETE CASCADE,
    -- NULL while the length is deferred.
    size           bigint      CHECK (size >= 0),
    -- Bytes durably on disk: fsynced before this row is updated, so after a crash the partial
    -- file may hold more than this, never less.
    "offset"       bigint      NOT NULL DEFAULT 0 CHECK ("offset" >= 0),
    -- tus Upload-Metadata, as sent.
    metadata       text        NOT NULL DEFAULT '',
    -- tus concatenation: a partial upload is only ever a part of a final one; a final one
    -- lists its parts.
    is_partial     boolean     NOT NULL DEFAULT false,
    parts          uuid[],
    complete       boolean     NOT NULL DEFAULT false,
    expires_at     timestamptz NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    -- Refreshed by every durable commit of a transfer (at least every few seconds while bytes
    -- flow), so an upload untouched for 30 s is known to be idle.
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CHECK (size IS NULL OR "offset" <= size),
    CHECK (is_partial = (file_id IS NULL))
);
-- The sweepers: idle uploads to mark paused, expired ones to remove.
CREATE INDEX uploads_idle ON uploads (updated_at) WHERE NOT complete;
CREATE INDEX uploads_expiry ON uploads (expires_at);
