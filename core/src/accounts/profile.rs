//! An instructor's public profile: what a visitor sees without an account.

use serde::Serialize;
use uuid::Uuid;

use crate::Services;
use crate::courses::catalog::{self, CourseCard, SearchParams};
use crate::error::{Error, Result};

/// How many published courses the profile lists, newest first; the rest are a catalogue search
/// away (`GET /courses?instructor={id}`).
pub const PROFILE_COURSES: i64 = 100;

/// `GET /users/{id}`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PublicProfile {
    pub id: Uuid,
    pub name: String,
    pub bio: String,
    /// Active accounts following the instructor.
    pub follower_count: i64,
    /// The instructor's published courses, newest first (at most 100; page through the rest with
    /// `GET /courses?instructor={id}`).
    pub courses: Vec<CourseCard>,
}

#[derive(sqlx::FromRow)]
struct ProfileRow {
    full_name: String,
    bio: String,
    follower_count: i64,
}

/// The public profile of an active instructor (the accounts that can be followed); any other
/// account, suspended or deleted, is 404, as if it did not exist.
#[tracing::instrument(skip_all, fields(user_id = %id))]
pub async fn public_profile(services: &Services, id: Uuid) -> Result<PublicProfile> {
    let row: Option<ProfileRow> = sqlx::query_as(
        "SELECT u.full_name, u.bio,
                (SELECT count(*) FROM follows f JOIN users fu ON fu.id = f.follower_id
                  WHERE f.instructor_id = u.id AND fu.status = 'active') AS follower_count
           FROM users u
          WHERE u.id = $1 AND u.role = 'instructor' AND u.status = 'active'",
    )
    .bind(id)
    .fetch_optional(&services.db)
    .await?;
    let row = row.ok_or(Error::NotFound("instructor"))?;
    let courses = catalog::search(
        services,
        &SearchParams {
            instructor: Some(id.to_string()),
            order_by: Some("newest".into()),
            limit: Some(PROFILE_COURSES.to_string()),
            ..SearchParams::default()
        },
    )
    .await?
    .items;
    Ok(PublicProfile {
        id,
        name: row.full_name,
        bio: row.bio,
        follower_count: row.follower_count,
        courses,
    })
}
