-- Catalogue: categories, courses, sections, the media hook, enrollments, reviews, notifications.
CREATE EXTENSION IF NOT EXISTS pg_trgm;

-- Categories nest one level: a category's parent must itself be a top-level category.
CREATE TABLE categories (
    id         uuid PRIMARY KEY,
    parent_id  uuid REFERENCES categories (id),
    slug       text        NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9]+(-[a-z0-9]+)*$'),
    name       text        NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK (parent_id IS DISTINCT FROM id)
);

CREATE FUNCTION categories_one_level() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.parent_id IS NOT NULL AND EXISTS (
        SELECT 1 FROM categories WHERE id = NEW.parent_id AND parent_id IS NOT NULL
    ) THEN
        RAISE EXCEPTION 'categories nest one level only' USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.parent_id IS NOT NULL AND EXISTS (SELECT 1 FROM categories WHERE parent_id = NEW.id) THEN
        RAISE EXCEPTION 'a category with children cannot get a parent' USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER categories_one_level BEFORE INSERT OR UPDATE ON categories
    FOR EACH ROW EXECUTE FUNCTION categories_one_level();

-- Tags joined for the search vector; array_to_string is only STABLE, this use of it is immutable.
CREATE FUNCTION lectern_join_tags(text[]) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT coalesce(array_to_string($1, ' '), '') $$;

CREATE TABLE courses (
    id                uuid PRIMARY KEY,
    instructor_id     uuid          NOT NULL REFERENCES users (id),
    category_id       uuid REFERENCES categories (id),
    title             text          NOT NULL CHECK (char_length(title) BETWEEN 1 AND 200),
    slug              text          NOT NULL UNIQUE,
    short_description text          NOT NULL DEFAULT '' CHECK (char_length(short_description) <= 500),
    description       text          NOT NULL DEFAULT '' CHECK (char_length(description) <= 20000),
    -- Exact decimals; a free course is one whose price is zero, so the two cannot disagree.
    price             numeric(10, 2) NOT NULL DEFAULT 0 CHECK (price >= 0 AND price <= 100000),
    currency          text          NOT NULL DEFAULT 'USD' CHECK (currency ~ '^[A-Z]{3}$'),
    is_free           boolean GENERATED ALWAYS AS (price = 0) STORED,
    difficulty        text          NOT NULL DEFAULT 'beginner'
        CHECK (difficulty IN ('beginner', 'intermediate', 'advanced', 'all_levels')),
    language          text          NOT NULL DEFAULT 'en',
    tags              text[]        NOT NULL DEFAULT '{}',
    prerequisites     text[]        NOT NULL DEFAULT '{}',
    learning_outcomes text[]        NOT NULL DEFAULT '{}',
    target_audience   text          NOT NULL DEFAULT '',
    thumbnail_media_id uuid,
    status            text          NOT NULL DEFAULT 'draft'
        CHECK (status IN ('draft', 'published', 'unpublished', 'archived')),
    published_at      timestamptz,
    -- Denormalised, kept exact by the recompute-statistics job only.
    enrollment_count  integer       NOT NULL DEFAULT 0,
    completion_count  integer       NOT NULL DEFAULT 0,
    rating_average    numeric(3, 2) NOT NULL DEFAULT 0,
    rating_count      integer       NOT NULL DEFAULT 0,
    search_vector     tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('english', title), 'A')
        || setweight(to_tsvector('english', short_description), 'B')
        || setweight(to_tsvector('english', description), 'C')
        || setweight(to_tsvector('english', lectern_join_tags(tags)), 'D')
    ) STORED,
    deleted_at        timestamptz,
    created_at        timestamptz   NOT NULL DEFAULT now(),
    updated_at        timestamptz   NOT NULL DEFAULT now()
);
CREATE INDEX courses_instructor_idx ON courses (instructor_id, created_at DESC) WHERE deleted_at IS NULL;
-- The public catalogue: only published, undeleted courses, so every search index is partial.
-- fastupdate off: catalogue writes are rare and reads many, so no pending list to scan.
CREATE INDEX courses_search_idx ON courses USING gin (search_vector) WITH (fastupdate = off)
    WHERE status = 'published' AND deleted_at IS NULL;
CREATE INDEX courses_title_trgm_idx ON courses USING gin (title gin_trgm_ops) WITH (fastupdate = off)
    WHERE status = 'published' AND deleted_at IS NULL;
CREATE INDEX courses_published_idx ON courses (published_at DESC, id DESC)
    WHERE status = 'published' AND deleted_at IS NULL;
CREATE INDEX courses_category_idx ON courses (category_id, published_at DESC)
    WHERE status = 'published' AND deleted_at IS NULL;
