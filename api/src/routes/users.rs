//! The caller's profile and follows.

use actix_web::{HttpResponse, delete, get, patch, post, web};
use lectern_core::Services;
use lectern_core::accounts::{self, ProfilePatch, UserView};
use uuid::Uuid;

use crate::auth::{Caller, Client};
use crate::error::{ApiResult, ErrorBody};
use crate::routes::JobAccepted;

/// The caller's profile and notification preferences.
#[utoipa::path(tag = "users", security(("bearer" = [])), responses((status = 200, body = UserView, description = "the caller")))]
#[get("/me")]
pub async fn me(services: web::Data<Services>, caller: Caller) -> ApiResult<web::Json<UserView>> {
    let user = caller.0.require_user()?;
    Ok(web::Json(accounts::me(&services, user).await?))
}

/// Changes name, bio or notification preferences.
#[utoipa::path(
    tag = "users",
    request_body = ProfilePatch,
    security(("bearer" = [])),
    responses((status = 200, body = UserView, description = "the changed profile"))
)]
#[patch("/me")]
pub async fn update_me(
    services: web::Data<Services>,
    caller: Caller,
    body: web::Json<ProfilePatch>,
) -> ApiResult<web::Json<UserView>> {
    let user = caller.0.require_user()?;
    Ok(web::Json(
        accounts::update_me(&services, user, &body).await?,
    ))
}

/// Follows an instructor (idempotent).
#[utoipa::path(
    tag = "users",
    params(("id" = Uuid, Path, description = "the instructor's user id")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "followed"),
        (status = 404, body = ErrorBody, description = "no active instructor with this id (or the caller's own)")
    )
)]
#[post("/users/{id}/follow")]
pub async fn follow(
    services: web::Data<Services>,
    caller: Caller,
    id: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    let user = caller.0.require_user()?;
    accounts::follow(&services, user, *id).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Stops following an instructor (idempotent).
#[utoipa::path(
    tag = "users",
    params(("id" = Uuid, Path, description = "the instructor's user id")),
    security(("bearer" = [])),
    responses((status = 204, description = "not followed (any more)"))
)]
#[delete("/users/{id}/follow")]
pub async fn unfollow(
    services: web::Data<Services>,
    caller: Caller,
    id: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    let user = caller.0.require_user()?;
    accounts::unfollow(&services, user, *id).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Starts an export of everything Lectern stores about the caller; a link to the archive is mailed.
#[utoipa::path(
    tag = "users",
    security(("bearer" = [])),
    responses(
        (status = 202, body = JobAccepted, description = "the export job"),
        (status = 429, body = ErrorBody, description = "rate_limited: at most 3 exports a day; see Retry-After")
    )
)]
#[post("/me/export")]
pub async fn export(
    services: web::Data<Services>,
    caller: Caller,
    client: Client,
) -> ApiResult<HttpResponse> {
    let user = caller.0.require_user()?;
    let job = accounts::privacy::request_export(&services, user, &client.0).await?;
    Ok(JobAccepted::response(job))
}

#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
pub struct DeleteAccount {
    /// The current password, to confirm.
    pub password: String,
}

/// Deletes the caller's account: personal data erased, every session ended.
#[utoipa::path(
    tag = "users",
    request_body = DeleteAccount,
    security(("bearer" = [])),
    responses(
        (status = 204, description = "deleted; every session ended"),
        (status = 422, body = ErrorBody, description = "the password is wrong"),
        (status = 429, body = ErrorBody, description = "rate_limited: too many wrong passwords; see Retry-After")
    )
)]
#[delete("/me")]
pub async fn delete_me(
    services: web::Data<Services>,
    caller: Caller,
    body: web::Json<DeleteAccount>,
) -> ApiResult<HttpResponse> {
    let user = caller.0.require_user()?;
    accounts::privacy::delete_account(&services, user, &body.password).await?;
    Ok(HttpResponse::NoContent().finish())
}
