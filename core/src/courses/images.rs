//! Course images an anonymous visitor's plain `<img>` can load (it sends no `Authorization`).
//!
//! Cards and course pages carry stable API URLs (`/api/v1/courses/{id}/thumbnail`), not
//! presigned storage URLs: a presigned URL changes on every request and dies after
//! `MEDIA_URL_TTL_SECS`, which would make every search answer uncacheable and every page left
//! open show broken images. The stable URL answers a 302 to a fresh presigned URL of the picture,
//! cacheable for half the presigned URL's life. The `v` parameter names the image, so a new
//! thumbnail is a new URL and no cache serves the old one.

use std::time::Duration;

use uuid::Uuid;

use crate::Services;
use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::links;
use crate::media::public::{self, ImageFormat, ImageVariant};

/// The stable URL of a course's thumbnail (at most 300 × 300), when it has one.
pub fn thumbnail_url(services: &Services, course_id: Uuid, image: Option<Uuid>) -> Option<String> {
    image.map(|v| {
        links::api_path(
            &services.config,
            &format!("/courses/{course_id}/thumbnail?v={}", v.simple()),
        )
    })
}

/// The stable URL of the larger picture of a course's thumbnail image (at most 1280 on its long
/// side), for the course page.
pub fn preview_image_url(
    services: &Services,
    course_id: Uuid,
    image: Option<Uuid>,
) -> Option<String> {
    image.map(|v| {
        links::api_path(
            &services.config,
            &format!(
                "/courses/{course_id}/thumbnail?variant=preview&v={}",
                v.simple()
            ),
        )
    })
}

/// Where `GET /courses/{id}/thumbnail` sends the browser, and for how long it may remember it.
#[derive(Debug, Clone)]
pub struct ImageRedirect {
    /// A presigned storage URL of the picture.
    pub url: String,
    /// The course is public, so shared caches may keep the redirect; otherwise nobody may.
    pub public: bool,
    /// How long the redirect may be cached: half the presigned URL's life (at most an hour), so
    /// a cached redirect never points at an expired URL.
    pub max_age: Duration,
}

#[derive(sqlx::FromRow)]
struct ImageOf {
    image_id: Uuid,
    published: bool,
    instructor_id: Uuid,
}

/// `GET /courses/{id}/thumbnail`: the course's thumbnail image, processed and ready, for anyone
/// when the course is published, else only for its instructor and admins. 404 otherwise (no such
/// course, no thumbnail, not processed yet, or not visible to the caller).
#[tracing::instrument(skip_all, fields(course_id = %course_id))]
pub async fn image(
    services: &Services,
    caller: Option<&Principal>,
    course_id: Uuid,
    variant: ImageVariant,
    format: ImageFormat,
) -> Result<ImageRedirect> {
    let found: Option<ImageOf> = sqlx::query_as(
        "SELECT m.id AS image_id, c.status = 'published' AS published, c.instructor_id
           FROM courses c
           JOIN media m ON m.id = c.thumbnail_media_id AND m.kind = 'image' AND m.state = 'ready'
                       AND m.deleted_at IS NULL
          WHERE c.id = $1 AND c.deleted_at IS NULL",
    )
    .bind(course_id)
    .fetch_optional(&services.db)
    .await?;
    let found = found.ok_or(Error::NotFound("thumbnail"))?;
    let owner = caller.is_some_and(|p| p.is_admin() || p.user_id() == Some(found.instructor_id));
    if !(found.published || owner) {
        return Err(Error::NotFound("thumbnail"));
    }
    let ttl = services.config.media.url_ttl;
    let url = public::picture_url(services, found.image_id, variant, format, ttl).await?;
    Ok(ImageRedirect {
        url,
        public: found.published,
        max_age: (ttl / 2).min(Duration::from_secs(3600)),
    })
}
