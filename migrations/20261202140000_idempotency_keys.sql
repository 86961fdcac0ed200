-- Idempotency-Key (draft-ietf-httpapi-idempotency-key-header): the first response to a creating
-- POST, kept for 24 hours per caller and key, so a retry replays it instead of acting twice.
CREATE TABLE idempotency_keys (
    -- Who sent the key: 'user:<uuid>' or 'operator'. Keys of different callers never meet.
    owner        text        NOT NULL,
    idem_key     text        NOT NULL CHECK (length(idem_key) BETWEEN 1 AND 255),
    -- SHA-256 of method, path and body: the same key with another request is refused.
    fingerprint  bytea       NOT NULL,
    method       text        NOT NULL,
    path         text        NOT NULL,
    -- Which request holds the key while it runs; a finished or released claim changes nothing.
    claim        uuid        NOT NULL,
    -- While the first request runs: NULL status, and the time after which its claim is void
    -- (its process died) and the key may be taken over.
    locked_until timestamptz NOT NULL,
    status       smallint,
    headers      jsonb,
    body         bytea,
    created_at   timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz,
    PRIMARY KEY (owner, idem_key)
);

-- The sweep removes rows past their 24 hours, oldest first.
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
