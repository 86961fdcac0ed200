-- Accounts, sessions with rotating refresh tokens, one-time mail tokens, follows, audit log.
CREATE TABLE users (
    id                    uuid PRIMARY KEY,
    -- Normalised (trimmed, lower-cased) at the boundary; unique.
    email                 text        NOT NULL CHECK (email = lower(email) AND char_length(email) <= 254),
    password_hash         text        NOT NULL,
    full_name             text        NOT NULL CHECK (char_length(full_name) BETWEEN 1 AND 100),
    bio                   text        NOT NULL DEFAULT '' CHECK (char_length(bio) <= 2000),
    role                  text        NOT NULL CHECK (role IN ('student', 'instructor', 'admin')),
    status                text        NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended', 'deleted')),
    email_verified_at     timestamptz,
    notify_email          boolean     NOT NULL DEFAULT true,
    notify_in_app         boolean     NOT NULL DEFAULT true,
    failed_logins         integer     NOT NULL DEFAULT 0,
    locked_until          timestamptz,
    last_login_at         timestamptz,
    last_login_ip         text,
    last_login_user_agent text,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_key ON users (email);

-- One row per login (a device). Refresh tokens rotate within it.
CREATE TABLE sessions (
    id             uuid PRIMARY KEY,
    user_id        uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    user_agent     text,
    ip             text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    last_used_at   timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL,
    revoked_at     timestamptz,
    revoked_reason text
);
CREATE INDEX sessions_user_idx ON sessions (user_id) WHERE revoked_at IS NULL;

-- Refresh tokens, stored only as SHA-256 hashes. A spent token is kept (used_at set) so that its
-- reuse is recognised as theft and revokes the whole session.
CREATE TABLE refresh_tokens (
    token_hash bytea PRIMARY KEY,
    session_id uuid        NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    used_at    timestamptz
);
CREATE INDEX refresh_tokens_session_idx ON refresh_tokens (session_id);

-- Email verification and password reset tokens, hashed, single use, expiring.
CREATE TABLE one_time_tokens (
    token_hash bytea PRIMARY KEY,
    user_id    uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose    text        NOT NULL CHECK (purpose IN ('verify_email', 'password_reset')),
    expires_at timestamptz NOT NULL,
    used_at    timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX one_time_tokens_user_idx ON one_time_tokens (user_id, purpose);

CREATE TABLE follows (
    follower_id   uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    instructor_id uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (follower_id, instructor_id),
    CHECK (follower_id <> instructor_id)
);
CREATE INDEX follows_instructor_idx ON follows (instructor_id, follower_id);

-- Security events, readable by admins.
CREATE TABLE audit_log (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id    uuid REFERENCES users (id) ON DELETE SET NULL,
    actor_id   uuid REFERENCES users (id) ON DELETE SET NULL,
    event      text        NOT NULL,
    ip         text,
    user_agent text,
    data       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_user_idx ON audit_log (user_id, id DESC);
CREATE INDEX audit_log_event_idx ON audit_log (event, id DESC);

ALTER TABLE jobs ADD CONSTRAINT jobs_created_by_fkey
    FOREIGN KEY (created_by) REFERENCES users (id) ON DELETE SET NULL;
