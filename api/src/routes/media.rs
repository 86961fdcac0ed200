//! Media uploads, state, playback and deletion. The rules live in `lectern_core::media`.

use actix_multipart::Multipart;
use actix_web::{HttpResponse, delete, get, post, web};
use futures::StreamExt;
use lectern_core::media::{
    self, CompleteUpload, DirectUpload, MediaView, Playback, StartUpload, UploadCompleted,
    UploadStarted,
};
use lectern_core::{Error, Services};
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::routes::JobAccepted;

/// Starts an upload: answers with a presigned PUT, or presigned part URLs for a multipart
/// upload above the configured size; the bytes go straight to storage.
#[utoipa::path(
    tag = "media",
    request_body = StartUpload,
    security(("bearer" = [])),
    responses(
        (status = 201, body = UploadStarted, description = "where to send the bytes"),
        (status = 403, body = ErrorBody, description = "instructors_only, email_unverified"),
        (status = 404, body = ErrorBody, description = "course or section not the caller's"),
        (status = 409, body = ErrorBody, description = "upload_quota_exceeded"),
        (status = 422, body = ErrorBody, description = "name, size or type refused")
    )
)]
#[post("/media/uploads")]
pub async fn start_upload(
    services: web::Data<Services>,
    caller: Caller,
    body: web::Json<StartUpload>,
) -> ApiResult<HttpResponse> {
    let started = media::start_upload(&services, &caller.0, body.into_inner()).await?;
    Ok(HttpResponse::Created().json(started))
}

/// Checks the uploaded object (existence, size, real type) and starts processing where there is
/// some: videos and images answer 202 with the processing job; audio and documents need none
/// and answer 200, ready at once, with `job` null. Completing again answers the same way.
#[utoipa::path(
    tag = "media",
    params(("id" = Uuid, Path, description = "the media id `POST /media/uploads` gave")),
    request_body(content = Option<CompleteUpload>, description = "`{parts: [{part_number, etag}]}` for multipart uploads; optional otherwise"),
    security(("bearer" = [])),
    responses(
        (status = 202, body = UploadCompleted, description = "video or image: processing started; `job` is the processing job (follow it at `GET /jobs/{id}` or on `/ws`)"),
        (status = 200, body = UploadCompleted, description = "audio or document: no processing, the media is ready; `job` is null"),
        (status = 404, body = ErrorBody, description = "no such upload of the caller's"),
        (status = 409, body = ErrorBody, description = "upload_incomplete: the bytes (or some parts) are not uploaded yet; upload_refused: this upload was refused before"),
        (status = 422, body = ErrorBody, description = "size or content refused")
    )
)]
#[post("/media/uploads/{id}/complete")]
pub async fn complete_upload(
    services: web::Data<Services>,
    caller: Caller,
    id: web::Path<Uuid>,
    body: Option<web::Json<CompleteUpload>>,
) -> ApiResult<HttpResponse> {
    let input = body.map(web::Json::into_inner).unwrap_or_default();
    let done = media::complete_upload(&services, &caller.0, *id, input).await?;
    Ok(completed(done))
}

fn completed(done: UploadCompleted) -> HttpResponse {
    if done.job.is_some() {
        HttpResponse::Accepted().json(done)
    } else {
        HttpResponse::Ok().json(done)
    }
}

/// Removes the spooled file of a direct upload on every path.
struct Spool(std::path::PathBuf);

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn multipart_error(e: actix_multipart::MultipartError) -> ApiError {
    use actix_multipart::MultipartError as E;
    match e {
        E::ContentTypeMissing | E::ContentTypeParse | E::ContentTypeIncompatible => {
            ApiError::UnsupportedMediaType("send the file as multipart/form-data".into())
        }
        other => ApiError::Malformed(format!("invalid multipart/form-data body: {other}")),
    }
}

async fn text_field(field: &mut actix_multipart::Field) -> ApiResult<String> {
    let mut value = Vec::new();
    while let Some(chunk) = field.next().await {
        let chunk = chunk.map_err(multipart_error)?;
        if value.len() + chunk.len() > 4096 {
            return Err(ApiError::Malformed(
                "a form field is longer than 4096 bytes".into(),
            ));
        }
        value.extend_from_slice(&chunk);
    }
    String::from_utf8(value).map_err(|_| ApiError::Malformed("a form field is not UTF-8".into()))
}

fn uuid_field(name: &str, value: &str) -> ApiResult<Option<Uuid>> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .map_err(|_| Error::invalid(name, "is not a UUID").into())
}

