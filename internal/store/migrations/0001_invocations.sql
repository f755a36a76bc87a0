-- Invocation history of the local server.
-- Timestamps are INTEGER unix microseconds (UTC); JSON values are TEXT.
-- Invocation ids are UUIDv7 (time-ordered), so inserts append to the B-trees;
-- a status filter scans one agent's rows through idx_invocations_agent_time.
CREATE TABLE IF NOT EXISTS invocations (
    invocation_id     TEXT    NOT NULL PRIMARY KEY,
    agent_id          TEXT    NOT NULL,
    entrypoint_tag    TEXT    NOT NULL DEFAULT '',
    sdk_type          TEXT    NOT NULL DEFAULT '',
    input_args        TEXT,             -- JSON list as received
    input_kwargs      TEXT,             -- JSON object as received
    output_data       TEXT,             -- JSON value, NULL when none
    error_detail      TEXT,             -- NULL when none
    status            TEXT    NOT NULL, -- pending | completed | failed
    request_time      INTEGER NOT NULL, -- unix microseconds, UTC
    response_time     INTEGER,          -- unix microseconds, UTC; NULL while pending
    execution_time_ms REAL,             -- NULL while pending
    client_info       TEXT              -- JSON value
);
CREATE INDEX IF NOT EXISTS idx_invocations_agent_time ON invocations (agent_id, request_time);
