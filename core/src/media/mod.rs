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

pub mod image;
pub mod public;
pub mod sniff;
pub mod video;
pub mod workdir;

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
use crate::config::ExposeSecret;
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

// ---------------------------------------------------------------------------------------------
// Uploads

/// `POST /media/uploads`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct StartUpload {
    pub file_name: Option<String>,
    pub file_size: Option<i64>,
    pub mime_type: Option<String>,
    pub course_id: Option<Uuid>,
    pub section_id: Option<Uuid>,
    pub title: Option<String>,
}

/// One part of a multipart upload: PUT its bytes to `url`, keep the `ETag` it answers.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PartUpload {
    pub part_number: i32,
    pub method: String,
    pub url: String,
}

/// How the client sends the file, then completes the upload.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UploadInstructions {
    /// `put`: one PUT of the whole file. `multipart`: every part, then complete with the ETags.
    pub method: String,
    /// For `put`.
    pub request: Option<PresignedRequest>,
    /// For `multipart`: every part has this size except the last.
    pub part_size: Option<u64>,
    pub parts: Vec<PartUpload>,
    /// `POST` here when the bytes are sent (with `{"parts": [{part_number, etag}]}` for multipart).
    pub complete_url: String,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UploadStarted {
    pub media: MediaView,
    pub upload: UploadInstructions,
}

/// Checks the declared name, size and type against the configuration; returns the kind.
fn check_declared(
    services: &Services,
    file_name: Option<&str>,
    size: Option<i64>,
    mime: Option<&str>,
    max_override: Option<u64>,
) -> Result<(Kind, String, String, u64)> {
    let media = &services.config.media;
    let mut fields = FieldErrors::new();
    let name = file_name.map(str::trim).unwrap_or_default();
    let name = name
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or_default()
        .to_owned();
    if name.is_empty() {
        fields.add("file_name", "is required");
    } else if name.chars().count() > 255 || name.chars().any(char::is_control) {
        fields.add(
            "file_name",
            "must be at most 255 characters, without control characters",
        );
    }
    let mime = mime
        .map(|m| m.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let kind = if mime.is_empty() {
        fields.add("mime_type", "is required");
        None
    } else {
        match media.kind_of(&mime).and_then(Kind::parse) {
            Some(kind) => Some(kind),
            None => {
                let all: Vec<&str> = media
                    .allowed_types
                    .values()
                    .flatten()
                    .map(String::as_str)
                    .collect();
                fields.add(
                    "mime_type",
                    format!("{mime} is not accepted; accepted types: {}", all.join(", ")),
                );
                None
            }
        }
    };
    let size = match size {
        None => {
            fields.add("file_size", "is required");
            0
        }
        Some(s) if s <= 0 => {
            fields.add("file_size", "must be a positive number of bytes");
            0
        }
        Some(s) => s as u64,
    };
    if let Some(kind) = kind {
        let max = media.max_bytes.get(kind.as_str()).copied().unwrap_or(0);
        let max = max_override.map_or(max, |o| o.min(max));
        if size > max {
            fields.add(
                "file_size",
                format!(
                    "{size} bytes is more than the {max} bytes accepted for a {} file",
                    kind.as_str()
                ),
            );
        }
    }
    fields.into_result()?;
    let kind = kind.ok_or_else(|| Error::invalid("mime_type", "is required"))?;
    Ok((kind, name, mime, size))
}

/// The course and section a media is attached to, checked against the caller (404 when the
/// caller may not see them).
async fn check_placement(
    services: &Services,
    caller: &Principal,
    course_id: Option<Uuid>,
    section_id: Option<Uuid>,
) -> Result<(Option<Uuid>, Option<Uuid>)> {
    let user = caller.user_id();
    let owns = |instructor: Uuid| caller.is_admin() || user == Some(instructor);
    let mut course = course_id;
    if let Some(section) = section_id {
        let found: Option<(Uuid, Uuid)> = sqlx::query_as(
            "SELECT s.course_id, c.instructor_id FROM sections s JOIN courses c ON c.id = s.course_id
              WHERE s.id = $1 AND s.deleted_at IS NULL AND c.deleted_at IS NULL",
        )
        .bind(section)
        .fetch_optional(&services.db)
        .await?;
        let (section_course, instructor) = found
            .filter(|(_, instructor)| owns(*instructor))
            .ok_or(Error::NotFound("section"))?;
        if course.is_some_and(|c| c != section_course) {
            return Err(Error::invalid(
                "section_id",
                "the section is not in this course",
            ));
        }
        let _ = instructor;
        course = Some(section_course);
    }
    if let Some(c) = course {
        let instructor: Option<Uuid> = sqlx::query_scalar(
            "SELECT instructor_id FROM courses WHERE id = $1 AND deleted_at IS NULL",
        )
        .bind(c)
        .fetch_optional(&services.db)
        .await?;
        if !instructor.is_some_and(owns) {
            return Err(Error::NotFound("course"));
        }
    }
    Ok((course, section_id))
}

fn require_uploader(caller: &Principal) -> Result<Uuid> {
    let user = caller.require_user()?;
    if !matches!(user.role, Role::Instructor | Role::Admin) {
        return Err(Error::Forbidden {
            code: "instructors_only",
            message: "only instructors upload media".into(),
        });
    }
    Ok(user.id)
}

/// Only an instructor whose email is verified uploads videos: a video costs minutes of
/// transcoding, and an account nobody can be reached at should not be able to spend them.
fn require_verified_for(caller: &Principal, kind: Kind) -> Result<()> {
    let user = caller.require_user()?;
    if kind == Kind::Video && !user.email_verified {
        return Err(Error::Forbidden {
            code: "email_unverified",
            message: "verify your email address before uploading videos".into(),
        });
    }
    Ok(())
}

/// The per-user upload quotas (uploads not completed yet, their declared bytes, and the bytes of
/// every media the user keeps), with `size` more bytes about to be added. Run it under
/// [`lock_quota`] in the transaction that records the upload so concurrent starts cannot both fit.
async fn check_quota(
    conn: &mut PgConnection,
    services: &Services,
    owner: Uuid,
    size: u64,
) -> Result<()> {
    let media = &services.config.media;
    let (pending, pending_bytes, stored_bytes): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE state = 'pending'),
                coalesce(sum(size_bytes) FILTER (WHERE state = 'pending'), 0)::int8,
                coalesce(sum(size_bytes), 0)::int8
           FROM media WHERE owner_id = $1 AND deleted_at IS NULL",
    )
    .bind(owner)
    .fetch_one(conn)
    .await?;
    let as_u64 = |n: i64| u64::try_from(n).unwrap_or(0);
    let refuse = |message: String| Error::Conflict {
        code: "upload_quota_exceeded",
        message,
    };
    if as_u64(pending) >= media.quota_pending_uploads {
        return Err(refuse(format!(
            "you have {pending} uploads not completed yet, the most allowed at once; complete or delete one first"
        )));
    }
    if as_u64(pending_bytes).saturating_add(size) > media.quota_pending_bytes {
        return Err(refuse(format!(
            "your uploads not completed yet hold {pending_bytes} bytes; with {size} more they would exceed the {} bytes allowed",
            media.quota_pending_bytes
        )));
    }
    if as_u64(stored_bytes).saturating_add(size) > media.quota_stored_bytes {
        return Err(refuse(format!(
            "your media take {stored_bytes} bytes; with {size} more they would exceed your {} bytes of storage",
            media.quota_stored_bytes
        )));
    }
    Ok(())
}

