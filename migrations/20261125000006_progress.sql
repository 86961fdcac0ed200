-- Watch progress per student and video, certificates.

-- Seconds covered by a set of watched intervals.
CREATE FUNCTION covered_secs(int4multirange) RETURNS integer LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT coalesce(sum(upper(r) - lower(r)), 0)::integer FROM unnest($1) AS r $$;

-- One row per student and video. `covered` is the union of the whole seconds actually watched,
-- so seeking to the end covers nothing; a video completes when 90 % of it is covered.
CREATE TABLE video_progress (
    user_id           uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    media_id          uuid        NOT NULL REFERENCES media (id) ON DELETE CASCADE,
    enrollment_id     uuid        NOT NULL REFERENCES enrollments (id) ON DELETE CASCADE,
    covered           int4multirange NOT NULL DEFAULT '{}',
    last_position     double precision NOT NULL DEFAULT 0 CHECK (last_position >= 0),
    watch_time        double precision NOT NULL DEFAULT 0 CHECK (watch_time >= 0),
    completed_at      timestamptz,
    first_watched_at  timestamptz NOT NULL DEFAULT now(),
    last_heartbeat_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, media_id)
);
CREATE INDEX video_progress_enrollment_idx ON video_progress (enrollment_id) WHERE completed_at IS NOT NULL;
CREATE INDEX video_progress_media_idx ON video_progress (media_id);

-- A certificate per completed enrollment; re-issuing (after a name change) keeps its id and code.
CREATE TABLE certificates (
    id                uuid PRIMARY KEY,
    enrollment_id     uuid        NOT NULL UNIQUE REFERENCES enrollments (id),
    verification_code text        NOT NULL UNIQUE,
    student_name      text        NOT NULL,
    course_title      text        NOT NULL,
    instructor_name   text        NOT NULL,
    completed_at      timestamptz NOT NULL,
    pdf_key           text,
    pdf_bytes         integer,
    issued_at         timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now()
);
