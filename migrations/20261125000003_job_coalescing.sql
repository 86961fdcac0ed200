-- Coalescing: at most one queued job per (kind, dedupe_key). Enqueuing a recompute-statistics
-- job 1,000 times for one course while one is queued adds nothing; once it runs, the next
-- enqueue queues a fresh one, so no change is missed.
ALTER TABLE jobs ADD COLUMN dedupe_key text;
CREATE UNIQUE INDEX jobs_dedupe_idx ON jobs (kind, dedupe_key)
    WHERE dedupe_key IS NOT NULL AND state = 'queued';
