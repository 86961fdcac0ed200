//! The storefront for visitors (free previews, course images, instructor profiles) and the
//! student's certificates. The rules live in `lectern_core::media::public`,
//! `lectern_core::courses::images`, `lectern_core::accounts::profile` and
//! `lectern_core::learning::certificates`.

use actix_web::http::header;
use actix_web::{HttpResponse, get, patch, web};
use lectern_core::Services;
use lectern_core::accounts::profile::{self, PublicProfile};
use lectern_core::courses::images;
use lectern_core::learning::certificates::{self, MyCertificate};
use lectern_core::media::public::{self, ImageFormat, ImageVariant, MediaPatch};
use lectern_core::media::{MediaView, Playback};
use lectern_core::page::Page;
use serde::Deserialize;
use uuid::Uuid;

use crate::auth::{Caller, MaybeCaller};
use crate::error::{ApiResult, ErrorBody};
use crate::routes::courses::PageParams;

/// Marks a video as a free preview (`{"is_preview": true}`) or ends it: the instructor of the
/// course it is in. Only a video in a section of a course can be a preview.
#[utoipa::path(
    tag = "media",
    params(("id" = Uuid, Path)),
    request_body = MediaPatch,
    security(("bearer" = [])),
    responses(
        (status = 200, body = MediaView),
        (status = 400, body = ErrorBody, description = "malformed JSON or path, or `is_preview` missing"),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "absent, or not the caller's"),
        (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody, description = "not application/json"),
        (status = 422, body = ErrorBody, description = "not a video, or not in a section"),
        (status = 503, body = ErrorBody)
    )
)]
#[patch("/media/{id}")]
pub async fn update_media(
    services: web::Data<Services>,
    caller: Caller,
    id: web::Path<Uuid>,
    body: web::Json<MediaPatch>,
) -> ApiResult<web::Json<MediaView>> {
    Ok(web::Json(
        public::update(&services, &caller.0, *id, &body).await?,
    ))
}

/// Signed playback of a free preview, no login needed: the same answer as
/// `GET /media/{id}/playback`, for a ready video marked as a preview in a section of a published
/// course. The playlists and segments it leads to need only their signed token.
#[utoipa::path(
    tag = "media",
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = Playback),
        (status = 400, body = ErrorBody, description = "the id is not a UUID"),
        (status = 404, body = ErrorBody, description = "absent, not a preview, not ready, or its course is not published"),
        (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody)
    )
)]
#[get("/media/{id}/preview")]
pub async fn preview(
    services: web::Data<Services>,
    id: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    let playback = public::preview(&services, *id).await?;
    // The URLs inside are signed and short-lived: nobody keeps this answer.
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(playback))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ThumbnailParams {
    /// `thumbnail` (at most 300 × 300, the default) or `preview` (at most 1280 on its long side).
    #[param(inline)]
    pub variant: Option<ImageVariant>,
    /// `jpeg` (the default) or `webp`.
    #[param(inline)]
    pub format: Option<ImageFormat>,
    /// The image's version, set in the URLs Lectern gives out so a new thumbnail is a new URL;
    /// not checked.
    #[expect(dead_code, reason = "documented for clients; the value is not checked")]
    pub v: Option<String>,
}

/// A course's thumbnail image for a plain `<img>` (no login needed for a published course; the
/// instructor's bearer token for a draft): 302 to a short-lived presigned storage URL of the
/// picture. Cards and course pages carry this URL as `thumbnail_url` and `preview_image_url`.
#[utoipa::path(
    tag = "courses",
    params(("id" = Uuid, Path), ThumbnailParams),
    security((), ("bearer" = [])),
    responses(
        (status = 302, description = "to the picture; cacheable (`public` for a published course) for half the presigned URL's life",
            headers(("Location" = String, description = "presigned storage URL"), ("Cache-Control" = String))),
        (status = 400, body = ErrorBody, description = "malformed id, variant or format"),
        (status = 401, body = ErrorBody, description = "a bearer token was sent but is not valid"),
        (status = 404, body = ErrorBody, description = "no such course visible to the caller, or no processed thumbnail"),
        (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody)
    )
)]
#[get("/courses/{id}/thumbnail")]
pub async fn course_thumbnail(
    services: web::Data<Services>,
    caller: MaybeCaller,
    id: web::Path<Uuid>,
    params: web::Query<ThumbnailParams>,
) -> ApiResult<HttpResponse> {
    let found = images::image(
        &services,
        caller.0.as_ref(),
        *id,
        params.variant.unwrap_or_default(),
        params.format.unwrap_or_default(),
    )
    .await?;
    let cache = if found.public {
        format!("public, max-age={}", found.max_age.as_secs())
    } else {
        "private, no-store".to_owned()
    };
    Ok(HttpResponse::Found()
        .insert_header((header::LOCATION, found.url))
        .insert_header((header::CACHE_CONTROL, cache))
        .finish())
}

/// An instructor's public profile, no login needed: name, bio, follower count and published
/// courses (newest first, at most 100; the rest through `GET /courses?instructor={id}`).
#[utoipa::path(
    tag = "users",
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = PublicProfile),
        (status = 400, body = ErrorBody, description = "the id is not a UUID"),
        (status = 404, body = ErrorBody, description = "not an active instructor"),
        (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody)
    )
)]
#[get("/users/{id}")]
pub async fn public_profile(
    services: web::Data<Services>,
    id: web::Path<Uuid>,
) -> ApiResult<web::Json<PublicProfile>> {
    Ok(web::Json(profile::public_profile(&services, *id).await?))
}

/// The caller's certificates, most recent first, each with its course, verification page and
/// a short-lived link to the PDF.
#[utoipa::path(
    tag = "learning",
    params(PageParams),
    security(("bearer" = [])),
    responses(
        (status = 200, body = Page<MyCertificate>),
        (status = 400, body = ErrorBody, description = "malformed query"),
        (status = 401, body = ErrorBody, description = "no valid token, or the operator token (not an account)"),
        (status = 422, body = ErrorBody, description = "a cursor this API did not give out"),
        (status = 503, body = ErrorBody)
    )
)]
#[get("/me/certificates")]
pub async fn my_certificates(
    services: web::Data<Services>,
    caller: Caller,
    params: web::Query<PageParams>,
) -> ApiResult<web::Json<Page<MyCertificate>>> {
    Ok(web::Json(
        certificates::mine(&services, &caller.0, params.limit, params.cursor.as_deref()).await?,
    ))
}
