-- The platform server's state in PostgreSQL: the same tables as the SQLite
-- store (internal/store/migrations), in PostgreSQL's types.
-- Timestamps are BIGINT unix microseconds (UTC), as in SQLite, so that a
-- time comes back exactly as it went in. JSON values are TEXT, not JSONB:
-- the wire's history routes print inputs and outputs byte for byte as the
-- call sent and answered them.
CREATE TABLE invocations (
    seq               BIGINT GENERATED ALWAYS AS IDENTITY, -- recording order: ties of request_time
    invocation_id     TEXT    NOT NULL PRIMARY KEY,
    agent_id          TEXT    NOT NULL,
    entrypoint_tag    TEXT    NOT NULL DEFAULT '',
    sdk_type          TEXT    NOT NULL DEFAULT '',
    input_args        TEXT,
    input_kwargs      TEXT,
    output_data       TEXT,
    error_detail      TEXT,
    status            TEXT    NOT NULL, -- pending | completed | failed
    request_time      BIGINT  NOT NULL,
    response_time     BIGINT,
    execution_time_ms DOUBLE PRECISION,
    client_info       TEXT
);
CREATE INDEX idx_invocations_agent_time ON invocations (agent_id, request_time DESC, seq DESC);
CREATE INDEX idx_invocations_time ON invocations (request_time DESC, seq DESC);
CREATE INDEX idx_invocations_pending ON invocations (invocation_id) WHERE status = 'pending';

CREATE TABLE platform_agents (
    agent_id       TEXT    NOT NULL PRIMARY KEY,
    tenant         TEXT    NOT NULL,
    name           TEXT    NOT NULL DEFAULT '',
    framework      TEXT    NOT NULL DEFAULT '',
    active_version INTEGER NOT NULL DEFAULT 0,
    latest_version INTEGER NOT NULL DEFAULT 0,
    metadata       TEXT,
    created_at     BIGINT  NOT NULL,
    updated_at     BIGINT  NOT NULL
);

CREATE TABLE agent_versions (
    agent_id     TEXT    NOT NULL,
    version      INTEGER NOT NULL,
    status       TEXT    NOT NULL, -- uploaded | starting | active | failed | retired
    dir          TEXT    NOT NULL,
    file_name    TEXT    NOT NULL DEFAULT '',
    file_size    BIGINT  NOT NULL DEFAULT 0,
    sha256       TEXT    NOT NULL DEFAULT '',
    error        TEXT,
    uploaded_at  BIGINT  NOT NULL,
    activated_at BIGINT,
    PRIMARY KEY (agent_id, version)
);

CREATE TABLE api_keys (
    id              TEXT    NOT NULL PRIMARY KEY,
    name            TEXT    NOT NULL,
    tenant          TEXT    NOT NULL,
    scopes          TEXT    NOT NULL, -- comma-separated
    agents          TEXT    NOT NULL DEFAULT '', -- comma-separated; '' = any
    hash            BYTEA   NOT NULL, -- SHA-256 of the secret
    rate_per_second DOUBLE PRECISION NOT NULL DEFAULT 0,
    burst           INTEGER NOT NULL DEFAULT 0,
    max_concurrency INTEGER NOT NULL DEFAULT 0,
    created_at      BIGINT  NOT NULL,
    revoked_at      BIGINT
);

CREATE TABLE agent_logs (
    seq           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent_id      TEXT    NOT NULL,
    version       INTEGER NOT NULL,
    instance      TEXT    NOT NULL,
    invocation_id TEXT,
    stream        TEXT    NOT NULL, -- stdout | stderr | system
    line          TEXT    NOT NULL,
    at            BIGINT  NOT NULL
);
CREATE INDEX idx_agent_logs_agent ON agent_logs (agent_id, seq);
CREATE INDEX idx_agent_logs_invocation ON agent_logs (invocation_id) WHERE invocation_id IS NOT NULL;

-- An async invocation is here, with its invocations row pending, from the
-- moment it is accepted until its outcome is written in the same
-- transaction that removes it.
CREATE TABLE async_queue (
    seq             BIGINT GENERATED ALWAYS AS IDENTITY, -- queue order: ties of enqueued_at
    invocation_id   TEXT    NOT NULL PRIMARY KEY,
    agent_id        TEXT    NOT NULL,
    tenant          TEXT    NOT NULL DEFAULT '',
    timeout_seconds DOUBLE PRECISION NOT NULL DEFAULT 0,
    enqueued_at     BIGINT  NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    started_at      BIGINT
);
CREATE INDEX idx_async_queue_agent ON async_queue (agent_id);