/// The form of a direct upload.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct DirectUploadForm {
    /// The file, with its name and type in the part's headers.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
    title: Option<String>,
    /// The course (the caller's) the media belongs to.
    course_id: Option<Uuid>,
    /// The section (of that course) the media belongs to.
    section_id: Option<Uuid>,
}

/// Direct upload of a small file as multipart/form-data (`file`, and optional `title`,
/// `course_id`, `section_id`). The file is spooled to disk, never held in memory, then streamed
/// to storage; same limits and checks as the presigned flow.
/// Answers like `POST /media/uploads/{id}/complete`: 202 with the job for videos and images, 200
/// with `job` null for audio and documents.
#[utoipa::path(
    tag = "media",
    request_body(content = DirectUploadForm, content_type = "multipart/form-data"),
    security(("bearer" = [])),
    responses(
        (status = 202, body = UploadCompleted, description = "video or image: processing started; `job` is the processing job"),
        (status = 200, body = UploadCompleted, description = "audio or document: no processing, the media is ready; `job` is null"),
        (status = 403, body = ErrorBody, description = "instructors_only, email_unverified"),
        (status = 404, body = ErrorBody, description = "course or section not the caller's"),
        (status = 409, body = ErrorBody, description = "upload_quota_exceeded"),
        (status = 413, body = ErrorBody, description = "payload_too_large: above the direct-upload limit"),
        (status = 415, body = ErrorBody, description = "not multipart/form-data"),
        (status = 422, body = ErrorBody, description = "no file, or its name, size or type refused")
    )
)]
#[post("/media")]
pub async fn direct_upload(
    services: web::Data<Services>,
    caller: Caller,
    payload: Result<Multipart, actix_web::Error>,
) -> ApiResult<HttpResponse> {
    caller.0.require_user()?;
    let mut payload = payload.map_err(|_| {
        ApiError::UnsupportedMediaType("send the file as multipart/form-data".into())
    })?;
    let max = services.config.media.direct_max_bytes;
    let spool = Spool(std::env::temp_dir().join(format!("lectern-upload-{}", Uuid::new_v4())));
    let mut upload = DirectUpload {
        path: spool.0.clone(),
        file_name: None,
        mime_type: None,
        size: 0,
        course_id: None,
        section_id: None,
        title: None,
    };
    let mut got_file = false;
    while let Some(field) = payload.next().await {
        let mut field = field.map_err(multipart_error)?;
        let name = field.name().unwrap_or_default().to_owned();
        match name.as_str() {
            "file" if !got_file => {
                got_file = true;
                upload.file_name = field
                    .content_disposition()
                    .and_then(|d| d.get_filename())
                    .map(str::to_owned);
                upload.mime_type = field.content_type().map(|m| m.essence_str().to_owned());
                let mut file = tokio::fs::File::create(&spool.0)
                    .await
                    .map_err(Error::internal)?;
                while let Some(chunk) = field.next().await {
                    let chunk = chunk.map_err(multipart_error)?;
                    upload.size += chunk.len() as u64;
                    if upload.size > max {
                        return Err(ApiError::TooLarge(format!(
                            "the file is larger than the {max} bytes of a direct upload; use POST /api/v1/media/uploads"
                        )));
                    }
                    file.write_all(&chunk).await.map_err(Error::internal)?;
                }
                file.flush().await.map_err(Error::internal)?;
            }
            "title" => upload.title = Some(text_field(&mut field).await?),
            "course_id" => {
                upload.course_id = uuid_field("course_id", &text_field(&mut field).await?)?
            }
            "section_id" => {
                upload.section_id = uuid_field("section_id", &text_field(&mut field).await?)?;
            }
            _ => {
                // Unknown fields are drained and ignored.
                while let Some(chunk) = field.next().await {
                    chunk.map_err(multipart_error)?;
                }
            }
        }
    }
    if !got_file {
        return Err(Error::invalid("file", "is required").into());
    }
    let done = media::direct_upload(&services, &caller.0, upload).await?;
    drop(spool);
    Ok(completed(done))
}

/// State, metadata, renditions and job of a media (owner, admins, enrolled students).
#[utoipa::path(
    tag = "media",
    params(("id" = Uuid, Path)),
    security(("bearer" = [])),
    responses(
        (status = 200, body = MediaView),
        (status = 404, body = ErrorBody, description = "absent, or the caller may not see it")
    )
)]
#[get("/media/{id}")]
pub async fn get_media(
    services: web::Data<Services>,
    caller: Caller,
    id: web::Path<Uuid>,
) -> ApiResult<web::Json<MediaView>> {
    Ok(web::Json(media::get(&services, &caller.0, *id).await?))
}

