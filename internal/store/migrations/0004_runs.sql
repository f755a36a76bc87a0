-- A background run's own fields beside its invocation, kept after it
-- ends: how often it started, and the Idempotency-Key it was created with
-- (one run per agent and key).
CREATE TABLE IF NOT EXISTS runs (
    invocation_id   TEXT    NOT NULL PRIMARY KEY,
    agent_id        TEXT    NOT NULL,
    idempotency_key TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    started_at      INTEGER -- unix microseconds of the last start; NULL: never started
);
CREATE UNIQUE INDEX IF NOT EXISTS idx_runs_idempotency ON runs (agent_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
