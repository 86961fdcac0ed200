//! What a visitor gets without an account: free previews (a video its course's instructor marked,
//! played through the same signed URLs enrolled students get) and the pictures of an image, for
//! the course images a plain `<img>` loads.

use std::time::Duration;

use serde::Deserialize;
use uuid::Uuid;

use super::{Kind, MediaView, Playback, image_prefix, is_owner, load, signed_playback, view};
use crate::Services;
use crate::auth::Principal;
use crate::error::{Error, Result};

/// `PATCH /media/{id}`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MediaPatch {
    /// `true` makes a video in a section of the caller's course a free preview; `false` ends it.
    pub is_preview: bool,
}

/// `PATCH /media/{id}`: the instructor of the course the media is in (or its owner, or an admin)
/// marks a video as a free preview, or unmarks it. Anyone else gets 404, as for every media that
/// is not theirs. Only a video in a live section of a course can be a preview (422 otherwise).
#[tracing::instrument(skip_all, fields(media_id = %id))]
pub async fn update(
    services: &Services,
    caller: &Principal,
    id: Uuid,
    patch: &MediaPatch,
) -> Result<MediaView> {
    let is_preview = patch.is_preview;
    let mut tx = services.db.begin().await?;
    let row = load(&mut tx, id, true)
        .await?
        .ok_or(Error::NotFound("media"))?;
    // The course the media is in, and whether its section is a live section of that course.
    let placement: Option<(Uuid, bool)> = match row.course_id {
        Some(course_id) => {
            sqlx::query_as(
                "SELECT c.instructor_id, (s.id IS NOT NULL) AS in_section
                   FROM courses c
                   LEFT JOIN sections s ON s.id = $2 AND s.course_id = c.id AND s.deleted_at IS NULL
                  WHERE c.id = $1 AND c.deleted_at IS NULL",
            )
            .bind(course_id)
            .bind(row.section_id)
            .fetch_optional(&mut *tx)
            .await?
        }
        None => None,
    };
    let teaches = placement.is_some_and(|(instructor, _)| caller.user_id() == Some(instructor));
    if !(is_owner(caller, &row) || teaches) {
        return Err(Error::NotFound("media"));
    }
    if is_preview {
        if row.kind() != Kind::Video {
            return Err(Error::invalid(
                "is_preview",
                format!(
                    "only videos can be free previews; this media is {}",
                    row.kind
                ),
            ));
        }
        if !placement.is_some_and(|(_, in_section)| in_section) {
            return Err(Error::invalid(
                "is_preview",
                "only a video in a section of a course can be a free preview; place it in a section first",
            ));
        }
    }
    sqlx::query("UPDATE media SET is_preview = $2, updated_at = now() WHERE id = $1")
        .bind(id)
        .bind(is_preview)
        .execute(&mut *tx)
        .await?;
    let row = load(&mut tx, id, false)
        .await?
        .ok_or(Error::NotFound("media"))?;
    tx.commit().await?;
    tracing::info!(media_id = %id, is_preview, "free preview changed");
    view(services, row).await
}

/// `GET /media/{id}/preview`, no login: the signed playback of a free preview, the same as
/// `GET /media/{id}/playback` gives those allowed to play it. Only for a ready video marked as a
/// preview, in a live section of a published course; anything else is 404, as if it did not
/// exist. The HLS playlists and segments that follow need only the signed token.
#[tracing::instrument(skip_all, fields(media_id = %id))]
pub async fn preview(services: &Services, id: Uuid) -> Result<Playback> {
    let open: bool = sqlx::query_scalar(
        "SELECT EXISTS (
             SELECT 1 FROM media m
               JOIN sections s ON s.id = m.section_id AND s.course_id = m.course_id
                              AND s.deleted_at IS NULL
               JOIN courses c ON c.id = m.course_id AND c.status = 'published'
                             AND c.deleted_at IS NULL
              WHERE m.id = $1 AND m.is_preview AND m.kind = 'video' AND m.state = 'ready'
                AND m.deleted_at IS NULL)",
    )
    .bind(id)
    .fetch_one(&services.db)
    .await?;
    if !open {
        return Err(Error::NotFound("media"));
    }
    let mut conn = services.db.acquire().await?;
    let row = load(&mut conn, id, false)
        .await?
        .ok_or(Error::NotFound("media"))?;
    drop(conn);
    signed_playback(services, &row).await
}

/// The pictures the image pipeline makes of every image (see `media::image`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ImageVariant {
    /// At most 300 × 300.
    #[default]
    Thumbnail,
    /// At most 1280 on its long side.
    Preview,
}

impl ImageVariant {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageVariant::Thumbnail => "thumbnail",
            ImageVariant::Preview => "preview",
        }
    }
}

/// Each picture exists as JPEG and as WebP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ImageFormat {
    #[default]
    Jpeg,
    Webp,
}

impl ImageFormat {
    fn extension(self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "jpg",
            ImageFormat::Webp => "webp",
        }
    }
}

/// A presigned URL of one picture of a processed image. The caller checks who may see it.
pub async fn picture_url(
    services: &Services,
    image_id: Uuid,
    variant: ImageVariant,
    format: ImageFormat,
    ttl: Duration,
) -> Result<String> {
    let key = format!(
        "{}{}.{}",
        image_prefix(image_id),
        variant.as_str(),
        format.extension()
    );
    Ok(services.storage.presign_get(&key, ttl).await?.url)
}
