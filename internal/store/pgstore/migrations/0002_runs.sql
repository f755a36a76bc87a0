-- A background run's own fields beside its invocation, kept after it
-- ends: how often it started, and the Idempotency-Key it was created with
-- (one run per agent and key).
CREATE TABLE runs (
    invocation_id   TEXT    NOT NULL PRIMARY KEY,
    agent_id        TEXT    NOT NULL,
    idempotency_key TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    started_at      BIGINT, -- unix microseconds of the last start; NULL: never started
    webhook         TEXT,   -- the URL its outcome is POSTed to; NULL: none
    cancel_requested INTEGER NOT NULL DEFAULT 0, -- 1: a client cancelled it; whoever picks it up ends it so
    thread_id       TEXT    -- its conversation: the runs of one thread run one at a time, in order
);
CREATE UNIQUE INDEX idx_runs_idempotency ON runs (agent_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX idx_runs_agent ON runs (agent_id);
CREATE INDEX idx_runs_thread ON runs (agent_id, thread_id) WHERE thread_id IS NOT NULL;

-- Each agent's secret for signing its runs' webhooks, made on first use.
CREATE TABLE webhook_secrets (
    agent_id   TEXT   NOT NULL PRIMARY KEY,
    secret     TEXT   NOT NULL,
    created_at BIGINT NOT NULL
);

-- Every attempt to deliver a run's webhook.
CREATE TABLE webhook_attempts (
    run_id      TEXT    NOT NULL,
    attempt     INTEGER NOT NULL,
    at          BIGINT  NOT NULL,
    url         TEXT    NOT NULL,
    status_code INTEGER NOT NULL DEFAULT 0, -- 0: no HTTP answer
    error       TEXT,
    duration_ms DOUBLE PRECISION NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, attempt)
);

-- Schedules of background runs: each tick creates one run (its
-- Idempotency-Key "cron:ID:TICK" makes that exactly once).
CREATE TABLE crons (
    cron_id        TEXT    NOT NULL PRIMARY KEY,
    agent_id       TEXT    NOT NULL,
    tenant         TEXT    NOT NULL DEFAULT '',
    schedule       TEXT    NOT NULL,
    timezone       TEXT    NOT NULL,
    entrypoint_tag TEXT    NOT NULL,
    input_args     TEXT    NOT NULL,
    input_kwargs   TEXT    NOT NULL,
    webhook        TEXT,
    end_at         BIGINT,
    paused         INTEGER NOT NULL DEFAULT 0,
    next_at        BIGINT, -- the next tick, unix microseconds; NULL: ended
    last_run_id    TEXT,
    created_at     BIGINT  NOT NULL
);
CREATE INDEX idx_crons_due ON crons (next_at) WHERE paused = 0 AND next_at IS NOT NULL;

-- The event logs of streams that outlive their client (on_disconnect
-- "continue"): a client re-joins from any gateway after the last event it
-- has. Kept for a while after the run ends (runagent server --event-retention).
CREATE TABLE run_events (
    run_id TEXT    NOT NULL,
    seq    INTEGER NOT NULL,
    kind   TEXT    NOT NULL,
    data   TEXT    NOT NULL,
    at     BIGINT  NOT NULL,
    PRIMARY KEY (run_id, seq)
);
