-- A media follows its processing job's final outcome. A job can fail for good where the media code
-- never runs: the worker's watchdog drops the attempt, attempts run out, or the relay hands back
-- the last attempt of a worker that vanished. Without this the media would stay `processing`
-- forever. The trigger runs in the statement that marks the job failed, so both change together.
-- A dead letter an operator requeues puts its media back in `processing`.
CREATE INDEX media_job_idx ON media (job_id) WHERE job_id IS NOT NULL;

CREATE FUNCTION media_follow_job() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.state = 'failed' THEN
        UPDATE media
           SET state = 'failed',
               error = 'processing failed: ' || coalesce(NEW.last_error, 'unknown error'),
               updated_at = now()
         WHERE job_id = NEW.id AND state = 'processing';
    ELSIF OLD.state = 'failed' THEN
        UPDATE media
           SET state = 'processing', error = NULL, updated_at = now()
         WHERE job_id = NEW.id AND state = 'failed';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_media_outcome
    AFTER UPDATE OF state ON jobs
    FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state AND (NEW.state = 'failed' OR OLD.state = 'failed'))
    EXECUTE FUNCTION media_follow_job();