/// Serialises quota checks of one user until the transaction ends.
async fn lock_quota(conn: &mut PgConnection, owner: Uuid) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('media_quota:' || $1::text, 0))")
        .bind(owner)
        .execute(conn)
        .await?;
    Ok(())
}

/// A media row about to be inserted as `pending`.
struct PendingMedia<'a> {
    id: Uuid,
    owner: Uuid,
    course_id: Option<Uuid>,
    section_id: Option<Uuid>,
    kind: Kind,
    title: &'a str,
    file_name: &'a str,
    mime: &'a str,
    size: u64,
    key: &'a str,
    multipart_upload_id: Option<&'a str>,
    upload_expires_at: Option<DateTime<Utc>>,
}

/// Inserts a pending media row under the owner's quota lock, checking the quotas again inside the
/// transaction so two uploads started at once cannot both slip past them.
async fn insert_pending(services: &Services, m: &PendingMedia<'_>) -> Result<()> {
    let mut tx = services.db.begin().await?;
    lock_quota(&mut tx, m.owner).await?;
    check_quota(&mut tx, services, m.owner, m.size).await?;
    sqlx::query(
        "INSERT INTO media (id, owner_id, course_id, section_id, kind, state, title, file_name,
                            mime_type, size_bytes, object_key, multipart_upload_id, upload_expires_at)
         VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(m.id)
    .bind(m.owner)
    .bind(m.course_id)
    .bind(m.section_id)
    .bind(m.kind.as_str())
    .bind(m.title)
    .bind(m.file_name)
    .bind(m.mime)
    .bind(i64::try_from(m.size).map_err(Error::internal)?)
    .bind(m.key)
    .bind(m.multipart_upload_id)
    .bind(m.upload_expires_at)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

fn complete_url(id: Uuid) -> String {
    format!("/api/v1/media/uploads/{id}/complete")
}

/// `POST /media/uploads`: records the media and answers with presigned request(s) for the bytes.
#[tracing::instrument(skip_all, fields(media_id))]
pub async fn start_upload(
    services: &Services,
    caller: &Principal,
    input: StartUpload,
) -> Result<UploadStarted> {
    let owner = require_uploader(caller)?;
    let (kind, file_name, mime, size) = check_declared(
        services,
        input.file_name.as_deref(),
        input.file_size,
        input.mime_type.as_deref(),
        None,
    )?;
    require_verified_for(caller, kind)?;
    let (course_id, section_id) =
        check_placement(services, caller, input.course_id, input.section_id).await?;
    // Fail fast before any storage work; checked again under the lock when the row is recorded.
    check_quota(&mut *services.db.acquire().await?, services, owner, size).await?;
    let media = &services.config.media;
    let id = Uuid::now_v7();
    tracing::Span::current().record("media_id", tracing::field::display(id));
    let key = upload_key(id);
    let ttl = media.url_ttl;
    let expires_at =
        Utc::now() + chrono::Duration::from_std(media.upload_expiry).unwrap_or_default();
    let title = input.title.unwrap_or_else(|| file_name.clone());
    if title.chars().count() > 200 {
        return Err(Error::invalid("title", "must be at most 200 characters"));
    }

    let (instructions, upload_id) = if size >= media.multipart_threshold {
        let mut part_size = media.part_size;
        if size.div_ceil(part_size) > 10_000 {
            part_size = size.div_ceil(10_000).div_ceil(1024 * 1024) * 1024 * 1024;
        }
        let count = size.div_ceil(part_size);
        let upload_id = services.storage.create_multipart(&key, &mime).await?;
        let mut parts = Vec::with_capacity(count as usize);
        for n in 1..=count {
            // Every part but the last is `part_size`; each URL is signed for its exact length.
            let length = part_size.min(size - (n - 1) * part_size);
            let n = i32::try_from(n).map_err(Error::internal)?;
            let p = services
                .storage
                .presign_upload_part(&key, &upload_id, n, length, ttl)
                .await?;
            parts.push(PartUpload {
                part_number: n,
                method: p.method,
                url: p.url,
            });
        }
        (
            UploadInstructions {
                method: "multipart".into(),
                request: None,
                part_size: Some(part_size),
                parts,
                complete_url: complete_url(id),
                expires_at,
            },
            Some(upload_id),
        )
    } else {
        let request = services.storage.presign_put(&key, &mime, size, ttl).await?;
        (
            UploadInstructions {
                method: "put".into(),
                request: Some(request),
                part_size: None,
                parts: Vec::new(),
                complete_url: complete_url(id),
                expires_at,
            },
            None,
        )
    };
    let inserted = insert_pending(
        services,
        &PendingMedia {
            id,
            owner,
            course_id,
            section_id,
            kind,
            title: &title,
            file_name: &file_name,
            mime: &mime,
            size,
            key: &key,
            multipart_upload_id: upload_id.as_deref(),
            upload_expires_at: Some(expires_at),
        },
    )
    .await;
    if let Err(e) = inserted {
        if let Some(upload_id) = &upload_id {
            let _ = services.storage.abort_multipart(&key, upload_id).await;
        }
        return Err(e);
    }
    tracing::info!(
        kind = kind.as_str(),
        size,
        multipart = upload_id.is_some(),
        "upload started"
    );
    let mut conn = services.db.acquire().await?;
    let row = load(&mut conn, id, false)
        .await?
        .ok_or(Error::NotFound("media"))?;
    Ok(UploadStarted {
        media: row.into_view(None),
        upload: instructions,
    })
}

/// `POST /media/uploads/{id}/complete` body: the parts of a multipart upload.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
pub struct CompleteUpload {
    #[serde(default)]
    pub parts: Option<Vec<CompletedPart>>,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct CompletedPart {
    pub part_number: i32,
    pub etag: String,
}

/// The outcome of completing an upload: the processing job (none for audio and documents, which
/// are ready at once) and the media.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UploadCompleted {
    pub job: Option<JobReference>,
    pub media: MediaView,
}

/// Marks a media failed with a reason; its source object is removed (nothing half-written stays).
async fn refuse_upload(services: &Services, id: Uuid, key: &str, reason: &str) -> Result<()> {
    if let Err(e) = services.storage.delete(key).await {
        tracing::warn!(error = %e, "could not remove a refused upload; the sweep will");
    }
    sqlx::query(
        "UPDATE media SET state = 'failed', error = $2, multipart_upload_id = NULL,
                          upload_expires_at = NULL, updated_at = now()
          WHERE id = $1",
    )
    .bind(id)
    .bind(reason)
    .execute(&services.db)
    .await?;
    Ok(())
}

/// `POST /media/uploads/{id}/complete`: checks the object exists with the declared size and the
/// declared type (sniffed from its first bytes), then starts processing. Completing again
/// answers with the same job.
#[tracing::instrument(skip_all, fields(media_id = %id))]
pub async fn complete_upload(
    services: &Services,
    caller: &Principal,
    id: Uuid,
    input: CompleteUpload,
) -> Result<UploadCompleted> {
    let mut conn = services.db.acquire().await?;
    let row = load(&mut conn, id, false)
        .await?
        .filter(|r| is_owner(caller, r))
        .ok_or(Error::NotFound("upload"))?;
    drop(conn);
    if row.state != "pending" {
        let job = match row.job_id {
            Some(j) => jobs::get(&services.db, j).await?.map(|v| JobReference {
                id: v.id,
                kind: v.kind.clone(),
                state: v.state,
            }),
            None => None,
        };
        if row.state == "failed" && job.is_none() {
            return Err(Error::Conflict {
                code: "upload_refused",
                message: row
                    .error
                    .unwrap_or_else(|| "this upload was refused".to_owned()),
            });
        }
        let media = view(services, row).await?;
        return Ok(UploadCompleted { job, media });
    }
    let key = row.object_key.clone().unwrap_or_else(|| upload_key(id));
    if let Some(upload_id) = &row.multipart_upload_id {
        let parts = input.parts.unwrap_or_default();
        if parts.is_empty() {
            return Err(Error::invalid(
                "parts",
                "list every uploaded part with its part_number and the etag its PUT answered",
            ));
        }
        let parts: Vec<(i32, String)> =
            parts.into_iter().map(|p| (p.part_number, p.etag)).collect();
        check_parts_total(services, &row, &key, upload_id, &parts).await?;
        match services
            .storage
            .complete_multipart(&key, upload_id, &parts)
            .await
        {
            Ok(()) => {}
            Err(StorageError::Unavailable(e)) => {
                return Err(StorageError::Unavailable(e).into());
            }
            Err(e) => {
                // Parts missing or an ETag wrong: the client may upload again and retry.
                return Err(Error::Conflict {
                    code: "upload_incomplete",
                    message: format!("the parts could not be assembled: {e}"),
                });
            }
        }
        sqlx::query(
            "UPDATE media SET multipart_upload_id = NULL, updated_at = now() WHERE id = $1",
        )
        .bind(id)
        .execute(&services.db)
        .await?;
    }
    // Every check below reads the frozen copy, the object processing reads too.
    let source = source_key(id);
    if key != source {
        freeze_upload(services, id, &key, &source).await?;
    }
    let Some(info) = services.storage.head(&source).await? else {
        return Err(not_uploaded());
    };
    let declared = u64::try_from(row.size_bytes).unwrap_or(0);
    if info.size != declared {
        let reason = format!(
            "the uploaded file has {} bytes, not the {declared} bytes declared",
            info.size
        );
        refuse_upload(services, id, &source, &reason).await?;
        return Err(Error::invalid("file_size", reason));
    }
    let head = services.storage.get_head(&source, sniff::SNIFF_LEN).await?;
    let kind = row.kind();
    if let Err(reason) = check_content(&head, &row.mime_type, kind) {
        refuse_upload(services, id, &source, &reason).await?;
        return Err(Error::invalid("file", reason));
    }
    start_processing(services, id, kind, caller.user_id()).await
}

fn not_uploaded() -> Error {
    Error::Conflict {
        code: "upload_incomplete",
        message: "the file has not been uploaded yet: send it to the upload URL first".into(),
    }
}

/// Copies the uploaded object to the media's source key and removes the upload key. A presigned
/// PUT cannot be revoked: the client may write the upload key again until its URL expires, so
/// what `/complete` checks and the jobs process is this copy, which no client can write. The row
/// stays locked meanwhile, so concurrent completions freeze once.
async fn freeze_upload(services: &Services, id: Uuid, upload: &str, source: &str) -> Result<()> {
    let mut tx = services.db.begin().await?;
    let row = load(&mut tx, id, true)
        .await?
        .ok_or(Error::NotFound("upload"))?;
    if row.state != "pending" || row.object_key.as_deref() == Some(source) {
        // Frozen by a concurrent completion.
        return Ok(());
    }
    let Some(info) = services.storage.head(upload).await? else {
        return Err(not_uploaded());
    };
    match services.storage.copy(upload, source, info.size).await {
        Ok(()) => {}
        Err(StorageError::NotFound(_)) => return Err(not_uploaded()),
        Err(e) => return Err(e.into()),
    }
    // The URL was signed before the row was inserted, so it is dead `url_ttl` after `created_at`.
    sqlx::query(
        "UPDATE media SET object_key = $2, updated_at = now(),
                upload_key_sweep_at = created_at + make_interval(secs => $3) + interval '30 seconds'
          WHERE id = $1",
    )
    .bind(id)
    .bind(source)
    .bind(services.config.media.url_ttl.as_secs_f64())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    // Strays a later PUT recreates here go with the media (deletion removes `media/{id}/`).
    if let Err(e) = services.storage.delete(upload).await {
        tracing::warn!(error = %e, "could not remove the upload key after freezing it");
    }
    Ok(())
}

/// The parts named at completion must add up to the declared size, before anything is assembled.
/// Fewer bytes: some part is missing, the client may send it and complete again (409). More
/// bytes: the upload outgrew its declaration; it is aborted and the media failed (422).
async fn check_parts_total(
    services: &Services,
    row: &MediaRow,
    key: &str,
    upload_id: &str,
    parts: &[(i32, String)],
) -> Result<()> {
    let uploaded = match services.storage.list_parts(key, upload_id).await {
        Ok(uploaded) => uploaded,
        Err(StorageError::Unavailable(e)) => return Err(StorageError::Unavailable(e).into()),
        Err(e) => {
            return Err(Error::Conflict {
                code: "upload_incomplete",
                message: format!("the uploaded parts cannot be listed: {e}"),
            });
        }
    };
    let mut total: u64 = 0;
    let mut named = std::collections::BTreeSet::new();
    for (n, _) in parts {
        if !named.insert(*n) {
            return Err(Error::invalid(
                "parts",
                format!("part {n} is listed more than once"),
            ));
        }
        let Some((_, size)) = uploaded.iter().find(|(u, _)| u == n) else {
            return Err(Error::Conflict {
                code: "upload_incomplete",
                message: format!("part {n} has not been uploaded"),
            });
        };
        total = total.saturating_add(*size);
    }
    let declared = u64::try_from(row.size_bytes).unwrap_or(0);
    if total < declared {
        return Err(Error::Conflict {
            code: "upload_incomplete",
            message: format!(
                "the listed parts hold {total} bytes of the {declared} bytes declared; upload every part"
            ),
        });
    }
    if total > declared {
        let reason = format!(
            "the uploaded parts hold {total} bytes, more than the {declared} bytes declared"
        );
        if let Err(e) = services.storage.abort_multipart(key, upload_id).await {
            tracing::warn!(error = %e, "could not abort an oversized multipart upload; the sweep will");
        }
        refuse_upload(services, row.id, key, &reason).await?;
        return Err(Error::invalid("file_size", reason));
    }
    Ok(())
}

/// The sniffed type must agree with the declared one.
fn check_content(head: &[u8], declared: &str, kind: Kind) -> std::result::Result<(), String> {
    match sniff::sniff(head) {
        Some(found) if sniff::compatible(declared, &found, kind) => Ok(()),
        Some(found) => Err(format!(
            "the file's content is a {} ({}), not {declared}",
            found.label, found.mime
        )),
        None => Err(format!(
            "the file's content is not a type Lectern accepts (declared as {declared})"
        )),
    }
}

/// Moves a checked upload to processing (with its job) or, for audio and documents, to ready.
async fn start_processing(
    services: &Services,
    id: Uuid,
    kind: Kind,
    started_by: Option<Uuid>,
) -> Result<UploadCompleted> {
    let job = match kind {
        Kind::Video => Some(Job::TranscodeVideo(jobs::TranscodeVideo { media_id: id })),
        Kind::Image => Some(Job::ProcessImage(jobs::ProcessImage { media_id: id })),
        Kind::Audio | Kind::Document => None,
    };
    let mut tx = services.db.begin().await?;
    let new_job = match &job {
        Some(job) => Some(jobs::insert(&mut tx, job, started_by, None).await?),
        None => None,
    };
    let updated = sqlx::query(
        "UPDATE media SET state = $2, job_id = $3, upload_expires_at = NULL, error = NULL,
                          processed_at = CASE WHEN $2 = 'ready' THEN now() END, updated_at = now()
          WHERE id = $1 AND state = 'pending'",
    )
    .bind(id)
    .bind(if new_job.is_some() {
        "processing"
    } else {
        "ready"
    })
    .bind(new_job.as_ref().map(|j| j.id))
    .execute(&mut *tx)
    .await?;
    if updated.rows_affected() == 0 {
        // Completed concurrently: answer with what the other request did.
        tx.rollback().await?;
        let mut conn = services.db.acquire().await?;
        let row = load(&mut conn, id, false)
            .await?
            .ok_or(Error::NotFound("upload"))?;
        drop(conn);
        let job = match row.job_id {
            Some(j) => jobs::get(&services.db, j).await?.map(|v| JobReference {
                id: v.id,
                kind: v.kind.clone(),
                state: v.state,
            }),
            None => None,
        };
        return Ok(UploadCompleted {
            job,
            media: view(services, row).await?,
        });
    }
    tx.commit().await?;
    if let Some(job) = &new_job {
        services.jobs.dispatch(job).await;
    }
    tracing::info!(kind = kind.as_str(), "upload completed");
    let mut conn = services.db.acquire().await?;
    let row = load(&mut conn, id, false)
        .await?
        .ok_or(Error::NotFound("upload"))?;
    drop(conn);
    Ok(UploadCompleted {
        job: new_job.as_ref().map(jobs::NewJob::reference),
        media: view(services, row).await?,
    })
}

/// A file received by `POST /media` and spooled to local disk by the API.
#[derive(Debug)]
pub struct DirectUpload {
    pub path: PathBuf,
    pub file_name: Option<String>,
    /// The part's `Content-Type`; when absent (or `application/octet-stream`) the sniffed type.
    pub mime_type: Option<String>,
    pub size: u64,
    pub course_id: Option<Uuid>,
    pub section_id: Option<Uuid>,
    pub title: Option<String>,
}

/// `POST /media`: a small file sent through the API, with the same limits and checks.
#[tracing::instrument(skip_all, fields(media_id))]
pub async fn direct_upload(
    services: &Services,
    caller: &Principal,
    upload: DirectUpload,
) -> Result<UploadCompleted> {
    let owner = require_uploader(caller)?;
    let head = {
        use tokio::io::AsyncReadExt;
        let mut file = tokio::fs::File::open(&upload.path)
            .await
            .map_err(Error::internal)?;
        let mut head = vec![0u8; sniff::SNIFF_LEN];
        let mut filled = 0;
        while filled < head.len() {
            let n = file
                .read(&mut head[filled..])
                .await
                .map_err(Error::internal)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        head.truncate(filled);
        head
    };
    let declared = upload
        .mime_type
        .as_deref()
        .map(str::trim)
        .filter(|m| !m.is_empty() && *m != "application/octet-stream")
        .map(str::to_owned)
        .or_else(|| sniff::sniff(&head).map(|s| s.mime.to_owned()));
    let (kind, file_name, mime, size) = check_declared(
        services,
        upload.file_name.as_deref(),
        i64::try_from(upload.size).ok(),
        declared.as_deref(),
        Some(services.config.media.direct_max_bytes),
    )?;
    if let Err(reason) = check_content(&head, &mime, kind) {
        return Err(Error::invalid("file", reason));
    }
    require_verified_for(caller, kind)?;
    let (course_id, section_id) =
        check_placement(services, caller, upload.course_id, upload.section_id).await?;
    let id = Uuid::now_v7();
    tracing::Span::current().record("media_id", tracing::field::display(id));
    let key = source_key(id);
    let title = upload.title.unwrap_or_else(|| file_name.clone());
    if title.chars().count() > 200 {
        return Err(Error::invalid("title", "must be at most 200 characters"));
    }
    check_quota(&mut *services.db.acquire().await?, services, owner, size).await?;
    services.storage.put_file(&key, &upload.path, &mime).await?;
    let inserted = insert_pending(
        services,
        &PendingMedia {
            id,
            owner,
            course_id,
            section_id,
            kind,
            title: &title,
            file_name: &file_name,
            mime: &mime,
            size,
            key: &key,
            multipart_upload_id: None,
            upload_expires_at: None,
        },
    )
    .await;
    if let Err(e) = inserted {
        let _ = services.storage.delete(&key).await;
        return Err(e);
    }
    start_processing(services, id, kind, Some(owner)).await
}

// ---------------------------------------------------------------------------------------------
// Deletion and the sweep of abandoned uploads

/// `DELETE /media/{id}`: the row goes now; a job removes every object.
#[tracing::instrument(skip_all, fields(media_id = %id))]
pub async fn delete(services: &Services, caller: &Principal, id: Uuid) -> Result<JobReference> {
    let mut tx = services.db.begin().await?;
    let row = load(&mut tx, id, true)
        .await?
        .filter(|r| is_owner(caller, r))
        .ok_or(Error::NotFound("media"))?;
    let job = remove_row(&mut tx, &row, caller.user_id()).await?;
    // A removed video changes every enrolled student's course progress.
    let recompute = match row.course_id {
        Some(course_id) if row.kind == "video" => Some(
            crate::courses::stats::queue_recompute(&mut tx, course_id, caller.user_id()).await?,
        ),
        _ => None,
    };
    tx.commit().await?;
    services.jobs.dispatch(&job).await;
    if let Some(recompute) = recompute {
        services.jobs.dispatch(&recompute).await;
    }
    tracing::info!("media deleted");
    Ok(job.reference())
}

async fn remove_row(
    conn: &mut PgConnection,
    row: &MediaRow,
    by: Option<Uuid>,
) -> Result<jobs::NewJob> {
    sqlx::query("UPDATE courses SET thumbnail_media_id = NULL WHERE thumbnail_media_id = $1")
        .bind(row.id)
        .execute(&mut *conn)
        .await?;
    let deleted = sqlx::query("DELETE FROM media WHERE id = $1")
        .bind(row.id)
        .execute(&mut *conn)
        .await;
    if let Err(sqlx::Error::Database(e)) = &deleted
        && e.code().as_deref() == Some("23503")
    {
        return Err(Error::Conflict {
            code: "media_in_use",
            message: "this media is still used (by a lesson or another record); detach it first"
                .into(),
        });
    }
    deleted?;
    let multipart = match (&row.object_key, &row.multipart_upload_id) {
        (Some(key), Some(upload)) => Some((key.clone(), upload.clone())),
        _ => None,
    };
    jobs::insert(
        conn,
        &Job::DeleteMediaObjects(jobs::DeleteMediaObjects {
            media_id: row.id,
            multipart,
        }),
        by,
        None,
    )
    .await
}

/// Job: removes every object under `media/{id}/` and aborts an open multipart upload.
pub async fn run_delete_objects(
    services: &Services,
    job: &jobs::DeleteMediaObjects,
) -> std::result::Result<(), JobError> {
    if let Some((key, upload)) = &job.multipart {
        match services.storage.abort_multipart(key, upload).await {
            Ok(()) | Err(StorageError::NotFound(_)) => {}
            Err(e) if e.is_transient() => return Err(storage_job_error(e)),
            Err(e) => {
                tracing::warn!(error = %e, "aborting the multipart upload failed; deleting objects anyway")
            }
        }
    }
    let removed = services
        .storage
        .delete_prefix(&format!("media/{}/", job.media_id))
        .await
        .map_err(storage_job_error)?;
    tracing::info!(media_id = %job.media_id, removed, "media objects removed");
    Ok(())
}

/// Removes uploads started and never completed before their expiry: the row now, the objects
/// (and any open multipart upload) through a deletion job. Returns how many.
pub async fn sweep_abandoned(services: &Services) -> Result<usize> {
    let mut tx = services.db.begin().await?;
    let sql = format!(
        "SELECT {COLUMNS} FROM media
          WHERE state = 'pending' AND upload_expires_at < now()
          ORDER BY upload_expires_at LIMIT 100 FOR UPDATE SKIP LOCKED"
    );
    let rows: Vec<MediaRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .fetch_all(&mut *tx)
        .await?;
    let mut new_jobs = Vec::with_capacity(rows.len());
    for row in &rows {
        new_jobs.push(remove_row(&mut tx, row, None).await?);
    }
    tx.commit().await?;
    for job in &new_jobs {
        services.jobs.dispatch(job).await;
    }
    if !rows.is_empty() {
        tracing::info!(removed = rows.len(), "removed abandoned uploads");
    }
    Ok(rows.len())
}

/// Removes what a presigned PUT may have written to the upload key after `/complete` froze it,
/// once the URL is dead (see `freeze_upload`). Returns how many media were checked.
pub async fn sweep_upload_keys(services: &Services) -> Result<usize> {
    let mut tx = services.db.begin().await?;
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM media WHERE upload_key_sweep_at < now()
          ORDER BY upload_key_sweep_at LIMIT 100 FOR UPDATE SKIP LOCKED",
    )
    .fetch_all(&mut *tx)
    .await?;
    for id in &ids {
        services.storage.delete(&upload_key(*id)).await?;
    }
    sqlx::query("UPDATE media SET upload_key_sweep_at = NULL WHERE id = ANY($1)")
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(ids.len())
}

// ---------------------------------------------------------------------------------------------
// Processing jobs

/// Sets a flag when dropped, so blocking work stops when its job is abandoned (watchdog, shutdown).
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Publishes an event for a user to their open WebSockets (through `crate::events`).
/// Best effort: a lost event is only a missed progress update.
async fn publish_event(services: &Services, user: Uuid, event: serde_json::Value) {
    crate::events::publish(
        services,
        &[crate::events::Envelope {
            user_id: user,
            event,
        }],
    )
    .await;
}

async fn mark_failed(services: &Services, id: Uuid, reason: &str) {
    let result = sqlx::query(
        "UPDATE media SET state = 'failed', error = $2, updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(reason)
    .execute(&services.db)
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "could not record the media's failure");
    }
}

