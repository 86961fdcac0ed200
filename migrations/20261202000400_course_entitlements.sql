-- Who may enroll in a paid course. Today only grants exist (the course's instructor or an admin
-- gives a student the course); the payments issue records purchases here too, with
-- source = 'payment' and its provider's reference. One row per course and student: a revoked
-- grant or a refunded payment keeps its row with revoked_at set, and a new grant revives it.
CREATE TABLE course_entitlements (
    course_id  uuid        NOT NULL REFERENCES courses (id),
    user_id    uuid        NOT NULL REFERENCES users (id),
    source     text        NOT NULL CHECK (source IN ('grant', 'payment')),
    granted_by uuid        REFERENCES users (id) ON DELETE SET NULL,
    reference  text        CHECK (char_length(reference) <= 255),
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz,
    PRIMARY KEY (course_id, user_id)
);
CREATE INDEX course_entitlements_user_idx ON course_entitlements (user_id);
