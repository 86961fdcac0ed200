-- After `/complete` has copied an upload to its verified source key, the presigned PUT URL still
-- works until it expires and can recreate the upload key. Nothing reads that object; this column
-- says when the URL is dead, so the workers' sweep can remove what it may have left.
ALTER TABLE media ADD COLUMN upload_key_sweep_at timestamptz;

CREATE INDEX media_upload_key_sweep_idx ON media (upload_key_sweep_at)
    WHERE upload_key_sweep_at IS NOT NULL;
