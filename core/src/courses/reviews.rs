//! Reviews: one per enrolled student and course (a second submission edits the first), with a
//! reply from the instructor. Ratings reach the course's counters through the statistics job.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{load_visible, stats};
use crate::Services;
use crate::auth::Principal;
use crate::error::{Error, FieldErrors, Result};
use crate::page::{self, Page};

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ReviewView {
    pub id: Uuid,
    pub course_id: Uuid,
    pub user_id: Uuid,
    pub author_name: String,
    pub rating: i16,
    pub body: String,
    pub reply: Option<String>,
    pub replied_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

macro_rules! review_select {
    () => {
        "SELECT r.id, r.course_id, r.user_id, u.full_name AS author_name, r.rating, r.body, r.reply, r.replied_at,
                r.created_at, r.updated_at
           FROM reviews r JOIN users u ON u.id = r.user_id "
    };
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewInput {
    /// 1 to 5 stars.
    pub rating: i64,
    #[serde(default)]
    pub body: String,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplyInput {
    pub reply: String,
}

/// A course's reviews, newest first.
pub async fn list(
    services: &Services,
    caller: Option<&Principal>,
    course: &str,
    limit: Option<i64>,
    cursor: Option<&str>,
) -> Result<Page<ReviewView>> {
    let mut conn = services.db.acquire().await?;
    let course = load_visible(&mut conn, caller, course).await?;
    let limit = page::limit(limit);
    let after: Option<(DateTime<Utc>, Uuid)> = cursor
        .map(|c| page::decode_cursor(&services.config.jwt_secret, c))
        .transpose()?;
    let items: Vec<ReviewView> = sqlx::query_as(concat!(
        review_select!(),
        "WHERE r.course_id = $1 AND r.deleted_at IS NULL
           AND ($2::timestamptz IS NULL OR (r.created_at, r.id) < ($2, $3))
         ORDER BY r.created_at DESC, r.id DESC LIMIT $4"
    ))
    .bind(course.id)
    .bind(after.map(|a| a.0))
    .bind(after.map(|a| a.1))
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    let next_cursor = (items.len() as i64 == limit)
        .then(|| {
            items
                .last()
                .map(|r| page::encode_cursor(&services.config.jwt_secret, &(r.created_at, r.id)))
        })
        .flatten();
    Ok(Page { items, next_cursor })
}

/// Writes the caller's review of a course (creating or editing it). Only students enrolled in
/// the course (active or completed) may review it. Returns the review and whether it is new.
pub async fn submit(
    services: &Services,
    caller: &Principal,
    course: &str,
    input: &ReviewInput,
) -> Result<(ReviewView, bool)> {
    let user = caller.require_user()?;
    let mut fields = FieldErrors::new();
    if !(1..=5).contains(&input.rating) {
        fields.add("rating", "must be a whole number from 1 to 5");
    }
    let body = input.body.trim();
    if body.chars().count() > 5000 {
        fields.add("body", "must be at most 5000 characters");
    }
    fields.into_result()?;
    let mut tx = services.db.begin().await?;
    let course = load_visible(&mut tx, Some(caller), course).await?;
    let enrolled: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM enrollments WHERE user_id = $1 AND course_id = $2 AND status IN ('active', 'completed'))",
    )
    .bind(user.id)
    .bind(course.id)
    .fetch_one(&mut *tx)
    .await?;
    if !enrolled {
        return Err(Error::Forbidden {
            code: "not_enrolled",
            message: "only students enrolled in this course can review it".into(),
        });
    }
    let (id, inserted): (Uuid, bool) = sqlx::query_as(
        "INSERT INTO reviews (id, course_id, user_id, rating, body) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (course_id, user_id) DO UPDATE
            SET rating = excluded.rating, body = excluded.body, deleted_at = NULL, updated_at = now()
         RETURNING id, (xmax = 0)",
    )
    .bind(Uuid::now_v7())
    .bind(course.id)
    .bind(user.id)
    .bind(input.rating as i16)
    .bind(body)
    .fetch_one(&mut *tx)
    .await?;
    let job = stats::queue_recompute(&mut tx, course.id, Some(user.id)).await?;
    let review: ReviewView = sqlx::query_as(concat!(review_select!(), "WHERE r.id = $1"))
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    services.jobs.dispatch(&job).await;
    Ok((review, inserted))
}

/// The course's instructor answers a review (replacing any earlier reply).
pub async fn reply(
    services: &Services,
    caller: &Principal,
    review_id: Uuid,
    input: &ReplyInput,
) -> Result<ReviewView> {
    let text = input.reply.trim();
    if text.is_empty() || text.chars().count() > 5000 {
        return Err(Error::invalid("reply", "must be 1 to 5000 characters"));
    }
    let mut tx = services.db.begin().await?;
    let course_id: Option<Uuid> =
        sqlx::query_scalar("SELECT course_id FROM reviews WHERE id = $1 AND deleted_at IS NULL")
            .bind(review_id)
            .fetch_optional(&mut *tx)
            .await?;
    let course_id = course_id.ok_or(Error::NotFound("review"))?;
    super::load_for_edit(&mut tx, caller, course_id).await?;
    sqlx::query("UPDATE reviews SET reply = $2, replied_at = now() WHERE id = $1")
        .bind(review_id)
        .bind(text)
        .execute(&mut *tx)
        .await?;
    let review: ReviewView = sqlx::query_as(concat!(review_select!(), "WHERE r.id = $1"))
        .bind(review_id)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(review)
}
