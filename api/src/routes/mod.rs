//! Routes, grouped by area. Each handler parses, calls a core service, and maps the result.

pub mod admin;
pub mod analytics;
pub mod auth;
pub mod courses;
pub mod jobs;
pub mod media;
pub mod notifications;
pub mod ops;
pub mod storefront;
pub mod users;

use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Lectern API",
        description = "Online-course backend: accounts, courses, media pipelines, learning, analytics.",
        license(name = "AGPL-3.0-or-later")
    ),
    paths(crate::ws::connect),
    components(schemas(crate::error::ErrorBody, crate::error::ErrorDetail)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

/// `202 Accepted` for long work: the job to follow at `GET /jobs/{id}`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct JobAccepted {
    pub job: lectern_core::jobs::JobReference,
}

impl JobAccepted {
    pub fn response(job: lectern_core::jobs::JobReference) -> actix_web::HttpResponse {
        actix_web::HttpResponse::Accepted().json(JobAccepted { job })
    }
}

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}
