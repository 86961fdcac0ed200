-- Durable job records: the source of truth for every background job's payload, state,
-- attempts and errors. Redis (apalis-redis) only carries job ids to wake workers.
CREATE TABLE jobs (
    id               uuid PRIMARY KEY,
    kind             text        NOT NULL,
    queue            text        NOT NULL CHECK (queue IN ('email', 'media', 'default')),
    payload          jsonb       NOT NULL,
    state            text        NOT NULL DEFAULT 'queued'
                     CHECK (state IN ('queued', 'running', 'retrying', 'succeeded', 'failed')),
    attempts         integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts     integer     NOT NULL CHECK (max_attempts > 0),
    progress         smallint    NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    last_error       text,
    -- Every failed attempt: [{"attempt": n, "error": "...", "at": "..."}]
    errors           jsonb       NOT NULL DEFAULT '[]'::jsonb,
    -- Who asked for it (a user id once accounts exist; NULL for system jobs).
    created_by       uuid,
    run_at           timestamptz NOT NULL DEFAULT now(),
    -- NULL until the id is in Redis; the relay pushes rows that stay NULL.
    dispatched_at    timestamptz,
    -- A running attempt owns the job until then; past it the relay hands the job to another worker.
    lease_expires_at timestamptz,
    started_at       timestamptz,
    finished_at      timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CHECK ((state = 'running') = (lease_expires_at IS NOT NULL))
);

-- The relay's scan: jobs waiting to be pushed, and running jobs whose worker vanished.
CREATE INDEX jobs_undispatched_idx ON jobs (run_at)
    WHERE dispatched_at IS NULL AND state IN ('queued', 'retrying');
CREATE INDEX jobs_lease_idx ON jobs (lease_expires_at) WHERE state = 'running';
-- Dead letters by kind, newest first.
CREATE INDEX jobs_failed_idx ON jobs (kind, finished_at DESC) WHERE state = 'failed';
CREATE INDEX jobs_created_by_idx ON jobs (created_by, created_at DESC) WHERE created_by IS NOT NULL;