/// Short-lived signed URLs: the HLS master playlist (whose playlists and segments are signed
/// too), poster, storyboard; thumbnails for images; the file for audio and documents.
#[utoipa::path(
    tag = "media",
    params(("id" = Uuid, Path)),
    security(("bearer" = [])),
    responses(
        (status = 200, body = Playback),
        (status = 404, body = ErrorBody, description = "absent, or the caller may not play it"),
        (status = 409, body = ErrorBody, description = "media_not_ready")
    )
)]
#[get("/media/{id}/playback")]
pub async fn playback(
    services: web::Data<Services>,
    caller: Caller,
    id: web::Path<Uuid>,
) -> ApiResult<web::Json<Playback>> {
    Ok(web::Json(media::playback(&services, &caller.0, *id).await?))
}

/// Removes the media now and, through a job, every stored object.
#[utoipa::path(
    tag = "media",
    params(("id" = Uuid, Path)),
    security(("bearer" = [])),
    responses(
        (status = 202, body = JobAccepted, description = "removed; the job deletes the stored objects"),
        (status = 404, body = ErrorBody, description = "absent, or not the caller's"),
        (status = 409, body = ErrorBody, description = "media_in_use")
    )
)]
#[delete("/media/{id}")]
pub async fn delete_media(
    services: web::Data<Services>,
    caller: Caller,
    id: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    let job = media::delete(&services, &caller.0, *id).await?;
    Ok(JobAccepted::response(job))
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
pub struct TokenQuery {
    /// The playback token of the URL `GET /media/{id}/playback` gave.
    pub token: String,
}

fn playlist(body: String) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/vnd.apple.mpegurl")
        .insert_header(("Cache-Control", "private, no-store"))
        .body(body)
}

/// HLS master playlist (signed by its token, no bearer needed: players fetch it).
#[utoipa::path(
    tag = "media",
    params(("id" = Uuid, Path), TokenQuery),
    responses(
        (status = 200, body = String, content_type = "application/vnd.apple.mpegurl", description = "the master playlist"),
        (status = 404, body = ErrorBody, description = "absent, not ready, or the token is wrong or expired")
    )
)]
#[get("/media/{id}/hls/master.m3u8")]
pub async fn hls_master(
    services: web::Data<Services>,
    id: web::Path<Uuid>,
    query: web::Query<TokenQuery>,
) -> ApiResult<HttpResponse> {
    Ok(playlist(
        media::hls_master(&services, *id, &query.token).await?,
    ))
}

/// HLS variant playlist; its segments are presigned storage URLs.
#[utoipa::path(
    tag = "media",
    params(("id" = Uuid, Path), ("rendition" = String, Path, description = "a rendition of the master playlist, e.g. `720p`"), TokenQuery),
    responses(
        (status = 200, body = String, content_type = "application/vnd.apple.mpegurl", description = "the variant playlist"),
        (status = 404, body = ErrorBody, description = "absent, not ready, no such rendition, or the token is wrong or expired")
    )
)]
#[get("/media/{id}/hls/{rendition}/index.m3u8")]
pub async fn hls_variant(
    services: web::Data<Services>,
    path: web::Path<(Uuid, String)>,
    query: web::Query<TokenQuery>,
) -> ApiResult<HttpResponse> {
    let (id, rendition) = path.into_inner();
    Ok(playlist(
        media::hls_variant(&services, id, &rendition, &query.token).await?,
    ))
}

/// The storyboard's WebVTT track; cues point at tiles of a presigned sprite sheet.
#[utoipa::path(
    tag = "media",
    params(("id" = Uuid, Path), TokenQuery),
    responses(
        (status = 200, body = String, content_type = "text/vtt", description = "the WebVTT track"),
        (status = 404, body = ErrorBody, description = "absent, without a storyboard, or the token is wrong or expired")
    )
)]
#[get("/media/{id}/storyboard.vtt")]
pub async fn storyboard(
    services: web::Data<Services>,
    id: web::Path<Uuid>,
    query: web::Query<TokenQuery>,
) -> ApiResult<HttpResponse> {
    let body = media::storyboard_vtt(&services, *id, &query.token).await?;
    Ok(HttpResponse::Ok()
        .content_type("text/vtt")
        .insert_header(("Cache-Control", "private, no-store"))
        .body(body))
}