CREATE INDEX courses_rating_idx ON courses (rating_average DESC, id DESC)
    WHERE status = 'published' AND deleted_at IS NULL;
CREATE INDEX courses_popularity_idx ON courses (enrollment_count DESC, id DESC)
    WHERE status = 'published' AND deleted_at IS NULL;
CREATE INDEX courses_price_idx ON courses (price, id)
    WHERE status = 'published' AND deleted_at IS NULL;

-- Ordered sections. Live sections have dense positions 1..n; a deleted one has none. The
-- uniqueness is deferred so that a move can shift its neighbours within one statement.
CREATE TABLE sections (
    id          uuid PRIMARY KEY,
    course_id   uuid        NOT NULL REFERENCES courses (id) ON DELETE CASCADE,
    title       text        NOT NULL CHECK (char_length(title) BETWEEN 1 AND 200),
    description text        NOT NULL DEFAULT '' CHECK (char_length(description) <= 5000),
    position    integer CHECK (position >= 1),
    deleted_at  timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((deleted_at IS NULL) = (position IS NOT NULL)),
    CONSTRAINT sections_position_key UNIQUE (course_id, position) DEFERRABLE INITIALLY DEFERRED
);

-- Uploaded files. The media pipeline adds its own columns; courses only need to know which
-- videos are ready, where they sit, and how long they are.
CREATE TABLE media (
    id            uuid PRIMARY KEY,
    owner_id      uuid        NOT NULL REFERENCES users (id),
    course_id     uuid REFERENCES courses (id),
    section_id    uuid REFERENCES sections (id),
    kind          text        NOT NULL CHECK (kind IN ('video', 'image', 'audio', 'document')),
    state         text        NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'uploaded', 'processing', 'ready', 'failed')),
    title         text        NOT NULL DEFAULT '',
    duration_secs double precision CHECK (duration_secs >= 0),
    deleted_at    timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX media_course_idx ON media (course_id) WHERE deleted_at IS NULL;
CREATE INDEX media_owner_idx ON media (owner_id, created_at DESC);
ALTER TABLE courses ADD CONSTRAINT courses_thumbnail_fk FOREIGN KEY (thumbnail_media_id) REFERENCES media (id);

-- One enrollment per student and course; dropping keeps the row (and its progress).
CREATE TABLE enrollments (
    id             uuid PRIMARY KEY,
    user_id        uuid        NOT NULL REFERENCES users (id),
    course_id      uuid        NOT NULL REFERENCES courses (id),
    status         text        NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'dropped', 'completed')),
    price_paid     numeric(10, 2) NOT NULL DEFAULT 0 CHECK (price_paid >= 0),
    currency       text        NOT NULL DEFAULT 'USD' CHECK (currency ~ '^[A-Z]{3}$'),
    progress       numeric(5, 2) NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    enrolled_at    timestamptz NOT NULL DEFAULT now(),
    dropped_at     timestamptz,
    completed_at   timestamptz,
    last_accessed_at timestamptz,
    UNIQUE (user_id, course_id)
);
CREATE INDEX enrollments_course_idx ON enrollments (course_id, status);
CREATE INDEX enrollments_course_time_idx ON enrollments (course_id, enrolled_at);

-- One review per student and course; the instructor may reply.
CREATE TABLE reviews (
    id          uuid PRIMARY KEY,
    course_id   uuid        NOT NULL REFERENCES courses (id),
    user_id     uuid        NOT NULL REFERENCES users (id),
    rating      smallint    NOT NULL CHECK (rating BETWEEN 1 AND 5),
    body        text        NOT NULL DEFAULT '' CHECK (char_length(body) <= 5000),
    reply       text CHECK (char_length(reply) <= 5000),
    replied_at  timestamptz,
    deleted_at  timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (course_id, user_id)
);
CREATE INDEX reviews_course_idx ON reviews (course_id, created_at DESC) WHERE deleted_at IS NULL;

-- In-app notifications.
CREATE TABLE notifications (
    id         uuid PRIMARY KEY,
    user_id    uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    type       text        NOT NULL,
    title      text        NOT NULL,
    message    text        NOT NULL,
    data       jsonb       NOT NULL DEFAULT '{}',
    -- Makes a retried fan-out harmless: one notification per user and event.
    event_key  text,
    read_at    timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX notifications_user_idx ON notifications (user_id, id DESC);
CREATE INDEX notifications_unread_idx ON notifications (user_id) WHERE read_at IS NULL;
CREATE UNIQUE INDEX notifications_event_key ON notifications (user_id, event_key) WHERE event_key IS NOT NULL;
