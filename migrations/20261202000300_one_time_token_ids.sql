-- One-time tokens get an id, so a mail job can name its token without carrying it: the worker
-- mints the link when it renders the mail (issue #13: no raw token in stored job payloads).
ALTER TABLE one_time_tokens ADD COLUMN id uuid NOT NULL DEFAULT gen_random_uuid();
CREATE UNIQUE INDEX one_time_tokens_id_idx ON one_time_tokens (id);
