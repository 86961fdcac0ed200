-- Heartbeats rewrite a student's progress row every few seconds. Keep those updates HOT (no new
-- index entries, the old version pruned in place): no index may contain a column a heartbeat
-- changes, and pages keep room for the new versions.
--
-- Migration 150 put the stored `watched_secs` (which grows with every heartbeat that adds
-- coverage) in the per-video index, which made every such update write all three indexes. The
-- per-video dashboard reads `watched_secs` from the table instead.
ALTER TABLE video_progress SET (fillfactor = 70);
CREATE INDEX video_progress_media_viewers_idx ON video_progress (media_id) INCLUDE (completed_at);
DROP INDEX video_progress_media_stats_idx;
