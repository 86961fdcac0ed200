//! Registration, login, token refresh, logout, sessions, email verification, password reset.

use actix_web::{HttpResponse, delete, get, post, web};
use lectern_core::Services;
use lectern_core::accounts::{self, AuthResponse, PasswordChange, Registration, SessionView};
use serde::Deserialize;
use uuid::Uuid;

use crate::auth::{Caller, Client, MaybeCaller, device_cookie};
use crate::error::{ApiResult, ErrorBody};
use lectern_core::page::Page;

/// Creates an account (student or instructor; admin only when an admin calls) and signs it in.
/// A verification mail is queued.
#[utoipa::path(
    tag = "auth",
    request_body = Registration,
    responses(
        (status = 401, body = ErrorBody, description = "a bearer token was sent but is not valid (the token is optional here)"),
        (status = 201, body = AuthResponse, description = "the account, signed in; a verification mail is queued", headers(("Set-Cookie" = String, description = "`lectern_device`: the device cookie (HttpOnly, path `/api/v1/auth`) that spares this client the lockouts of others' failures"))),
        (status = 409, body = ErrorBody, description = "email_taken"),
        (status = 429, body = ErrorBody, description = "rate_limited: too many registrations from this address; see Retry-After")
    )
)]
#[post("/auth/register")]
pub async fn register(
    services: web::Data<Services>,
    caller: MaybeCaller,
    client: Client,
    body: web::Json<Registration>,
) -> ApiResult<HttpResponse> {
    let out = accounts::register(&services, &body, caller.0.as_ref(), &client.0).await?;
    Ok(with_device_cookie(&services, HttpResponse::Created(), &out))
}

/// The sign-in's answer, with its device cookie.
fn with_device_cookie(
    services: &Services,
    mut response: actix_web::HttpResponseBuilder,
    out: &AuthResponse,
) -> HttpResponse {
    if let Some(value) = out.device_cookie.clone() {
        response.cookie(device_cookie(services, value));
    }
    response.json(out)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
}

/// Signs in. Wrong email or password get the same answer. Repeated failures lock the account for
/// a while against failing clients; a client holding the account's device cookie (set by an
/// earlier sign-in) is throttled on its own failures only.
#[utoipa::path(
    tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, body = AuthResponse, description = "signed in", headers(("Set-Cookie" = String, description = "`lectern_device`: the device cookie (HttpOnly, path `/api/v1/auth`) that spares this client the lockouts of others' failures"))),
        (status = 401, body = ErrorBody, description = "invalid_credentials"),
        (status = 403, body = ErrorBody, description = "account_suspended"),
        (status = 429, body = ErrorBody, description = "rate_limited, with Retry-After")
    )
)]
#[post("/auth/login")]
pub async fn login(
    services: web::Data<Services>,
    client: Client,
    body: web::Json<LoginRequest>,
) -> ApiResult<HttpResponse> {
    let out = accounts::login(&services, &body.email, &body.password, &client.0).await?;
    Ok(with_device_cookie(&services, HttpResponse::Ok(), &out))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

/// Trades a refresh token for a new pair. Each refresh token works once; reusing one revokes its session.
#[utoipa::path(
    tag = "auth",
    request_body = RefreshRequest,
    responses(
        (status = 200, body = AuthResponse, description = "a new pair"),
        (status = 401, body = ErrorBody, description = "the refresh token is unknown, spent or expired")
    )
)]
#[post("/auth/refresh")]
pub async fn refresh(
    services: web::Data<Services>,
    client: Client,
    body: web::Json<RefreshRequest>,
) -> ApiResult<web::Json<AuthResponse>> {
    Ok(web::Json(
        accounts::refresh(&services, &body.refresh_token, &client.0).await?,
    ))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct LogoutRequest {
    /// End every session of the account, not only this one.
    #[serde(default)]
    pub all: bool,
}

/// Ends this session (or all of them with `{"all": true}`); their access tokens stop working at once.
#[utoipa::path(
    tag = "auth",
    request_body(content = Option<LogoutRequest>, description = "optional"),
    security(("bearer" = [])),
    responses((status = 204, description = "signed out"))
)]
#[post("/auth/logout")]
pub async fn logout(
    services: web::Data<Services>,
    caller: Caller,
    client: Client,
    body: Option<web::Json<LogoutRequest>>,
) -> ApiResult<HttpResponse> {
    let user = caller.0.require_user()?;
    let all = body.is_some_and(|b| b.all);
    accounts::logout(&services, user, all, &client.0).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The caller's live sessions: device, IP, creation and last activity. Every live session is
/// on the one page (`next_cursor` is always `null`).
#[utoipa::path(
    tag = "auth",
    security(("bearer" = [])),
    responses((status = 200, body = Page<SessionView>, description = "every live session"))
)]
#[get("/auth/sessions")]
pub async fn sessions(
    services: web::Data<Services>,
    caller: Caller,
) -> ApiResult<web::Json<Page<SessionView>>> {
    let user = caller.0.require_user()?;
    Ok(web::Json(Page::whole(
        accounts::list_sessions(&services, user).await?,
    )))
}

