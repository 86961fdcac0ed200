//! Ordered sections of a course. Live sections always have the positions 1..n, each once: every
//! change locks the course row first, so concurrent edits of one course apply one after another,
//! and the deferred unique constraint checks the result at commit.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{input, load_for_edit, load_visible};
use crate::Services;
use crate::auth::Principal;
use crate::error::{Error, FieldErrors, Result};

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct MediaItem {
    pub id: Uuid,
    #[serde(skip)]
    pub section_id: Option<Uuid>,
    pub kind: String,
    pub title: String,
    pub state: String,
    pub duration_secs: Option<f64>,
    /// A free preview: anyone may play it through `GET /media/{id}/preview` while the course is
    /// published.
    pub is_preview: bool,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SectionView {
    pub id: Uuid,
    pub title: String,
    pub description: String,
    pub position: i32,
    pub media: Vec<MediaItem>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct SectionRow {
    id: Uuid,
    title: String,
    description: String,
    position: i32,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// A course's live sections in order, each with its media: two queries whatever the size.
/// Others than the owner see only media that finished processing.
pub(crate) async fn list_with_media(
    conn: &mut PgConnection,
    course_id: Uuid,
    owner_view: bool,
) -> Result<Vec<SectionView>> {
    let rows: Vec<SectionRow> = sqlx::query_as(
        "SELECT id, title, description, position, created_at, updated_at FROM sections
          WHERE course_id = $1 AND deleted_at IS NULL ORDER BY position",
    )
    .bind(course_id)
    .fetch_all(&mut *conn)
    .await?;
    let media: Vec<MediaItem> = sqlx::query_as(
        "SELECT id, section_id, kind, title, state, duration_secs, is_preview FROM media
          WHERE course_id = $1 AND section_id IS NOT NULL AND deleted_at IS NULL AND ($2 OR state = 'ready')
          ORDER BY created_at, id",
    )
    .bind(course_id)
    .bind(owner_view)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| SectionView {
            media: media
                .iter()
                .filter(|m| m.section_id == Some(r.id))
                .cloned()
                .collect(),
            id: r.id,
            title: r.title,
            description: r.description,
            position: r.position,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
        .collect())
}

pub async fn list(
    services: &Services,
    caller: Option<&Principal>,
    course: &str,
) -> Result<Vec<SectionView>> {
    let mut conn = services.db.acquire().await?;
    let row = load_visible(&mut conn, caller, course).await?;
    let owner_view = caller.is_some_and(|p| p.is_admin() || p.user_id() == Some(row.instructor_id));
    list_with_media(&mut conn, row.id, owner_view).await
}

#[derive(Debug, Default, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SectionInput {
    pub title: Option<String>,
    pub description: Option<String>,
    /// 1-based; on create, defaults to the end; on update, moves the section there.
    pub position: Option<i64>,
}

fn check_text(
    input: &SectionInput,
    fields: &mut FieldErrors,
    title_required: bool,
) -> (Option<String>, Option<String>) {
    let title = match &input.title {
        Some(t) => {
            let t = t.trim();
            let len = t.chars().count();
            if len == 0 {
                fields.add("title", "is required");
                None
            } else if len > input::MAX_TITLE_CHARS {
                fields.add(
                    "title",
                    format!("must be at most {} characters", input::MAX_TITLE_CHARS),
                );
                None
            } else {
                Some(t.to_owned())
            }
        }
        None => {
            if title_required {
                fields.add("title", "is required");
            }
            None
        }
    };
    let description = match &input.description {
        Some(d) if d.chars().count() > 5000 => {
            fields.add("description", "must be at most 5000 characters");
            None
        }
        Some(d) => Some(d.trim().to_owned()),
        None => None,
    };
    (title, description)
}

async fn live_count(conn: &mut PgConnection, course_id: Uuid) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM sections WHERE course_id = $1 AND deleted_at IS NULL",
    )
    .bind(course_id)
    .fetch_one(conn)
    .await?)
}

fn position_in(fields: &mut FieldErrors, requested: i64, max: i64) -> Option<i32> {
    if (1..=max).contains(&requested) {
        i32::try_from(requested).ok()
    } else {
        fields.add("position", format!("must be between 1 and {max}"));
        None
    }
}

async fn view(conn: &mut PgConnection, id: Uuid) -> Result<SectionView> {
    let r: SectionRow = sqlx::query_as(
        "SELECT id, title, description, position, created_at, updated_at FROM sections WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&mut *conn)
    .await?;
    let media: Vec<MediaItem> = sqlx::query_as(
        "SELECT id, section_id, kind, title, state, duration_secs, is_preview FROM media
          WHERE section_id = $1 AND deleted_at IS NULL ORDER BY created_at, id",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(SectionView {
        id: r.id,
        title: r.title,
        description: r.description,
        position: r.position,
        media,
        created_at: r.created_at,
        updated_at: r.updated_at,
    })
}

