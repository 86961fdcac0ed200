//! Courses: authoring, the publishing rules, duplication, and who may see what.
//!
//! A course is a draft until its instructor publishes it; only published, undeleted courses are
//! visible to others (to everyone else a draft is 404, as if it did not exist). Publishing is a
//! checked transition: every unmet rule is reported at once. The denormalised counters are never
//! touched here; the recompute-statistics job owns them.

pub mod catalog;
pub mod categories;
pub mod images;
pub mod input;
pub mod reviews;
pub mod sections;
pub mod stats;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::Services;
use crate::auth::{AuthUser, Principal, Role};
use crate::error::{Error, FieldErrors, Result};
use crate::jobs::{self, FanOutEvent, FanOutNotifications, Job, JobReference};
pub use input::CourseInput;
use input::Draft;

/// The publishing checklist (from the product's rules).
pub const MIN_DESCRIPTION_CHARS: usize = 100;
pub const MIN_SECTIONS: i64 = 2;
pub const MIN_READY_VIDEOS: i64 = 5;
pub const MIN_LEARNING_OUTCOMES: usize = 3;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct InstructorRef {
    pub id: Uuid,
    pub full_name: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CategoryRef {
    pub id: Uuid,
    pub slug: String,
    pub name: String,
}

/// A course as its page shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CourseView {
    pub id: Uuid,
    pub slug: String,
    pub title: String,
    pub short_description: String,
    pub description: String,
    /// Exact decimal, as a string (`"19.99"`).
    pub price: String,
    pub currency: String,
    pub is_free: bool,
    pub difficulty: String,
    pub language: String,
    pub tags: Vec<String>,
    pub prerequisites: Vec<String>,
    pub learning_outcomes: Vec<String>,
    pub target_audience: String,
    pub thumbnail_media_id: Option<Uuid>,
    /// `draft`, `published`, `unpublished` or `archived`.
    pub status: String,
    pub published_at: Option<DateTime<Utc>>,
    pub instructor: InstructorRef,
    pub category: Option<CategoryRef>,
    pub enrollment_count: i32,
    pub completion_count: i32,
    pub rating_average: f64,
    pub rating_count: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
pub(crate) struct CourseRow {
    pub(crate) id: Uuid,
    slug: String,
    title: String,
    short_description: String,
    description: String,
    price: String,
    currency: String,
    is_free: bool,
    difficulty: String,
    language: String,
    tags: Vec<String>,
    prerequisites: Vec<String>,
    learning_outcomes: Vec<String>,
    target_audience: String,
    thumbnail_media_id: Option<Uuid>,
    status: String,
    published_at: Option<DateTime<Utc>>,
    pub(crate) instructor_id: Uuid,
    instructor_name: String,
    category_id: Option<Uuid>,
    category_slug: Option<String>,
    category_name: Option<String>,
    enrollment_count: i32,
    completion_count: i32,
    rating_average: f64,
    rating_count: i32,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    deleted_at: Option<DateTime<Utc>>,
}

/// The select list and joins of [`CourseRow`], for `concat!` into static SQL.
macro_rules! course_select {
    () => {
        "SELECT c.id, c.slug, c.title, c.short_description, c.description, c.price::text AS price,
                c.currency, c.is_free, c.difficulty, c.language, c.tags, c.prerequisites,
                c.learning_outcomes, c.target_audience, c.thumbnail_media_id, c.status, c.published_at,
                c.instructor_id, u.full_name AS instructor_name, c.category_id,
                cat.slug AS category_slug, cat.name AS category_name, c.enrollment_count,
                c.completion_count, c.rating_average::float8 AS rating_average, c.rating_count,
                c.created_at, c.updated_at, c.deleted_at
           FROM courses c
           JOIN users u ON u.id = c.instructor_id
           LEFT JOIN categories cat ON cat.id = c.category_id "
    };
}

impl From<CourseRow> for CourseView {
    fn from(r: CourseRow) -> Self {
        let category = match (r.category_id, r.category_slug, r.category_name) {
            (Some(id), Some(slug), Some(name)) => Some(CategoryRef { id, slug, name }),
            _ => None,
        };
        CourseView {
            id: r.id,
            slug: r.slug,
            title: r.title,
            short_description: r.short_description,
            description: r.description,
            price: r.price,
            currency: r.currency,
            is_free: r.is_free,
            difficulty: r.difficulty,
            language: r.language,
            tags: r.tags,
            prerequisites: r.prerequisites,
            learning_outcomes: r.learning_outcomes,
            target_audience: r.target_audience,
            thumbnail_media_id: r.thumbnail_media_id,
            status: r.status,
            published_at: r.published_at,
            instructor: InstructorRef {
                id: r.instructor_id,
                full_name: r.instructor_name,
            },
            category,
            enrollment_count: r.enrollment_count,
            completion_count: r.completion_count,
            rating_average: r.rating_average,
            rating_count: r.rating_count,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

impl CourseRow {
    pub(crate) fn is_public(&self) -> bool {
        self.status == "published" && self.deleted_at.is_none()
    }

    /// The owner and admins see everything but deleted courses; others only the public catalogue.
    fn visible_to(&self, caller: Option<&Principal>) -> bool {
        if self.is_public() {
            return true;
        }
        self.deleted_at.is_none()
            && caller.is_some_and(|p| p.is_admin() || p.user_id() == Some(self.instructor_id))
    }

    fn editable_by(&self, caller: &Principal) -> bool {
        self.deleted_at.is_none()
            && (caller.is_admin() || caller.user_id() == Some(self.instructor_id))
    }
}

/// A course page: the course with its live sections and their ready media.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CourseDetail {
    #[serde(flatten)]
    pub course: CourseView,
    /// The thumbnail (at most 300 × 300) as a stable URL a plain `<img>` loads without a login
    /// (see `GET /courses/{id}/thumbnail`); `null` without a thumbnail.
    pub thumbnail_url: Option<String>,
    /// The same image larger (at most 1280 on its long side), for the course page.
    pub preview_image_url: Option<String>,
    pub sections: Vec<sections::SectionView>,
}

fn not_found() -> Error {
    Error::NotFound("course")
}

/// Loads a course by id or slug, locking it when `for_update`.
async fn load(
    conn: &mut PgConnection,
    id_or_slug: &str,
    for_update: bool,
) -> Result<Option<CourseRow>> {
    let by_id = Uuid::parse_str(id_or_slug).ok();
    let row = match (by_id, for_update) {
        (Some(id), false) => {
            sqlx::query_as::<_, CourseRow>(concat!(course_select!(), "WHERE c.id = $1"))
                .bind(id)
                .fetch_optional(conn)
                .await?
        }
        (Some(id), true) => {
            sqlx::query_as::<_, CourseRow>(concat!(
                course_select!(),
                "WHERE c.id = $1 FOR UPDATE OF c"
            ))
            .bind(id)
            .fetch_optional(conn)
            .await?
        }
        (None, _) => {
            sqlx::query_as::<_, CourseRow>(concat!(course_select!(), "WHERE c.slug = $1"))
                .bind(id_or_slug)
                .fetch_optional(conn)
                .await?
        }
    };
    Ok(row)
}

/// A course the caller may edit, locked for the rest of the transaction. 404 when it does not
/// exist or the caller may not even see it; 403 when they see it but do not own it.
pub(crate) async fn load_for_edit(
    conn: &mut PgConnection,
    caller: &Principal,
    course_id: Uuid,
) -> Result<CourseRow> {
    let row = load(conn, &course_id.to_string(), true)
        .await?
        .ok_or_else(not_found)?;
    if row.editable_by(caller) {
        Ok(row)
    } else if row.visible_to(Some(caller)) {
        Err(Error::Forbidden {
            code: "not_course_owner",
            message: "only the course's instructor can change it".into(),
        })
    } else {
        Err(not_found())
    }
}

/// A course the caller may see (published, or their own), or 404.
pub(crate) async fn load_visible(
    conn: &mut PgConnection,
    caller: Option<&Principal>,
    id_or_slug: &str,
) -> Result<CourseRow> {
    let row = load(conn, id_or_slug, false).await?.ok_or_else(not_found)?;
    if row.visible_to(caller) {
        return Ok(row);
    }
    // Students keep access to a course they enrolled in after it is unpublished or archived.
    if let Some(user_id) = caller.and_then(Principal::user_id)
        && row.deleted_at.is_none()
        && row.status != "draft"
    {
        let enrolled: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM enrollments WHERE user_id = $1 AND course_id = $2
                             AND status IN ('active', 'completed'))",
        )
        .bind(user_id)
        .bind(row.id)
        .fetch_one(&mut *conn)
        .await?;
        if enrolled {
            return Ok(row);
        }
    }
    Err(not_found())
}

/// Courses belong to a user account: the operator token cannot author, students cannot either.
fn require_author(caller: &Principal) -> Result<()> {
    let user = caller.require_user()?;
    if matches!(user.role, Role::Instructor | Role::Admin) {
        Ok(())
    } else {
        Err(Error::Forbidden {
            code: "instructor_required",
            message: "only instructors can create courses".into(),
        })
    }
}

/// Creates a draft course with a unique slug and a first "Introduction" section.
pub async fn create(
    services: &Services,
    caller: &Principal,
    input: &CourseInput,
) -> Result<CourseDetail> {
    require_author(caller)?;
    let user = caller.require_user()?;
    let mut fields = FieldErrors::new();
    if input.title.is_none() {
        fields.add("title", "is required");
    }
    let mut draft = Draft::default();
    let mut tx = services.db.begin().await?;
    draft.apply(&mut tx, user.id, input, &mut fields).await?;
    fields.into_result()?;
    let id = Uuid::now_v7();
    let mut created = false;
    for _ in 0..SLUG_ATTEMPTS {
        let slug = reserve_slug(&mut tx, &draft.title).await?;
        if draft.insert(&mut tx, id, user.id, &slug).await? {
            created = true;
            break;
        }
        tracing::info!(%slug, "slug taken by a concurrent creation; picking another");
    }
    if !created {
        return Err(slug_contention());
    }
    sqlx::query(
        "INSERT INTO sections (id, course_id, title, position) VALUES ($1, $2, 'Introduction', 1)",
    )
    .bind(Uuid::now_v7())
    .bind(id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    get(services, Some(caller), &id.to_string()).await
}

/// Turns a title into a URL slug: lower-case letters and digits joined by single dashes.
pub fn slugify(title: &str) -> String {
    let mut slug = String::new();
    let mut dash = false;
    for c in title.chars().flat_map(char::to_lowercase) {
        if c.is_alphanumeric() {
            if dash && !slug.is_empty() {
                slug.push('-');
            }
            dash = false;
            slug.push(c);
        } else {
            dash = true;
        }
        if slug.chars().count() >= 80 {
            break;
        }
    }
    if slug.is_empty() {
        "course".into()
    } else {
        slug
    }
}

/// How many slugs a creation tries before giving up with 409 (see [`reserve_slug`]).
const SLUG_ATTEMPTS: usize = 5;

fn slug_contention() -> Error {
    Error::Conflict {
        code: "slug_contention",
        message: "could not find a free slug under contention; try again".into(),
    }
}

/// Picks the first free slug among `base`, `base-2`, `base-3`, … Concurrent creations of the same
/// title serialise on an advisory lock for the base slug (held until the transaction ends), so
/// each sees the others' slugs. Different base slugs can still meet ("Intro" numbered `intro-2`
/// and a course titled "Intro 2"): the insert then finds the slug taken (`ON CONFLICT DO
/// NOTHING`, after the other transaction commits) and the caller reserves again, a bounded
/// number of times, seeing the committed slug this time.
async fn reserve_slug(conn: &mut PgConnection, title: &str) -> Result<String> {
    let base = slugify(title);
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('course-slug:' || $1, 0))")
        .bind(&base)
        .execute(&mut *conn)
        .await?;
    let taken: Vec<String> =
        sqlx::query_scalar("SELECT slug FROM courses WHERE slug = $1 OR slug LIKE $1 || '-%'")
            .bind(&base)
            .fetch_all(&mut *conn)
            .await?;
    if !taken.iter().any(|s| s == &base) {
        return Ok(base);
    }
    let highest = taken
        .iter()
        .filter_map(|s| {
            s.strip_prefix(&base)?
                .strip_prefix('-')?
                .parse::<u64>()
                .ok()
        })
        .max()
        .unwrap_or(1);
    Ok(format!("{base}-{}", highest.max(1) + 1))
}

/// A course page for whoever asks; drafts only for their owner (and admins).
pub async fn get(
    services: &Services,
    caller: Option<&Principal>,
    id_or_slug: &str,
) -> Result<CourseDetail> {
    let mut conn = services.db.acquire().await?;
    let row = load_visible(&mut conn, caller, id_or_slug).await?;
    let owner_view = caller.is_some_and(|p| p.is_admin() || p.user_id() == Some(row.instructor_id));
    let sections = sections::list_with_media(&mut conn, row.id, owner_view).await?;
    Ok(CourseDetail {
        thumbnail_url: images::thumbnail_url(services, row.id, row.thumbnail_media_id),
        preview_image_url: images::preview_image_url(services, row.id, row.thumbnail_media_id),
        course: row.into(),
        sections,
    })
}

/// Changes the fields present in `input`. Published courses stay published; their public page
/// changes at once.
pub async fn update(
    services: &Services,
    caller: &Principal,
    course_id: Uuid,
    input: &CourseInput,
) -> Result<CourseDetail> {
    let mut tx = services.db.begin().await?;
    let row = load_for_edit(&mut tx, caller, course_id).await?;
    if row.status == "archived" {
        return Err(Error::Conflict {
            code: "course_archived",
            message: "an archived course cannot be edited".into(),
        });
    }
    let mut draft = Draft::from_row(&row)?;
    let mut fields = FieldErrors::new();
    draft
        .apply(&mut tx, row.instructor_id, input, &mut fields)
        .await?;
    fields.into_result()?;
    draft.update(&mut tx, course_id).await?;
    tx.commit().await?;
    get(services, Some(caller), &course_id.to_string()).await
}

/// Soft-deletes a course. A course people are enrolled in cannot be deleted (unpublish it).
pub async fn delete(services: &Services, caller: &Principal, course_id: Uuid) -> Result<()> {
    let mut tx = services.db.begin().await?;
    load_for_edit(&mut tx, caller, course_id).await?;
    let learners: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM enrollments WHERE course_id = $1 AND status IN ('active', 'completed')",
    )
    .bind(course_id)
    .fetch_one(&mut *tx)
    .await?;
    if learners > 0 {
        return Err(Error::Conflict {
            code: "course_has_students",
            message: format!(
                "{learners} students are enrolled in this course; unpublish it instead of deleting it"
            ),
        });
    }
    sqlx::query("UPDATE courses SET deleted_at = now(), updated_at = now() WHERE id = $1")
        .bind(course_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Counts what the publishing rules look at, in one query.
#[derive(sqlx::FromRow)]
struct Readiness {
    sections: i64,
    ready_videos: i64,
    /// Videos whose processing failed for good: a lesson would show a broken player.
    failed_videos: i64,
    thumbnail_ready: bool,
}

/// Every unmet publishing rule, by field.
async fn unmet_rules(conn: &mut PgConnection, row: &CourseRow) -> Result<FieldErrors> {
    let r: Readiness = sqlx::query_as(
        "SELECT (SELECT count(*) FROM sections s WHERE s.course_id = $1 AND s.deleted_at IS NULL) AS sections,
                (SELECT count(*) FROM media m JOIN sections s ON s.id = m.section_id
                  WHERE m.course_id = $1 AND s.course_id = $1 AND s.deleted_at IS NULL AND m.deleted_at IS NULL
                    AND m.kind = 'video' AND m.state = 'ready') AS ready_videos,
                (SELECT count(*) FROM media m
                  WHERE m.course_id = $1 AND m.deleted_at IS NULL
                    AND m.kind = 'video' AND m.state = 'failed') AS failed_videos,
                EXISTS (SELECT 1 FROM media m WHERE m.id = $2 AND m.kind = 'image' AND m.state = 'ready'
                          AND m.deleted_at IS NULL) AS thumbnail_ready",
    )
    .bind(row.id)
    .bind(row.thumbnail_media_id)
    .fetch_one(conn)
    .await?;
    let mut fields = FieldErrors::new();
    if row.description.chars().count() < MIN_DESCRIPTION_CHARS {
        fields.add(
            "description",
            format!("must be at least {MIN_DESCRIPTION_CHARS} characters to publish"),
        );
    }
    if row.thumbnail_media_id.is_none() {
        fields.add("thumbnail_media_id", "a thumbnail is required to publish");
    } else if !r.thumbnail_ready {
        fields.add(
            "thumbnail_media_id",
            "the thumbnail image has not finished processing",
        );
    }
    if r.sections < MIN_SECTIONS {
        fields.add(
            "sections",
            format!(
                "at least {MIN_SECTIONS} sections are required (the course has {})",
                r.sections
            ),
        );
    }
    if r.ready_videos < MIN_READY_VIDEOS {
        fields.add(
            "videos",
            format!(
                "at least {MIN_READY_VIDEOS} processed videos are required (the course has {})",
                r.ready_videos
            ),
        );
    }
    if r.failed_videos > 0 {
        fields.add(
            "videos",
            format!(
                "{} video(s) failed processing (see each media's error); replace or delete them",
                r.failed_videos
            ),
        );
    }
    if row.learning_outcomes.len() < MIN_LEARNING_OUTCOMES {
        fields.add(
            "learning_outcomes",
            format!("at least {MIN_LEARNING_OUTCOMES} learning outcomes are required"),
        );
    }
    Ok(fields)
}

/// What publishing answers: the course, and the job that tells the instructor's followers.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Published {
    pub course: CourseView,
    /// The follower fan-out; `null` when the course was already published.
    pub job: Option<JobReference>,
}

/// Publishes a course when every rule holds (422 listing all that do not). Publishing an
/// already published course changes nothing. The followers' fan-out job commits with the change.
pub async fn publish(
    services: &Services,
    caller: &Principal,
    course_id: Uuid,
) -> Result<Published> {
    let mut tx = services.db.begin().await?;
    let row = load_for_edit(&mut tx, caller, course_id).await?;
    match row.status.as_str() {
        "published" => {
            tx.rollback().await?;
            let course = get(services, Some(caller), &course_id.to_string())
                .await?
                .course;
            return Ok(Published { course, job: None });
        }
        "archived" => {
            return Err(Error::Conflict {
                code: "course_archived",
                message: "an archived course cannot be published".into(),
            });
        }
        _ => {}
    }
    let unmet = unmet_rules(&mut tx, &row).await?;
    if !unmet.is_empty() {
        return Err(Error::Validation(unmet));
    }
    if let Principal::User(AuthUser {
        email_verified: false,
        ..
    }) = caller
    {
        return Err(Error::Forbidden {
            code: "email_unverified",
            message: "verify your email address before publishing a course".into(),
        });
    }
    sqlx::query(
        "UPDATE courses SET status = 'published', published_at = coalesce(published_at, now()), updated_at = now()
          WHERE id = $1",
    )
    .bind(course_id)
    .execute(&mut *tx)
    .await?;
    let job = Job::FanOutNotifications(FanOutNotifications {
        event: FanOutEvent::CoursePublished { course_id },
        after_user_id: None,
    });
    let queued = jobs::insert(&mut tx, &job, caller.user_id(), None).await?;
    tx.commit().await?;
    services.jobs.dispatch(&queued).await;
    let course = get(services, Some(caller), &course_id.to_string())
        .await?
        .course;
    Ok(Published {
        course,
        job: Some(queued.reference()),
    })
}

/// Takes a published course out of the catalogue; enrolled students keep their access.
pub async fn unpublish(
    services: &Services,
    caller: &Principal,
    course_id: Uuid,
) -> Result<CourseView> {
    let mut tx = services.db.begin().await?;
    let row = load_for_edit(&mut tx, caller, course_id).await?;
    match row.status.as_str() {
        "published" => {
            sqlx::query(
                "UPDATE courses SET status = 'unpublished', updated_at = now() WHERE id = $1",
            )
            .bind(course_id)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        }
        "unpublished" => tx.rollback().await?,
        other => {
            return Err(Error::Conflict {
                code: "not_published",
                message: format!("the course is {other}, not published"),
            });
        }
    }
    Ok(get(services, Some(caller), &course_id.to_string())
        .await?
        .course)
}

/// Copies a course and its live sections into a new draft titled "… (Copy)". Media are not
/// copied: they stay attached to the original.
pub async fn duplicate(
    services: &Services,
    caller: &Principal,
    course_id: Uuid,
) -> Result<CourseDetail> {
    require_author(caller)?;
    let mut tx = services.db.begin().await?;
    let row = load_for_edit(&mut tx, caller, course_id).await?;
    let mut title = format!("{} (Copy)", row.title);
    if title.chars().count() > input::MAX_TITLE_CHARS {
        title = row.title.clone();
    }
    let new_id = Uuid::now_v7();
    let mut created = false;
    for _ in 0..SLUG_ATTEMPTS {
        let slug = reserve_slug(&mut tx, &format!("{}-copy", row.title)).await?;
        let inserted = sqlx::query(
            "INSERT INTO courses (id, instructor_id, category_id, title, slug, short_description, description, price,
                                  currency, difficulty, language, tags, prerequisites, learning_outcomes, target_audience)
             SELECT $2, instructor_id, category_id, $3, $4, short_description, description, price,
                    currency, difficulty, language, tags, prerequisites, learning_outcomes, target_audience
               FROM courses WHERE id = $1
             ON CONFLICT (slug) DO NOTHING",
        )
        .bind(course_id)
        .bind(new_id)
        .bind(&title)
        .bind(&slug)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 1 {
            created = true;
            break;
        }
        tracing::info!(%slug, "slug taken by a concurrent creation; picking another");
    }
    if !created {
        return Err(slug_contention());
    }
    sqlx::query(
        "INSERT INTO sections (id, course_id, title, description, position)
         SELECT gen_random_uuid(), $2, title, description, position
           FROM sections WHERE course_id = $1 AND deleted_at IS NULL",
    )
    .bind(course_id)
    .bind(new_id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    get(services, Some(caller), &new_id.to_string()).await
}

/// The instructor's own courses (every status but deleted), newest first.
pub async fn mine(
    services: &Services,
    caller: &Principal,
    limit: Option<i64>,
    cursor: Option<&str>,
) -> Result<crate::page::Page<CourseView>> {
    let user = caller.require_user()?;
    let limit = crate::page::limit(limit);
    let after: Option<(DateTime<Utc>, Uuid)> = cursor
        .map(|c| crate::page::decode_cursor(&services.config.jwt_secret, c))
        .transpose()?;
    let rows: Vec<CourseRow> = sqlx::query_as(concat!(
        course_select!(),
        "WHERE c.instructor_id = $1 AND c.deleted_at IS NULL
           AND ($2::timestamptz IS NULL OR (c.created_at, c.id) < ($2, $3))
         ORDER BY c.created_at DESC, c.id DESC LIMIT $4"
    ))
    .bind(user.id)
    .bind(after.map(|a| a.0))
    .bind(after.map(|a| a.1))
    .bind(limit)
    .fetch_all(&services.db)
    .await?;
    let next_cursor = (rows.len() as i64 == limit)
        .then(|| {
            rows.last().map(|r| {
                crate::page::encode_cursor(&services.config.jwt_secret, &(r.created_at, r.id))
            })
        })
        .flatten();
    Ok(crate::page::Page {
        items: rows.into_iter().map(CourseView::from).collect(),
        next_cursor,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_lower_case_words_joined_by_dashes() {
        assert_eq!(slugify("Intro to Rust!"), "intro-to-rust");
        assert_eq!(slugify("  C++ -- for   Pythonistas "), "c-for-pythonistas");
        assert_eq!(slugify("Éléments de Géométrie"), "éléments-de-géométrie");
        assert_eq!(slugify("!!!"), "course");
        assert_eq!(slugify(&"a".repeat(500)).chars().count(), 80);
    }
}
