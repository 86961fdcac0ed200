//! Liveness and readiness for load balancers and orchestrators.

use actix_web::{HttpResponse, get, web};
use lectern_core::Services;
use lectern_core::health::{self, Readiness};

/// The process is up (it says nothing about its dependencies).
#[utoipa::path(tag = "ops", responses((status = 200, body = Alive, description = "alive")))]
#[get("/healthz")]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Alive { status: "ok" })
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Alive {
    /// Always `ok`.
    pub status: &'static str,
}

/// PostgreSQL, Redis and storage all answer; 503 with the failing checks otherwise.
#[utoipa::path(
    tag = "ops",
    responses(
        (status = 200, body = Readiness, description = "ready"),
        (status = 503, body = Readiness, description = "a dependency is down")
    )
)]
#[get("/readyz")]
pub async fn readyz(services: web::Data<Services>) -> HttpResponse {
    let readiness = health::readiness(&services).await;
    if readiness.ready {
        HttpResponse::Ok().json(readiness)
    } else {
        HttpResponse::ServiceUnavailable().json(readiness)
    }
}
