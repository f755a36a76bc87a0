-- A run's user, when it ran with persistent memory: a background run is
-- started later, and must see the same user's persistent folders.
ALTER TABLE runs ADD COLUMN user_id TEXT;
