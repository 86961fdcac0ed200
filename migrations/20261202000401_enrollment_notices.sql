-- When the instructor was last told about this enrollment: a student who drops and re-enrolls
-- within ENROLLMENT_NOTICE_WINDOW_SECS is not announced again.
ALTER TABLE enrollments ADD COLUMN instructor_notified_at timestamptz;