/// Adds a section at `position` (default: the end), shifting the ones after it down.
pub async fn create(
    services: &Services,
    caller: &Principal,
    course_id: Uuid,
    input: &SectionInput,
) -> Result<SectionView> {
    let mut tx = services.db.begin().await?;
    load_for_edit(&mut tx, caller, course_id).await?;
    let count = live_count(&mut tx, course_id).await?;
    let mut fields = FieldErrors::new();
    let (title, description) = check_text(input, &mut fields, true);
    let position = match input.position {
        Some(p) => position_in(&mut fields, p, count + 1),
        None => i32::try_from(count + 1).ok(),
    };
    fields.into_result()?;
    let (Some(title), Some(position)) = (title, position) else {
        return Err(Error::Internal("validated section lost a field".into()));
    };
    sqlx::query("UPDATE sections SET position = position + 1 WHERE course_id = $1 AND deleted_at IS NULL AND position >= $2")
        .bind(course_id)
        .bind(position)
        .execute(&mut *tx)
        .await?;
    let id = Uuid::now_v7();
    sqlx::query("INSERT INTO sections (id, course_id, title, description, position) VALUES ($1, $2, $3, $4, $5)")
        .bind(id)
        .bind(course_id)
        .bind(&title)
        .bind(description.unwrap_or_default())
        .bind(position)
        .execute(&mut *tx)
        .await?;
    touch_course(&mut tx, course_id).await?;
    let section = view(&mut tx, id).await?;
    tx.commit().await?;
    Ok(section)
}

/// The course of a live section, or 404.
async fn course_of(conn: &mut PgConnection, section_id: Uuid) -> Result<Uuid> {
    sqlx::query_scalar("SELECT course_id FROM sections WHERE id = $1 AND deleted_at IS NULL")
        .bind(section_id)
        .fetch_optional(conn)
        .await?
        .ok_or(Error::NotFound("section"))
}

async fn touch_course(conn: &mut PgConnection, course_id: Uuid) -> Result<()> {
    sqlx::query("UPDATE courses SET updated_at = now() WHERE id = $1")
        .bind(course_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Renames, re-describes or moves a section; a move shifts the sections in between by one.
pub async fn update(
    services: &Services,
    caller: &Principal,
    section_id: Uuid,
    input: &SectionInput,
) -> Result<SectionView> {
    let mut tx = services.db.begin().await?;
    let course_id = course_of(&mut tx, section_id).await?;
    load_for_edit(&mut tx, caller, course_id).await?;
    // Re-read under the course lock: a concurrent move may have changed it.
    let current: Option<i32> =
        sqlx::query_scalar("SELECT position FROM sections WHERE id = $1 AND deleted_at IS NULL")
            .bind(section_id)
            .fetch_optional(&mut *tx)
            .await?
            .flatten();
    let current = current.ok_or(Error::NotFound("section"))?;
    let count = live_count(&mut tx, course_id).await?;
    let mut fields = FieldErrors::new();
    let (title, description) = check_text(input, &mut fields, false);
    let target = input
        .position
        .and_then(|p| position_in(&mut fields, p, count));
    fields.into_result()?;
    if let Some(target) = target.filter(|t| *t != current) {
        sqlx::query(
            "UPDATE sections SET position = CASE
                    WHEN id = $2 THEN $4
                    WHEN $4 < $3 THEN position + 1
                    ELSE position - 1 END
              WHERE course_id = $1 AND deleted_at IS NULL
                AND (id = $2 OR position BETWEEN least($3, $4) AND greatest($3, $4))",
        )
        .bind(course_id)
        .bind(section_id)
        .bind(current)
        .bind(target)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(
        "UPDATE sections SET title = coalesce($2, title), description = coalesce($3, description), updated_at = now()
          WHERE id = $1",
    )
    .bind(section_id)
    .bind(title)
    .bind(description)
    .execute(&mut *tx)
    .await?;
    touch_course(&mut tx, course_id).await?;
    let section = view(&mut tx, section_id).await?;
    tx.commit().await?;
    Ok(section)
}

/// Soft-deletes a section and closes the gap in the order. Its media stay, detached from the
/// course's outline (they no longer count towards publishing or progress), so the students'
/// progress is recomputed by the statistics job queued with the deletion.
pub async fn delete(services: &Services, caller: &Principal, section_id: Uuid) -> Result<()> {
    let mut tx = services.db.begin().await?;
    let course_id = course_of(&mut tx, section_id).await?;
    load_for_edit(&mut tx, caller, course_id).await?;
    let old: Option<i32> = sqlx::query_scalar(
        "UPDATE sections SET deleted_at = now(), position = NULL, updated_at = now()
          WHERE id = $1 AND deleted_at IS NULL
          RETURNING (SELECT position FROM sections WHERE id = $1)",
    )
    .bind(section_id)
    .fetch_optional(&mut *tx)
    .await?
    .flatten();
    let old = old.ok_or(Error::NotFound("section"))?;
    sqlx::query("UPDATE sections SET position = position - 1 WHERE course_id = $1 AND deleted_at IS NULL AND position > $2")
        .bind(course_id)
        .bind(old)
        .execute(&mut *tx)
        .await?;
    touch_course(&mut tx, course_id).await?;
    let job = super::stats::queue_recompute(&mut tx, course_id, caller.user_id()).await?;
    tx.commit().await?;
    services.jobs.dispatch(&job).await;
    Ok(())
}
