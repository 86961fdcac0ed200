-- Where a fan-out (one event to many users) has got to. Each batch advances the cursor in the
-- same transaction as its notifications and mail jobs, so a retried fan-out resumes after the
-- last committed batch and nobody is told twice.
CREATE TABLE fanout_cursors (
    event_key     text PRIMARY KEY,
    after_user_id uuid,
    delivered     bigint      NOT NULL DEFAULT 0,
    finished_at   timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
