//! `Idempotency-Key` on the creating `POST`s ([`ROUTES`]): the HTTP side of
//! `lectern_core::idempotency`. A request with the header is fingerprinted (method, path, body),
//! reserved for its caller, run once, and its successful response kept; a retry gets that
//! response again, marked `Idempotent-Replayed: true`. Requests without the header, to other
//! routes, or without a valid credential (the handler answers 401) pass through untouched.
//!
//! The direct multipart upload (`POST /media`) is not covered: fingerprinting its body means
//! reading up to `MEDIA_DIRECT_MAX_BYTES` before the handler streams it, so clients that need a
//! safe retry start an upload with `POST /media/uploads` instead.

use actix_web::HttpResponse;
use actix_web::body::{BoxBody, MessageBody, to_bytes};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::{Method, StatusCode, header};
use actix_web::middleware::Next;
use actix_web::web::{Bytes, BytesMut, Data};
use futures::StreamExt;
use lectern_core::Services;
use lectern_core::idempotency::{self, Claim, Key, Reservation, StoredResponse};

use crate::error::{ApiError, JSON_LIMIT};

pub const HEADER: &str = "idempotency-key";
pub const REPLAYED: &str = "idempotent-replayed";

/// The `POST` routes that create something and honour `Idempotency-Key`.
pub const ROUTES: &[&str] = &[
    "/api/v1/courses",
    "/api/v1/courses/{id}/duplicate",
    "/api/v1/courses/{id}/sections",
    "/api/v1/courses/{id}/reviews",
    "/api/v1/courses/{id}/enroll",
    "/api/v1/media/uploads",
    "/api/v1/me/export",
    "/api/v1/admin/categories",
];

/// Response headers kept with the body for a replay.
const KEPT_HEADERS: &[header::HeaderName] = &[header::CONTENT_TYPE, header::LOCATION];

