//! Extracting the caller from `Authorization: Bearer ...`. Who may do what is decided in core.

use std::future::{Ready, ready};

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, web};
use lectern_core::auth::Principal;
use lectern_core::{Error, Services};
use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// The authenticated caller. Answers 401 when the credential is missing or wrong.
pub struct Caller(pub Principal);

fn bearer(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(actix_web::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Compares digests so the comparison takes the same time wherever the strings differ.
fn same_secret(a: &str, b: &str) -> bool {
    let (da, db) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    da.iter()
        .zip(db.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let services = req.app_data::<web::Data<Services>>();
        let principal = match (
            bearer(req),
            services.and_then(|s| s.config.admin_token.clone()),
        ) {
            (Some(token), Some(admin)) if same_secret(token, admin.expose()) => {
                Ok(Principal::Operator)
            }
            _ => Err(ApiError::Core(Error::Unauthenticated)),
        };
        ready(principal.map(Caller))
    }
}
