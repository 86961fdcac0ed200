-- The media pipeline's columns on the lead's `media` table: the upload (declared name, type and
-- size, where the object lives, an S3 multipart upload id while one is open, when an abandoned
-- upload is removed), the processing job, and what processing found and made.
ALTER TABLE media
    ADD COLUMN file_name          text        NOT NULL DEFAULT '' CHECK (char_length(file_name) <= 255),
    ADD COLUMN mime_type          text        NOT NULL DEFAULT '',
    ADD COLUMN size_bytes         bigint      NOT NULL DEFAULT 0 CHECK (size_bytes >= 0),
    ADD COLUMN object_key         text,
    ADD COLUMN multipart_upload_id text,
    ADD COLUMN upload_expires_at  timestamptz,
    ADD COLUMN job_id             uuid REFERENCES jobs (id) ON DELETE SET NULL,
    ADD COLUMN width              integer CHECK (width > 0),
    ADD COLUMN height             integer CHECK (height > 0),
    ADD COLUMN rotation           integer CHECK (rotation IN (0, 90, 180, 270)),
    ADD COLUMN frame_rate         double precision,
    ADD COLUMN video_codec        text,
    ADD COLUMN audio_codec        text,
    ADD COLUMN bit_rate           bigint,
    ADD COLUMN has_audio          boolean,
    -- [{name, width, height, bandwidth, average_bandwidth, codecs, segments}]
    ADD COLUMN renditions         jsonb       NOT NULL DEFAULT '[]',
    -- {width, height}: poster.jpg and poster.webp (videos); thumbnails and preview (images).
    ADD COLUMN poster             jsonb,
    ADD COLUMN storyboard         jsonb,
    ADD COLUMN image              jsonb,
    -- Why processing failed, in words for the uploader.
    ADD COLUMN error              text,
    ADD COLUMN processed_at       timestamptz;

-- The sweep of uploads that were started and never completed.
CREATE INDEX media_abandoned_idx ON media (upload_expires_at) WHERE state = 'pending';
