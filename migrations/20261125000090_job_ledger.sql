-- Effects of diagnostic no-op jobs that ask to be recorded (`{"record": true}`): one row per
-- job, written in the transaction that marks the job succeeded. A second application of the same
-- job's effect would bump `effects` instead of adding a row, so `effects = 1` everywhere proves
-- that crashes, lease take-overs and duplicate deliveries never applied an effect twice.
CREATE TABLE job_ledger (
    job_id      uuid        PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    effects     integer     NOT NULL DEFAULT 1 CHECK (effects > 0),
    -- The attempt whose completion committed the effect, and the worker process that ran it.
    attempt     integer     NOT NULL,
    worker      text        NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