/// Records the outcome of a failed attempt on the media: failed with the reason when no attempt
/// is left (or retrying cannot help), still processing otherwise.
async fn fail_job(services: &Services, row: &MediaRow, error: JobError) -> JobError {
    let last_attempt = jobs::current_job().is_none_or(|j| j.attempt >= j.max_attempts);
    match &error {
        JobError::Permanent(reason) => mark_failed(services, row.id, reason).await,
        JobError::Retryable(reason) if last_attempt => {
            mark_failed(services, row.id, &format!("processing failed: {reason}")).await;
        }
        JobError::Retryable(_) => {}
    }
    publish_event(
        services,
        row.owner_id,
        serde_json::json!({"type": "media.failed", "media_id": row.id, "error": error.to_string()}),
    )
    .await;
    error
}

async fn load_for_job(
    services: &Services,
    id: Uuid,
) -> std::result::Result<Option<MediaRow>, JobError> {
    let mut conn = services
        .db
        .acquire()
        .await
        .map_err(|e| JobError::from(Error::from(e)))?;
    load(&mut conn, id, false).await.map_err(JobError::from)
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("m3u8") => "application/vnd.apple.mpegurl",
        Some("ts") => "video/mp2t",
        Some("jpg") => "image/jpeg",
        Some("webp") => "image/webp",
        Some("vtt") => "text/vtt",
        _ => "application/octet-stream",
    }
}

