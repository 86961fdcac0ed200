//! CORS for web clients on other origins (`CORS_ALLOWED_ORIGINS`, see `lectern_core::config`).
//!
//! actix-cors grants the allowed origins, on every route (HLS playlists and the storyboard
//! included). Any other origin gets no grant, and its requests are still answered as usual:
//! CORS is a rule browsers apply, not an access control, and non-browser clients send whatever
//! `Origin` they like. A preflight from such an origin gets a plain 204 without a grant (the
//! browser then stops), never actix-cors's 400.

use actix_cors::Cors;
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{HttpResponse, web};
use lectern_core::Services;
use lectern_core::config::AllowedOrigins;

use crate::error::{ErrorBody, ErrorDetail};

/// Request headers a browser client may send: the bearer token, JSON bodies, idempotency keys,
/// conditional requests and a request id of its own.
const ALLOWED_HEADERS: [HeaderName; 7] = [
    header::AUTHORIZATION,
    header::CONTENT_TYPE,
    header::ACCEPT,
    header::IF_NONE_MATCH,
    header::IF_MATCH,
    HeaderName::from_static("idempotency-key"),
    HeaderName::from_static("x-request-id"),
];

/// Response headers a browser client may read beyond the CORS-safelisted ones.
const EXPOSED_HEADERS: [HeaderName; 7] = [
    header::LOCATION,
    header::RETRY_AFTER,
    header::ETAG,
    header::WWW_AUTHENTICATE,
    header::CONTENT_DISPOSITION,
    HeaderName::from_static("idempotent-replayed"),
    HeaderName::from_static("x-request-id"),
];

/// How long a browser may cache a preflight's answer (Chromium caps it at two hours).
pub const MAX_AGE_SECS: usize = 3600;

/// The actix-cors middleware for the configured origins. No credentials: the API authenticates
/// with bearer tokens, and its one cookie (the device cookie, a throttling aid on the auth
/// routes) is not needed cross-origin.
pub fn layer(origins: &AllowedOrigins) -> Cors {
    let origins = origins.clone();
    Cors::default()
        .allowed_origin_fn(move |origin, _head| {
            origin.to_str().is_ok_and(|origin| origins.allows(origin))
        })
        .allowed_methods([
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allowed_headers(ALLOWED_HEADERS)
        .expose_headers(EXPOSED_HEADERS)
        .max_age(MAX_AGE_SECS)
        .block_on_origin_mismatch(false)
}

fn is_preflight(req: &ServiceRequest) -> bool {
    req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// Wraps [`layer`]: answers a preflight from an origin that is not allowed with a 204 and no
/// grant, and gives a refused preflight from an allowed origin (a method or header that is not
/// allowed) the API's error model instead of actix-cors's plain text.
pub async fn preflight(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    if !is_preflight(&req) {
        return Ok(next.call(req).await?.map_into_left_body());
    }
    let allowed = match (
        req.headers()
            .get(header::ORIGIN)
            .and_then(|o| o.to_str().ok()),
        req.app_data::<web::Data<Services>>(),
    ) {
        (Some(origin), Some(services)) => services.config.cors_allowed_origins.allows(origin),
        _ => false,
    };
    if !allowed {
        let response = HttpResponse::NoContent()
            .insert_header((
                header::VARY,
                HeaderValue::from_static(
                    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
                ),
            ))
            .finish();
        return Ok(req.into_response(response).map_into_right_body());
    }
    let res = next.call(req).await?;
    if res.status() != StatusCode::BAD_REQUEST {
        return Ok(res.map_into_left_body());
    }
    let (req, res) = res.into_parts();
    let reason = actix_web::body::to_bytes(res.into_body())
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let body = ErrorBody {
        error: ErrorDetail {
            code: "cors_preflight_refused".into(),
            message: format!("this cross-origin request is not allowed: {reason}"),
            fields: Default::default(),
        },
    };
    Ok(ServiceResponse::new(req, HttpResponse::BadRequest().json(body)).map_into_right_body())
}
