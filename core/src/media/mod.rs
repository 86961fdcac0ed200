//! Media: uploads straight to storage (presigned PUT or multipart, so no media byte passes through
//! the API), the checks that make an upload a media (size, real type from its first bytes), the
//! processing jobs (video: HLS ladder, poster, storyboard; image: thumbnails), playback through
//! short-lived signed URLs, and deletion.
//!
//! Object layout: `media/{id}/upload` is where the client puts the bytes (presigned PUT or
//! multipart); `/complete` copies it to `media/{id}/source` (a key no client ever gets a URL for),
//! removes the upload key and verifies the copy, so the bytes checked are the bytes processed,
//! whatever is PUT to the upload URL later. `media/{id}/v/` holds a video's outputs
//! (`master.m3u8`, one folder per rendition, `poster.*`, `storyboard.*`); `media/{id}/i/` an
//! image's (`thumbnail.*`, `preview.*`). Everything of a media lives under `media/{id}/`.

pub mod child;
pub mod image;
pub mod public;
pub mod sniff;
pub mod video;
pub mod workdir;

mod complete;
mod delete;
mod playback;
mod process;
mod upload;

pub use complete::*;
pub use delete::*;
pub use playback::*;
pub use process::*;
pub use upload::*;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::Services;
use crate::auth::{Principal, Role};
use crate::error::{Error, FieldErrors, Result};
use crate::jobs::{self, Job, JobError, JobReference, JobView};
use crate::storage::{PresignedRequest, StorageError};
use workdir::WorkDir;

/// What a file is, for the rules and the pipeline that apply to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Video,
    Image,
    Audio,
    Document,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Video => "video",
            Kind::Image => "image",
            Kind::Audio => "audio",
            Kind::Document => "document",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "video" => Some(Kind::Video),
            "image" => Some(Kind::Image),
            "audio" => Some(Kind::Audio),
            "document" => Some(Kind::Document),
            _ => None,
        }
    }
}

/// Why processing a file failed.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// The file itself is the problem; the message is for the person who uploaded it.
    #[error("{0}")]
    Invalid(String),
    /// The pipeline failed on a file it accepted (an encoder or muxer error).
    #[error("{0}")]
    Processing(String),
    /// Local disk trouble; worth another attempt.
    #[error("{0}")]
    Io(String),
    #[error("processing was cancelled")]
    Cancelled,
}

impl MediaError {
    pub fn io(e: std::io::Error) -> Self {
        MediaError::Io(e.to_string())
    }
}

impl From<MediaError> for JobError {
    fn from(e: MediaError) -> Self {
        match e {
            MediaError::Invalid(m) | MediaError::Processing(m) => JobError::Permanent(m),
            MediaError::Io(m) => JobError::Retryable(format!("local disk: {m}")),
            MediaError::Cancelled => JobError::Retryable("processing was cancelled".into()),
        }
    }
}

fn storage_job_error(e: StorageError) -> JobError {
    if e.is_transient() {
        JobError::Retryable(e.to_string())
    } else {
        JobError::Permanent(e.to_string())
    }
}

/// The smallest video side accepted.
pub const MIN_VIDEO_SIDE: u32 = 16;

/// Where the client uploads the bytes: writable through presigned URLs until they expire, so
/// nothing reads it after `/complete` has copied it away.
pub fn upload_key(id: Uuid) -> String {
    format!("media/{id}/upload")
}

/// The verified source: written only by Lectern (the copy made at `/complete`, or the API for
/// `POST /media`), the only object the processing jobs read.
pub fn source_key(id: Uuid) -> String {
    format!("media/{id}/source")
}

fn video_prefix(id: Uuid) -> String {
    format!("media/{id}/v/")
}

fn image_prefix(id: Uuid) -> String {
    format!("media/{id}/i/")
}

// ---------------------------------------------------------------------------------------------
// Views

