-- A free preview: a video in a section of a course that anyone may play, without an account,
-- while the course is published (GET /api/v1/media/{id}/preview). Its instructor marks it with
-- PATCH /api/v1/media/{id}.
ALTER TABLE media ADD COLUMN is_preview boolean NOT NULL DEFAULT false;