/// Whether `path` fits `template`, where a `{name}` segment (on either side) stands for any one.
fn fits(template: &str, path: &str) -> bool {
    let (mut t, mut p) = (template.split('/'), path.split('/'));
    loop {
        match (t.next(), p.next()) {
            (None, None) => return true,
            (Some(a), Some(b)) => {
                let wild = |s: &str| s.starts_with('{') && s.ends_with('}');
                if !((wild(a) && !b.is_empty()) || (wild(b) && !a.is_empty()) || a == b) {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

pub fn covers(method: &Method, path: &str) -> bool {
    method == Method::POST && ROUTES.iter().any(|t| fits(t, path))
}

/// The key of a request that ended without an effect (an error answer), given back so a retry
/// runs again. A request cut off mid-way (the client left, the process died) is not released:
/// it may have acted, so its key stays held until its lease ends.
struct Held {
    services: Data<Services>,
    claim: Claim,
}

impl Held {
    async fn release(self) {
        if let Err(e) = idempotency::release(&self.services.db, &self.claim).await {
            tracing::warn!(error = %e, "could not release an idempotency key; it frees itself when its lease ends");
        }
    }
}

fn error(e: impl Into<ApiError>) -> actix_web::Error {
    actix_web::Error::from(e.into())
}

pub async fn middleware<B: MessageBody + 'static>(
    mut req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let mut sent = req.headers().get_all(HEADER);
    let raw = match (sent.next(), sent.next()) {
        (Some(raw), None) if covers(req.method(), req.path()) => raw.as_bytes().to_vec(),
        (Some(_), Some(_)) if covers(req.method(), req.path()) => {
            return Err(error(lectern_core::Error::invalid(
                "Idempotency-Key",
                "must be sent once",
            )));
        }
        _ => {
            return next
                .call(req)
                .await
                .map(ServiceResponse::map_into_boxed_body);
        }
    };
    let Some(services) = req.app_data::<Data<Services>>().cloned() else {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body);
    };
    // The key belongs to the caller; without a valid credential the handler answers 401.
    let Some(caller) = crate::auth::caller_of(req.request()).await else {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body);
    };
    let key = Key::parse(&raw).map_err(error)?;

    let mut payload = std::mem::replace(req.parts_mut().1, Payload::None);
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk: Bytes = chunk?;
        body.extend_from_slice(&chunk);
        if body.len() > JSON_LIMIT {
            return Err(error(ApiError::TooLarge(format!(
                "the body is larger than {JSON_LIMIT} bytes"
            ))));
        }
    }
    let body = body.freeze();
    let target = match req.query_string() {
        "" => req.path().to_owned(),
        q => format!("{}?{q}", req.path()),
    };
    let reservation = idempotency::reserve(
        &services,
        &caller,
        &key,
        req.method().as_str(),
        &target,
        &body,
    )
    .await
    .map_err(error)?;
    let claim = match reservation {
        Reservation::Replay(stored) => {
            let response = replay(stored);
            return Ok(req.into_response(response));
        }
        Reservation::Proceed(claim) => claim,
    };
    let held = Held {
        services: services.clone(),
        claim,
    };
    req.set_payload(Payload::from(body));
    let res = match next.call(req).await {
        Ok(res) => res,
        Err(e) => {
            held.release().await;
            return Err(e);
        }
    };
    // Only a success had an effect worth replaying; after an error a retry runs again.
    if !res.status().is_success() {
        held.release().await;
        return Ok(res.map_into_boxed_body());
    }
    let (http_req, res) = res.into_parts();
    let (head, body) = res.into_parts();
    let bytes = match to_bytes(body).await {
        Ok(bytes) => bytes,
        Err(e) => {
            held.release().await;
            let e: Box<dyn std::error::Error> = e.into();
            return Err(actix_web::error::ErrorInternalServerError(e.to_string()));
        }
    };
    let stored = StoredResponse {
        status: head.status().as_u16(),
        headers: KEPT_HEADERS
            .iter()
            .filter_map(|name| {
                let value = head.headers().get(name)?.to_str().ok()?;
                Some((name.as_str().to_owned(), value.to_owned()))
            })
            .collect(),
        body: bytes.to_vec(),
    };
    if let Err(e) = idempotency::complete(&held.services.db, &held.claim, &stored).await {
        // The effect happened: the key stays held until its lease ends rather than let a
        // retry act twice.
        tracing::error!(error = %e, "could not store the response of an idempotent request");
    }
    Ok(ServiceResponse::new(
        http_req,
        head.set_body(bytes).map_into_boxed_body(),
    ))
}

fn replay(stored: StoredResponse) -> HttpResponse {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let mut response = HttpResponse::build(status);
    for (name, value) in stored.headers {
        response.insert_header((name, value));
    }
    response.insert_header((REPLAYED, "true"));
    response.body(stored.body)
}

/// Documents the header (and the 409/422 it can cause) on every covered operation of the
/// OpenAPI document, without touching each handler's annotation.
pub fn document(api: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::header::HeaderBuilder;
    use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
    use utoipa::openapi::response::ResponseBuilder;
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, Required};

    let error_response = |description: &str| {
        RefOr::T(
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build(),
        )
    };
    for (path, item) in api.paths.paths.iter_mut() {
        if !ROUTES.iter().any(|t| fits(t, path)) {
            continue;
        }
        let Some(op) = item.post.as_mut() else {
            continue;
        };
        let parameter = ParameterBuilder::new()
            .name("Idempotency-Key")
            .parameter_in(ParameterIn::Header)
            .required(Required::False)
            .description(Some(
                "A key of the caller's choosing (1 to 255 printable ASCII characters, \
                 optionally an RFC 8941 quoted string). The same key with the same request \
                 within 24 hours replays the first successful response \
                 (`Idempotent-Replayed: true`) instead of acting again.",
            ))
            .schema(Some(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .min_length(Some(1))
                    .max_length(Some(idempotency::MAX_KEY_LEN)),
            ))
            .build();
        let parameters = op.parameters.get_or_insert_with(Vec::new);
        if !parameters.iter().any(|p| p.name == "Idempotency-Key") {
            parameters.push(parameter);
        }
        let responses = &mut op.responses.responses;
        for (code, response) in responses.iter_mut() {
            if code.starts_with('2')
                && let RefOr::T(response) = response
            {
                response.headers.insert(
                    "Idempotent-Replayed".into(),
                    HeaderBuilder::new()
                        .schema(ObjectBuilder::new().schema_type(Type::String))
                        .description(Some("`true` when this is a replayed response"))
                        .build(),
                );
            }
        }
        responses.entry("409".into()).or_insert_with(|| {
            error_response("`idempotency_key_in_flight`: a request with this key is still running")
        });
        responses.entry("422".into()).or_insert_with(|| {
            error_response("`idempotency_key_reused`: the key was used with another request")
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_creating_posts_are_covered() {
        assert!(covers(&Method::POST, "/api/v1/courses"));
        assert!(covers(&Method::POST, "/api/v1/courses/rust-101/enroll"));
        assert!(covers(&Method::POST, "/api/v1/media/uploads"));
        assert!(covers(&Method::POST, "/api/v1/me/export"));
        assert!(!covers(&Method::GET, "/api/v1/courses"));
        assert!(!covers(&Method::POST, "/api/v1/media"));
        assert!(!covers(&Method::POST, "/api/v1/courses//enroll"));
        assert!(!covers(&Method::POST, "/api/v1/courses/x/enroll/y"));
        assert!(!covers(&Method::POST, "/api/v1/media/uploads/x/complete"));
        assert!(fits(
            "/api/v1/courses/{id}/sections",
            "/api/v1/courses/{course_id}/sections"
        ));
    }
}