/// Every file under `dir`, with its path relative to `dir` (`/`-separated).
fn files_under(dir: &Path) -> std::io::Result<Vec<(PathBuf, String)>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                stack.push(path);
            } else if let Ok(rel) = path.strip_prefix(dir) {
                let rel = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join("/");
                out.push((path, rel));
            }
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}

/// Uploads every file of `dir` under `prefix`, a few at a time.
async fn upload_dir(
    services: &Services,
    dir: &Path,
    prefix: &str,
) -> std::result::Result<usize, JobError> {
    use futures::StreamExt;
    let files = files_under(dir).map_err(|e| JobError::Retryable(format!("local disk: {e}")))?;
    let count = files.len();
    let results: Vec<std::result::Result<(), StorageError>> = futures::stream::iter(files)
        .map(|(path, rel)| async move {
            services
                .storage
                .put_file(&format!("{prefix}{rel}"), &path, content_type(&path))
                .await
        })
        .buffer_unordered(8)
        .collect()
        .await;
    for r in results {
        r.map_err(|e| JobError::Retryable(format!("uploading outputs: {e}")))?;
    }
    Ok(count)
}

/// Runs blocking media work off the async threads, relaying its progress (0.0-1.0) to the job
/// row and the owner's events while it runs.
async fn run_blocking<T: Send + 'static>(
    services: &Services,
    row: &MediaRow,
    work: impl FnOnce(&AtomicBool, &mut dyn FnMut(f64)) -> T + Send + 'static,
) -> std::result::Result<T, JobError> {
    let flag = Arc::new(AtomicBool::new(false));
    let _cancel = CancelOnDrop(flag.clone());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<f64>();
    let mut handle = tokio::task::spawn_blocking(move || {
        let mut report = |f: f64| {
            let _ = tx.send(f);
        };
        work(&flag, &mut report)
    });
    let job_id = jobs::current_job().map(|j| j.id);
    loop {
        tokio::select! {
            done = &mut handle => {
                return done.map_err(|e| JobError::Retryable(format!("processing thread failed: {e}")));
            }
            Some(fraction) = rx.recv() => {
                // Keep 100 for the recorded success.
                let percent = (fraction * 100.0).floor().clamp(0.0, 99.0) as u8;
                if let Err(e) = jobs::report_progress(&services.db, percent).await {
                    tracing::debug!(error = %e, "could not record progress");
                }
                publish_event(services, row.owner_id, serde_json::json!({
                    "type": "media.progress", "media_id": row.id, "job_id": job_id, "progress": percent,
                })).await;
            }
        }
    }
}

