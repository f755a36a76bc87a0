-- Async invocations remember their tenant (fair queuing after a restart)
-- and whether they were started: one that was running when the server
-- stopped is not run again silently (see AsyncJob.Started).
ALTER TABLE async_queue ADD COLUMN tenant TEXT NOT NULL DEFAULT '';
ALTER TABLE async_queue ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE async_queue ADD COLUMN started_at INTEGER; -- unix microseconds of the last start; NULL: never started
