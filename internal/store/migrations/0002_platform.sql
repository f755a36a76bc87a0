-- State of the platform server (runagent server): deployed agents, their
-- versions, API keys, agent logs and the queue of async invocations.
-- The local server leaves these tables empty.
CREATE TABLE IF NOT EXISTS platform_agents (
    agent_id       TEXT    NOT NULL PRIMARY KEY,
    tenant         TEXT    NOT NULL,
    name           TEXT    NOT NULL DEFAULT '',
    framework      TEXT    NOT NULL DEFAULT '',
    active_version INTEGER NOT NULL DEFAULT 0, -- 0: none serving yet
    latest_version INTEGER NOT NULL DEFAULT 0,
    metadata       TEXT,                       -- JSON of the last metadata-upload
    created_at     INTEGER NOT NULL,           -- unix microseconds, UTC
    updated_at     INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS agent_versions (
    agent_id     TEXT    NOT NULL,
    version      INTEGER NOT NULL,
    status       TEXT    NOT NULL, -- uploaded | starting | active | failed | retired
    dir          TEXT    NOT NULL, -- the extracted bundle
    file_name    TEXT    NOT NULL DEFAULT '',
    file_size    INTEGER NOT NULL DEFAULT 0,
    sha256       TEXT    NOT NULL DEFAULT '',
    error        TEXT,
    uploaded_at  INTEGER NOT NULL,
    activated_at INTEGER,
    PRIMARY KEY (agent_id, version)
);

CREATE TABLE IF NOT EXISTS api_keys (
    id              TEXT    NOT NULL PRIMARY KEY,
    name            TEXT    NOT NULL,
    tenant          TEXT    NOT NULL,
    scopes          TEXT    NOT NULL, -- comma-separated
    agents          TEXT    NOT NULL DEFAULT '', -- comma-separated; '' = any
    hash            BLOB    NOT NULL, -- SHA-256 of the secret
    rate_per_second REAL    NOT NULL DEFAULT 0,
    burst           INTEGER NOT NULL DEFAULT 0,
    max_concurrency INTEGER NOT NULL DEFAULT 0,
    created_at      INTEGER NOT NULL,
    revoked_at      INTEGER
);

CREATE TABLE IF NOT EXISTS agent_logs (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    agent_id      TEXT    NOT NULL,
    version       INTEGER NOT NULL,
    instance      TEXT    NOT NULL,
    invocation_id TEXT,
    stream        TEXT    NOT NULL, -- stdout | stderr | system
    line          TEXT    NOT NULL,
    at            INTEGER NOT NULL  -- unix microseconds, UTC
);
CREATE INDEX IF NOT EXISTS idx_agent_logs_agent ON agent_logs (agent_id, seq);
CREATE INDEX IF NOT EXISTS idx_agent_logs_invocation ON agent_logs (invocation_id) WHERE invocation_id IS NOT NULL;

-- An async invocation is here, with its invocations row pending, from the
-- moment it is accepted until its outcome is written in the same
-- transaction that removes it: a restart runs what is left.
CREATE TABLE IF NOT EXISTS async_queue (
    invocation_id   TEXT    NOT NULL PRIMARY KEY,
    agent_id        TEXT    NOT NULL,
    timeout_seconds REAL    NOT NULL DEFAULT 0,
    enqueued_at     INTEGER NOT NULL
);
