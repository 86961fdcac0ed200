-- The next free slot of the bulk-mail stream: announcements to followers are spread so that at
-- most MAIL_BULK_PER_MINUTE messages a minute leave, across every worker.
CREATE TABLE send_slots (
    name    text PRIMARY KEY,
    next_at timestamptz NOT NULL
);
INSERT INTO send_slots (name, next_at) VALUES ('bulk_mail', now());