/// Job: probe, transcode to the HLS ladder with poster and storyboard, upload, record.
#[tracing::instrument(skip_all, fields(media_id = %job.media_id))]
pub async fn run_transcode(
    services: &Services,
    job: &jobs::TranscodeVideo,
) -> std::result::Result<(), JobError> {
    let Some(row) = load_for_job(services, job.media_id).await? else {
        tracing::info!("the media was deleted; nothing to transcode");
        return Ok(());
    };
    if row.kind() != Kind::Video {
        return Err(JobError::Permanent("this media is not a video".into()));
    }
    match transcode_media(services, &row).await {
        Ok(()) => Ok(()),
        Err(e) => Err(fail_job(services, &row, e).await),
    }
}

async fn transcode_media(services: &Services, row: &MediaRow) -> std::result::Result<(), JobError> {
    let id = row.id;
    let work = WorkDir::new("transcode", id)?;
    let source = work.path().join("source");
    // Only the verified copy: never the upload key, which its presigned URL may still rewrite.
    let key = source_key(id);
    match services.storage.download_to(&key, &source).await {
        Ok(_) => {}
        Err(StorageError::NotFound(_)) => {
            return Err(JobError::Permanent(
                "the uploaded file is gone from storage".into(),
            ));
        }
        Err(e) => return Err(storage_job_error(e)),
    }
    let max_duration = services.config.media.max_video_duration.as_secs_f64();
    let limits = video_limits(&services.config.media);
    let out_dir = work.path().join("out");
    let started = std::time::Instant::now();
    let (work, result) = run_blocking(services, row, move |cancel, progress| {
        let result = (|| {
            let probe = video::probe_within(&source, &limits)?;
            check_probe(&probe, max_duration)?;
            std::fs::create_dir_all(&out_dir).map_err(MediaError::io)?;
            let out = video::transcode(
                &source,
                &probe,
                &out_dir,
                &video::TranscodeOptions {
                    limits,
                    ..Default::default()
                },
                progress,
                cancel,
            )?;
            Ok::<_, MediaError>((probe, out))
        })();
        (work, result)
    })
    .await?;
    let (probe, out) = result?;
    // A file whose index promises more than its data holds (cut short after the index).
    let encoded = out.renditions.first().map_or(0.0, |r| r.duration_secs);
    if encoded < probe.duration_secs * 0.9 - 1.0 {
        return Err(JobError::Permanent(format!(
            "the video is truncated: only {encoded:.1} s of its {:.1} s could be decoded",
            probe.duration_secs
        )));
    }
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        renditions = out.renditions.len(),
        duration_secs = probe.duration_secs,
        "transcoded"
    );
    let uploaded = upload_dir(services, &work.path().join("out"), &video_prefix(id)).await?;
    drop(work);
    let updated = sqlx::query(
        "UPDATE media SET state = 'ready', duration_secs = $2, width = $3, height = $4,
                rotation = $5, frame_rate = $6, video_codec = $7, audio_codec = $8, bit_rate = $9,
                has_audio = $10, renditions = $11, poster = $12, storyboard = $13, error = NULL,
                processed_at = now(), updated_at = now()
          WHERE id = $1",
    )
    .bind(id)
    .bind(probe.duration_secs)
    .bind(i32::try_from(probe.width).unwrap_or(i32::MAX))
    .bind(i32::try_from(probe.height).unwrap_or(i32::MAX))
    .bind(i32::try_from(probe.rotation).unwrap_or(0))
    .bind(probe.frame_rate)
    .bind(&probe.video_codec)
    .bind(&probe.audio_codec)
    .bind(probe.bit_rate)
    .bind(probe.has_audio)
    .bind(serde_json::to_value(&out.renditions).unwrap_or_default())
    .bind(
        out.poster
            .as_ref()
            .and_then(|p| serde_json::to_value(p).ok()),
    )
    .bind(
        out.storyboard
            .as_ref()
            .and_then(|s| serde_json::to_value(s).ok()),
    )
    .execute(&services.db)
    .await
    .map_err(|e| JobError::from(Error::from(e)))?;
    if updated.rows_affected() == 0 {
        // Deleted while processing: the deletion job may already have run; remove what we wrote.
        let _ = services
            .storage
            .delete_prefix(&format!("media/{id}/"))
            .await;
        tracing::info!("the media was deleted while processing; outputs removed");
        return Ok(());
    }
    tracing::info!(uploaded, "video ready");
    // A new processed video changes every enrolled student's course progress.
    if let Some(course_id) = row.course_id {
        let mut conn = services
            .db
            .acquire()
            .await
            .map_err(|e| JobError::from(Error::from(e)))?;
        let job = crate::courses::stats::queue_recompute(&mut conn, course_id, None).await?;
        services.jobs.dispatch(&job).await;
    }
    publish_event(
        services,
        row.owner_id,
        serde_json::json!({"type": "media.ready", "media_id": id}),
    )
    .await;
    Ok(())
}