/// A media as its owner (and those allowed to play it) sees it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MediaView {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub course_id: Option<Uuid>,
    pub section_id: Option<Uuid>,
    pub kind: Kind,
    /// pending (waiting for the upload), processing, ready or failed.
    pub state: String,
    /// A free preview: anyone may play it through `GET /media/{id}/preview` while it is in a
    /// section of a published course (set with `PATCH /media/{id}`).
    pub is_preview: bool,
    pub title: String,
    pub file_name: String,
    pub mime_type: String,
    pub size_bytes: i64,
    pub duration_secs: Option<f64>,
    pub width: Option<i32>,
    pub height: Option<i32>,
    pub rotation: Option<i32>,
    pub frame_rate: Option<f64>,
    pub video_codec: Option<String>,
    pub audio_codec: Option<String>,
    pub bit_rate: Option<i64>,
    pub has_audio: Option<bool>,
    /// The HLS ladder of a ready video (empty otherwise).
    #[schema(value_type = Vec<video::Rendition>)]
    pub renditions: serde_json::Value,
    #[schema(value_type = Option<video::Poster>)]
    pub poster: Option<serde_json::Value>,
    #[schema(value_type = Option<video::Storyboard>)]
    pub storyboard: Option<serde_json::Value>,
    /// A ready image's size, format and thumbnail sizes.
    #[schema(value_type = Option<Object>)]
    pub image: Option<serde_json::Value>,
    /// Why processing failed.
    pub error: Option<String>,
    pub upload_expires_at: Option<DateTime<Utc>>,
    pub job: Option<JobView>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub processed_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct MediaRow {
    id: Uuid,
    owner_id: Uuid,
    course_id: Option<Uuid>,
    section_id: Option<Uuid>,
    kind: String,
    state: String,
    is_preview: bool,
    title: String,
    file_name: String,
    mime_type: String,
    size_bytes: i64,
    duration_secs: Option<f64>,
    width: Option<i32>,
    height: Option<i32>,
    rotation: Option<i32>,
    frame_rate: Option<f64>,
    video_codec: Option<String>,
    audio_codec: Option<String>,
    bit_rate: Option<i64>,
    has_audio: Option<bool>,
    renditions: serde_json::Value,
    poster: Option<serde_json::Value>,
    storyboard: Option<serde_json::Value>,
    image: Option<serde_json::Value>,
    error: Option<String>,
    upload_expires_at: Option<DateTime<Utc>>,
    object_key: Option<String>,
    multipart_upload_id: Option<String>,
    job_id: Option<Uuid>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    processed_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str =
    "id, owner_id, course_id, section_id, kind, state, is_preview, title, file_name, mime_type,
    size_bytes, duration_secs, width, height, rotation, frame_rate, video_codec, audio_codec,
    bit_rate, has_audio, renditions, poster, storyboard, image, error, upload_expires_at,
    object_key, multipart_upload_id, job_id, created_at, updated_at, processed_at";

impl MediaRow {
    fn kind(&self) -> Kind {
        Kind::parse(&self.kind).unwrap_or(Kind::Document)
    }

    fn into_view(self, job: Option<JobView>) -> MediaView {
        MediaView {
            kind: self.kind(),
            id: self.id,
            owner_id: self.owner_id,
            course_id: self.course_id,
            section_id: self.section_id,
            state: self.state,
            is_preview: self.is_preview,
            title: self.title,
            file_name: self.file_name,
            mime_type: self.mime_type,
            size_bytes: self.size_bytes,
            duration_secs: self.duration_secs,
            width: self.width,
            height: self.height,
            rotation: self.rotation,
            frame_rate: self.frame_rate,
            video_codec: self.video_codec,
            audio_codec: self.audio_codec,
            bit_rate: self.bit_rate,
            has_audio: self.has_audio,
            renditions: self.renditions,
            poster: self.poster,
            storyboard: self.storyboard,
            image: self.image,
            error: self.error,
            upload_expires_at: self.upload_expires_at,
            job,
            created_at: self.created_at,
            updated_at: self.updated_at,
            processed_at: self.processed_at,
        }
    }
}

async fn load(conn: &mut PgConnection, id: Uuid, lock: bool) -> Result<Option<MediaRow>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM media WHERE id = $1 AND deleted_at IS NULL{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    Ok(sqlx::query_as::<_, MediaRow>(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(conn)
        .await?)
}

async fn view(services: &Services, row: MediaRow) -> Result<MediaView> {
    let job = match row.job_id {
        Some(job_id) => jobs::get(&services.db, job_id).await?,
        None => None,
    };
    Ok(row.into_view(job))
}

fn is_owner(caller: &Principal, row: &MediaRow) -> bool {
    caller.is_admin() || caller.user_id() == Some(row.owner_id)
}

/// The owner, admins, and students enrolled (active or completed) in the media's course.
async fn may_view(services: &Services, caller: &Principal, row: &MediaRow) -> Result<bool> {
    if is_owner(caller, row) {
        return Ok(true);
    }
    let (Some(user), Some(course)) = (caller.user_id(), row.course_id) else {
        return Ok(false);
    };
    let enrolled: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM enrollments
                         WHERE user_id = $1 AND course_id = $2 AND status IN ('active', 'completed'))",
    )
    .bind(user)
    .bind(course)
    .fetch_one(&services.db)
    .await?;
    Ok(enrolled)
}

/// `GET /media/{id}`: state, metadata, renditions and job.
pub async fn get(services: &Services, caller: &Principal, id: Uuid) -> Result<MediaView> {
    let mut conn = services.db.acquire().await?;
    let row = load(&mut conn, id, false)
        .await?
        .ok_or(Error::NotFound("media"))?;
    drop(conn);
    if !may_view(services, caller, &row).await? {
        return Err(Error::NotFound("media"));
    }
    view(services, row).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn playlist_uris_are_rewritten_and_tags_kept() {
        let text = "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\n720p/index.m3u8\n";
        let out = rewrite_uris(text, |u| Some(format!("{u}?token=t")));
        assert_eq!(
            out,
            "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\n720p/index.m3u8?token=t\n"
        );
        assert!(is_plain_name("seg_00001.ts"));
        assert!(!is_plain_name("../source"));
        assert!(!is_plain_name("a/b.ts"));
    }

    #[test]
    fn content_must_match_the_declared_type() {
        let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
        let err = check_content(png, "video/mp4", Kind::Video).expect_err("refused");
        assert!(err.contains("PNG image"), "{err}");
        assert!(check_content(b"random bytes", "video/mp4", Kind::Video).is_err());
        assert!(check_content(png, "image/png", Kind::Image).is_ok());
    }
}
