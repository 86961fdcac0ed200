//! Extracting the caller (`Authorization: Bearer ...`) and the client's address. Who may do what
//! is decided in core.

use std::future::{Ready, ready};
use std::net::IpAddr;

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, web};
use futures::future::LocalBoxFuture;
use lectern_core::accounts::{self, ClientInfo};
use lectern_core::auth::{self, Principal, SignedUser};
use lectern_core::config::{self, ExposeSecret};
use lectern_core::{Error, Services};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// The authenticated caller: a user's access token, or the operator's `ADMIN_TOKEN`.
/// Answers 401 when the credential is missing, wrong, expired or revoked.
pub struct Caller(pub Principal);

/// Like [`Caller`], but `None` when no credential is sent (a bad one is still a 401).
pub struct MaybeCaller(pub Option<Principal>);

fn bearer(req: &HttpRequest) -> Option<String> {
    let value = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

/// Compares digests so the comparison takes the same time wherever the strings differ.
fn same_secret(a: &str, b: &str) -> bool {
    let (da, db) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    da.as_slice().ct_eq(db.as_slice()).into()
}

async fn principal(
    services: Option<web::Data<Services>>,
    token: String,
) -> Result<Principal, ApiError> {
    let services =
        services.ok_or_else(|| ApiError::Core(Error::Internal("services missing".into())))?;
    if let Some(admin) = &services.config.admin_token
        && same_secret(&token, admin.expose_secret())
    {
        return Ok(Principal::Operator);
    }
    Ok(Principal::User(
        accounts::authenticate(&services, &token).await?,
    ))
}

/// The caller a request's credential names, or `None` when it has none or a bad one (the
/// handler's own extractor then answers 401). For middleware that acts per caller.
pub async fn caller_of(req: &HttpRequest) -> Option<Principal> {
    let services = req.app_data::<web::Data<Services>>().cloned();
    principal(services, bearer(req)?).await.ok()
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let services = req.app_data::<web::Data<Services>>().cloned();
        let token = bearer(req);
        Box::pin(async move {
            let token = token.ok_or(ApiError::Core(Error::unauthenticated()))?;
            principal(services, token).await.map(Caller)
        })
    }
}

/// A user's access token with its signature checked but not its session, for the route that
/// checks the session in its own statement (see [`SignedUser`]). The operator token is refused,
/// as it is not an account.
pub struct SignedCaller(pub SignedUser);

impl FromRequest for SignedCaller {
    type Error = ApiError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let services = req.app_data::<web::Data<Services>>();
        ready(signed(services, bearer(req)).map(SignedCaller))
    }
}

fn signed(
    services: Option<&web::Data<Services>>,
    token: Option<String>,
) -> Result<SignedUser, ApiError> {
    let services =
        services.ok_or_else(|| ApiError::Core(Error::Internal("services missing".into())))?;
    let token = token.ok_or(ApiError::Core(Error::unauthenticated()))?;
    if let Some(admin) = &services.config.admin_token
        && same_secret(&token, admin.expose_secret())
    {
        return Err(ApiError::Core(auth::user_required()));
    }
    Ok(accounts::verify_signature(services, &token)?)
}

impl FromRequest for MaybeCaller {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let services = req.app_data::<web::Data<Services>>().cloned();
        let token = bearer(req);
        Box::pin(async move {
            match token {
                None => Ok(MaybeCaller(None)),
                Some(token) => principal(services, token)
                    .await
                    .map(|p| MaybeCaller(Some(p))),
            }
        })
    }
}

/// The cookie that marks a client which signed in to an account before (OWASP's device cookie).
pub const DEVICE_COOKIE: &str = "lectern_device";

/// The device cookie of a sign-in: `HttpOnly` (scripts never see it), sent only to the auth
/// routes (login and password reset are where it counts), kept for half a year.
pub fn device_cookie(services: &Services, value: String) -> actix_web::cookie::Cookie<'static> {
    actix_web::cookie::Cookie::build(DEVICE_COOKIE, value)
        .path("/api/v1/auth")
        .http_only(true)
        .secure(services.config.public_url.scheme() == "https")
        .same_site(actix_web::cookie::SameSite::Strict)
        .max_age(actix_web::cookie::time::Duration::days(180))
        .finish()
}

/// The client's IP, user agent and device cookie. `X-Forwarded-For` is believed only when the connection comes
/// from a configured trusted proxy; then the right-most address that is not a trusted proxy wins.
pub struct Client(pub ClientInfo);

impl FromRequest for Client {
    type Error = ApiError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let trusted = req
            .app_data::<web::Data<Services>>()
            .map(|s| s.config.auth.trusted_proxies.clone())
            .unwrap_or_default();
        let is_trusted = |ip: IpAddr| config::any_contains(&trusted, ip);
        let peer = req.peer_addr().map(|a| a.ip());
        let mut ip = peer;
        if peer.is_some_and(is_trusted) {
            let forwarded: Vec<IpAddr> = req
                .headers()
                .get_all("x-forwarded-for")
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(|part| part.trim().parse().ok())
                .collect();
            if let Some(client) = forwarded.iter().rev().find(|ip| !is_trusted(**ip)) {
                ip = Some(*client);
            }
        }
        let user_agent = req
            .headers()
            .get(actix_web::http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let device = req.cookie(DEVICE_COOKIE).map(|c| c.value().to_owned());
        ready(Ok(Client(ClientInfo {
            ip: ip.map(|i| i.to_string()),
            user_agent,
            device,
        })))
    }
}