/// Revokes one of the caller's sessions.
#[utoipa::path(
    tag = "auth",
    params(("id" = Uuid, Path)),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "revoked"),
        (status = 404, body = ErrorBody, description = "no such session of the caller's")
    )
)]
#[delete("/auth/sessions/{id}")]
pub async fn revoke_session(
    services: web::Data<Services>,
    caller: Caller,
    client: Client,
    id: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    let user = caller.0.require_user()?;
    accounts::revoke_session(&services, user, *id, &client.0).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct TokenRequest {
    pub token: String,
}

/// Confirms the account's email address with the token from the verification mail.
#[utoipa::path(
    tag = "auth",
    request_body = TokenRequest,
    responses(
        (status = 200, body = accounts::UserView, description = "verified"),
        (status = 422, body = ErrorBody, description = "the token is unknown, used or expired")
    )
)]
#[post("/auth/verify-email")]
pub async fn verify_email(
    services: web::Data<Services>,
    client: Client,
    body: web::Json<TokenRequest>,
) -> ApiResult<web::Json<accounts::UserView>> {
    Ok(web::Json(
        accounts::verify_email(&services, &body.token, &client.0).await?,
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ResetRequest {
    pub email: String,
}

/// Mails a password-reset link when the account exists; the answer is the same either way.
#[utoipa::path(
    tag = "auth",
    request_body = ResetRequest,
    responses(
        (status = 202, body = Message, description = "the same answer whether or not the account exists"),
        (status = 429, body = ErrorBody, description = "rate_limited: too many resets for this address or client; see Retry-After")
    )
)]
#[post("/auth/password-reset")]
pub async fn password_reset(
    services: web::Data<Services>,
    client: Client,
    body: web::Json<ResetRequest>,
) -> ApiResult<HttpResponse> {
    accounts::request_password_reset(&services, &body.email, &client.0).await?;
    Ok(HttpResponse::Accepted().json(Message {
        message: "if an account uses this address, a reset link is on its way".into(),
    }))
}

/// A sentence for people, where there is nothing else to answer.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Message {
    pub message: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ResetConfirm {
    pub token: String,
    pub password: String,
}

/// Sets a new password with the token from the reset mail; every session of the account ends.
#[utoipa::path(
    tag = "auth",
    request_body = ResetConfirm,
    responses(
        (status = 204, description = "the password is changed; every session ended"),
        (status = 422, body = ErrorBody, description = "the token is unknown, used or expired, or the password is too weak")
    )
)]
#[post("/auth/password-reset/confirm")]
pub async fn password_reset_confirm(
    services: web::Data<Services>,
    client: Client,
    body: web::Json<ResetConfirm>,
) -> ApiResult<HttpResponse> {
    accounts::confirm_password_reset(&services, &body.token, &body.password, &client.0).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Changes the caller's password (the current one confirms it): every other session ends and
/// every outstanding reset link stops working.
#[utoipa::path(
    tag = "auth",
    request_body = PasswordChange,
    security(("bearer" = [])),
    responses(
        (status = 204, description = "changed; every other session ended"),
        (status = 422, body = ErrorBody, description = "the current password is wrong, or the new one too weak"),
        (status = 429, body = ErrorBody, description = "rate_limited: too many wrong current passwords; see Retry-After")
    )
)]
#[post("/auth/password")]
pub async fn change_password(
    services: web::Data<Services>,
    caller: Caller,
    client: Client,
    body: web::Json<PasswordChange>,
) -> ApiResult<HttpResponse> {
    let user = caller.0.require_user()?;
    accounts::change_password(&services, user, &body, &client.0).await?;
    Ok(HttpResponse::NoContent().finish())
}
