-- Jobs pushed to Redis that have not started: the relay's sweep pushes them again if Redis lost
-- them (Redis is a cache of this table, never the only copy of a job).
CREATE INDEX jobs_dispatched_idx ON jobs (queue, dispatched_at)
    WHERE dispatched_at IS NOT NULL AND state IN ('queued', 'retrying');