/// The configured bounds on one video's work.
fn video_limits(m: &crate::config::MediaConfig) -> video::VideoLimits {
    video::VideoLimits {
        max_width: m.video_max_width,
        max_height: m.video_max_height,
        max_pixels: m.video_max_pixels,
        max_frame_rate: m.video_max_frame_rate,
        max_duration_secs: m.max_video_duration.as_secs_f64(),
    }
}

fn check_probe(
    probe: &video::VideoProbe,
    max_duration: f64,
) -> std::result::Result<(), MediaError> {
    if probe.width < MIN_VIDEO_SIDE || probe.height < MIN_VIDEO_SIDE {
        return Err(MediaError::Invalid(format!(
            "the video is {} × {} pixels; the smallest accepted is {MIN_VIDEO_SIDE} × {MIN_VIDEO_SIDE}",
            probe.width, probe.height
        )));
    }
    if probe.duration_secs <= 0.0 {
        return Err(MediaError::Invalid(
            "the video's duration cannot be determined (the file may be truncated)".into(),
        ));
    }
    if probe.duration_secs > max_duration {
        return Err(MediaError::Invalid(format!(
            "the video lasts {:.0} s; the longest accepted is {max_duration:.0} s",
            probe.duration_secs
        )));
    }
    Ok(())
}

