//! The one place where errors become HTTP responses:
//! `{"error": {"code", "message", "fields"}}` with a stable code and the right status.

use std::collections::BTreeMap;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use lectern_core::Error as CoreError;
use serde::Serialize;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable, snake_case.
    pub code: String,
    /// A sentence for people.
    pub message: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error("{0}")]
    Malformed(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("no route for this method and path")]
    NoRoute,
}

impl ApiError {
    fn code(&self) -> &str {
        match self {
            ApiError::Core(e) => match e {
                CoreError::Validation(_) => "validation_failed",
                CoreError::Unauthenticated { code, .. } | CoreError::Forbidden { code, .. } => code,
                CoreError::RateLimited { .. } => "rate_limited",
                CoreError::PaymentRequired { .. } => "payment_required",
                CoreError::NotFound(_) => "not_found",
                CoreError::Conflict { code, .. } | CoreError::Unprocessable { code, .. } => code,
                CoreError::Unavailable(..) => "service_unavailable",
                CoreError::Internal(_) => "internal_error",
            },
            ApiError::Malformed(_) => "malformed_request",
            ApiError::TooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::NoRoute => "not_found",
        }
    }

    fn message(&self) -> String {
        match self {
            ApiError::Core(CoreError::Internal(_)) => "something went wrong on our side".to_owned(),
            ApiError::Core(CoreError::Unavailable(dep, _)) => {
                format!("the {dep} is unavailable right now; try again shortly")
            }
            other => other.to_string(),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Core(e) => match e {
                CoreError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
                CoreError::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
                CoreError::Forbidden { .. } => StatusCode::FORBIDDEN,
                CoreError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
                CoreError::PaymentRequired { .. } => StatusCode::PAYMENT_REQUIRED,
                CoreError::NotFound(_) => StatusCode::NOT_FOUND,
                CoreError::Conflict { .. } => StatusCode::CONFLICT,
                CoreError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                CoreError::Unavailable(..) => StatusCode::SERVICE_UNAVAILABLE,
                CoreError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ApiError::Malformed(_) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::NoRoute => StatusCode::NOT_FOUND,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            ApiError::Core(CoreError::Internal(source)) => {
                tracing::error!(error = %error_chain(source.as_ref()), "internal error");
            }
            ApiError::Core(CoreError::Unavailable(dep, source)) => {
                tracing::warn!(dependency = %dep, error = %error_chain(source.as_ref()), "dependency unavailable");
            }
            _ => {}
        }
        let fields = match self {
            ApiError::Core(CoreError::Validation(fields)) => fields.0.clone(),
            _ => BTreeMap::new(),
        };
        let mut response = HttpResponse::build(self.status_code());
        if let ApiError::Core(CoreError::Unavailable(..)) = self {
            response.insert_header((header::RETRY_AFTER, HeaderValue::from_static("5")));
        }
        if let ApiError::Core(CoreError::Unauthenticated { .. }) = self {
            response.insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
        }
        if let ApiError::Core(CoreError::RateLimited { retry_after }) = self {
            response.insert_header((
                header::RETRY_AFTER,
                retry_after.as_secs().max(1).to_string(),
            ));
        }
        response.json(ErrorBody {
            error: ErrorDetail {
                code: self.code().to_owned(),
                message: self.message(),
                fields,
            },
        })
    }
}

/// "outer: middle: inner", for logs.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

pub type ApiResult<T> = Result<T, ApiError>;

/// The largest JSON body accepted (also the most `input_guard` reads to check one).
pub const JSON_LIMIT: usize = 64 * 1024;

/// Malformed JSON bodies become 400/413/415 with the error body, never actix's plain text.
pub fn json_config() -> actix_web::web::JsonConfig {
    use actix_web::error::JsonPayloadError;
    actix_web::web::JsonConfig::default()
        .limit(JSON_LIMIT)
        .error_handler(|err, _req| {
            let api = match &err {
                JsonPayloadError::ContentType => {
                    ApiError::UnsupportedMediaType("send the body as application/json".into())
                }
                JsonPayloadError::Overflow { limit }
                | JsonPayloadError::OverflowKnownLength { limit, .. } => {
                    ApiError::TooLarge(format!("the JSON body is larger than {limit} bytes"))
                }
                JsonPayloadError::Deserialize(e) => {
                    ApiError::Malformed(format!("invalid JSON body: {e}"))
                }
                other => ApiError::Malformed(format!("invalid JSON body: {other}")),
            };
            api.into()
        })
}

pub fn path_config() -> actix_web::web::PathConfig {
    actix_web::web::PathConfig::default()
        .error_handler(|err, _req| ApiError::Malformed(format!("invalid path: {err}")).into())
}

pub fn query_config() -> actix_web::web::QueryConfig {
    actix_web::web::QueryConfig::default().error_handler(|err, _req| {
        ApiError::Malformed(format!("invalid query string: {err}")).into()
    })
}
