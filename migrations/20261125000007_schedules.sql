-- Recurring jobs. Workers check this table; the one whose conditional UPDATE moves `next_run_at`
-- forward queues the run, so a fleet of workers queues each occurrence once.
CREATE TABLE schedules (
    name        text PRIMARY KEY,
    next_run_at timestamptz NOT NULL
);
-- The nightly repair of the courses' counters, at 03:00 UTC.
INSERT INTO schedules (name, next_run_at)
VALUES ('recompute_all_course_stats', date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' + interval '1 day 3 hours');