/// Job: decode the image under limits, apply EXIF orientation, make thumbnail and preview.
#[tracing::instrument(skip_all, fields(media_id = %job.media_id))]
pub async fn run_process_image(
    services: &Services,
    job: &jobs::ProcessImage,
) -> std::result::Result<(), JobError> {
    let Some(row) = load_for_job(services, job.media_id).await? else {
        tracing::info!("the media was deleted; nothing to process");
        return Ok(());
    };
    if row.kind() != Kind::Image {
        return Err(JobError::Permanent("this media is not an image".into()));
    }
    match process_image_media(services, &row).await {
        Ok(()) => Ok(()),
        Err(e) => Err(fail_job(services, &row, e).await),
    }
}

async fn process_image_media(
    services: &Services,
    row: &MediaRow,
) -> std::result::Result<(), JobError> {
    let id = row.id;
    let work = WorkDir::new("image", id)?;
    let source = work.path().join("source");
    // Only the verified copy: never the upload key, which its presigned URL may still rewrite.
    let key = source_key(id);
    match services.storage.download_to(&key, &source).await {
        Ok(_) => {}
        Err(StorageError::NotFound(_)) => {
            return Err(JobError::Permanent(
                "the uploaded file is gone from storage".into(),
            ));
        }
        Err(e) => return Err(storage_job_error(e)),
    }
    let m = &services.config.media;
    let limits = image::ImageLimits {
        max_width: m.image_max_width,
        max_height: m.image_max_height,
        max_pixels: m.image_max_pixels,
    };
    let out_dir = work.path().join("out");
    let (work, result) = run_blocking(services, row, move |_cancel, _progress| {
        let result = std::fs::create_dir_all(&out_dir)
            .map_err(MediaError::io)
            .and_then(|()| image::process(&source, &limits, &out_dir));
        (work, result)
    })
    .await?;
    let out = result?;
    upload_dir(services, &work.path().join("out"), &image_prefix(id)).await?;
    drop(work);
    let updated = sqlx::query(
        "UPDATE media SET state = 'ready', width = $2, height = $3, image = $4, error = NULL,
                          processed_at = now(), updated_at = now()
          WHERE id = $1",
    )
    .bind(id)
    .bind(i32::try_from(out.width).unwrap_or(i32::MAX))
    .bind(i32::try_from(out.height).unwrap_or(i32::MAX))
    .bind(serde_json::to_value(&out).unwrap_or_default())
    .execute(&services.db)
    .await
    .map_err(|e| JobError::from(Error::from(e)))?;
    if updated.rows_affected() == 0 {
        let _ = services
            .storage
            .delete_prefix(&format!("media/{id}/"))
            .await;
        return Ok(());
    }
    publish_event(
        services,
        row.owner_id,
        serde_json::json!({"type": "media.ready", "media_id": id}),
    )
    .await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Playback

#[derive(Debug, Serialize, Deserialize)]
struct PlaybackClaims {
    /// The media.
    sub: Uuid,
    purpose: String,
    exp: i64,
}

const PLAYBACK_PURPOSE: &str = "media_playback";

fn playback_token(services: &Services, id: Uuid, expires_at: DateTime<Utc>) -> Result<String> {
    let claims = PlaybackClaims {
        sub: id,
        purpose: PLAYBACK_PURPOSE.into(),
        exp: expires_at.timestamp(),
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(
            services.config.jwt_secret.expose_secret().as_bytes(),
        ),
    )
    .map_err(Error::internal)
}

fn check_playback_token(services: &Services, id: Uuid, token: &str) -> Result<()> {
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.leeway = 5;
    validation.validate_aud = false;
    validation.set_required_spec_claims(&["exp", "sub"]);
    let denied = || Error::NotFound("media");
    let data = jsonwebtoken::decode::<PlaybackClaims>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(
            services.config.jwt_secret.expose_secret().as_bytes(),
        ),
        &validation,
    )
    .map_err(|_| denied())?;
    if data.claims.sub != id || data.claims.purpose != PLAYBACK_PURPOSE {
        return Err(denied());
    }
    Ok(())
}

/// Signed URLs of a picture in two formats.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PictureUrls {
    pub jpeg: String,
    pub webp: String,
}

