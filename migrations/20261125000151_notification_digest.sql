-- The daily digest of unread notifications by mail: per user, the newest notification the last
-- digest covered (the next one lists only newer unread ones) and when it was sent.
CREATE TABLE digest_cursors (
    user_id uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    through timestamptz NOT NULL,
    sent_at timestamptz NOT NULL
);
-- Every day at 08:00 UTC.
INSERT INTO schedules (name, next_run_at)
VALUES ('notification_digest', date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' + interval '1 day 8 hours');