/// `GET /media/{id}/playback`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Playback {
    /// HLS master playlist (videos). Its variant playlists and segments are signed URLs too.
    pub hls_url: Option<String>,
    pub poster: Option<PictureUrls>,
    /// WebVTT track mapping times to tiles of the storyboard sprite (signed URLs).
    pub storyboard_vtt_url: Option<String>,
    pub thumbnail: Option<PictureUrls>,
    pub preview: Option<PictureUrls>,
    /// The original file (audio and documents).
    pub file_url: Option<String>,
    pub expires_at: DateTime<Utc>,
}

async fn pictures(services: &Services, base: &str, ttl: Duration) -> Result<PictureUrls> {
    Ok(PictureUrls {
        jpeg: services
            .storage
            .presign_get(&format!("{base}.jpg"), ttl)
            .await?
            .url,
        webp: services
            .storage
            .presign_get(&format!("{base}.webp"), ttl)
            .await?
            .url,
    })
}

fn api_url(services: &Services, path: &str) -> String {
    crate::links::api_path(&services.config, path)
}

/// Short-lived signed URLs to play or show a ready media; only for those who may view it.
#[tracing::instrument(skip_all, fields(media_id = %id))]
pub async fn playback(services: &Services, caller: &Principal, id: Uuid) -> Result<Playback> {
    let mut conn = services.db.acquire().await?;
    let row = load(&mut conn, id, false)
        .await?
        .ok_or(Error::NotFound("media"))?;
    drop(conn);
    if !may_view(services, caller, &row).await? {
        return Err(Error::NotFound("media"));
    }
    if row.state != "ready" {
        return Err(Error::Conflict {
            code: "media_not_ready",
            message: format!("the media is {}, not ready to play", row.state),
        });
    }
    signed_playback(services, &row).await
}

/// The signed URLs of a ready media, for a caller already allowed to play it.
async fn signed_playback(services: &Services, row: &MediaRow) -> Result<Playback> {
    let id = row.id;
    let ttl = services.config.media.url_ttl;
    let expires_at = Utc::now() + chrono::Duration::from_std(ttl).unwrap_or_default();
    let mut out = Playback {
        hls_url: None,
        poster: None,
        storyboard_vtt_url: None,
        thumbnail: None,
        preview: None,
        file_url: None,
        expires_at,
    };
    match row.kind() {
        Kind::Video => {
            let token = playback_token(services, id, expires_at)?;
            out.hls_url = Some(api_url(
                services,
                &format!("/media/{id}/hls/master.m3u8?token={token}"),
            ));
            if row.poster.is_some() {
                out.poster =
                    Some(pictures(services, &format!("{}poster", video_prefix(id)), ttl).await?);
            }
            if row.storyboard.is_some() {
                out.storyboard_vtt_url = Some(api_url(
                    services,
                    &format!("/media/{id}/storyboard.vtt?token={token}"),
                ));
            }
        }
        Kind::Image => {
            out.thumbnail =
                Some(pictures(services, &format!("{}thumbnail", image_prefix(id)), ttl).await?);
            out.preview =
                Some(pictures(services, &format!("{}preview", image_prefix(id)), ttl).await?);
        }
        Kind::Audio | Kind::Document => {
            let key = row.object_key.clone().unwrap_or_else(|| source_key(id));
            out.file_url = Some(services.storage.presign_get(&key, ttl).await?.url);
        }
    }
    Ok(out)
}

async fn ready_video(services: &Services, id: Uuid, token: &str) -> Result<MediaRow> {
    check_playback_token(services, id, token)?;
    let mut conn = services.db.acquire().await?;
    load(&mut conn, id, false)
        .await?
        .filter(|r| r.state == "ready" && r.kind() == Kind::Video)
        .ok_or(Error::NotFound("media"))
}

async fn read_text(services: &Services, key: &str) -> Result<String> {
    let body = services.storage.get(key).await?;
    let bytes = body
        .collect()
        .await
        .map_err(|e| Error::Unavailable(crate::error::Dependency::Storage, Box::new(e)))?
        .into_bytes();
    String::from_utf8(bytes.to_vec()).map_err(Error::internal)
}

/// The master playlist, its variant URIs carrying the playback token.
pub async fn hls_master(services: &Services, id: Uuid, token: &str) -> Result<String> {
    ready_video(services, id, token).await?;
    let text = read_text(services, &format!("{}master.m3u8", video_prefix(id))).await?;
    Ok(rewrite_uris(&text, |uri| {
        Some(format!("{uri}?token={token}"))
    }))
}

/// A variant playlist, each segment a presigned storage URL.
pub async fn hls_variant(
    services: &Services,
    id: Uuid,
    rendition: &str,
    token: &str,
) -> Result<String> {
    let row = ready_video(services, id, token).await?;
    let known = row
        .renditions
        .as_array()
        .is_some_and(|all| all.iter().any(|r| r["name"] == rendition));
    if !known {
        return Err(Error::NotFound("rendition"));
    }
    let prefix = format!("{}{rendition}/", video_prefix(id));
    let text = read_text(services, &format!("{prefix}index.m3u8")).await?;
    // Segments stay valid long enough to play the whole video from the start.
    let ttl = services.config.media.url_ttl
        + Duration::from_secs_f64(row.duration_secs.unwrap_or(0.0).clamp(0.0, 86_400.0));
    let mut out = String::with_capacity(text.len() * 4);
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            out.push_str(line);
        } else if is_plain_name(trimmed) {
            let url = services
                .storage
                .presign_get(&format!("{prefix}{trimmed}"), ttl)
                .await?
                .url;
            out.push_str(&url);
        } else {
            return Err(Error::internal(std::io::Error::other(format!(
                "unexpected URI in a stored playlist: {trimmed}"
            ))));
        }
        out.push('\n');
    }
    Ok(out)
}

/// The storyboard track, its image references presigned.
pub async fn storyboard_vtt(services: &Services, id: Uuid, token: &str) -> Result<String> {
    let row = ready_video(services, id, token).await?;
    if row.storyboard.is_none() {
        return Err(Error::NotFound("storyboard"));
    }
    let prefix = video_prefix(id);
    let text = read_text(services, &format!("{prefix}storyboard.vtt")).await?;
    let ttl = services.config.media.url_ttl;
    let sprite = services
        .storage
        .presign_get(&format!("{prefix}storyboard.jpg"), ttl)
        .await?
        .url;
    Ok(text.replace("storyboard.jpg#", &format!("{sprite}#")))
}

fn is_plain_name(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Rewrites every URI line of a playlist (lines that are neither empty nor tags).
fn rewrite_uris(text: &str, mut f: impl FnMut(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    for line in text.lines() {
        let trimmed = line.trim();
        if !trimmed.is_empty() && !trimmed.starts_with('#') {
            match f(trimmed) {
                Some(new) => out.push_str(&new),
                None => out.push_str(line),
            }
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
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
