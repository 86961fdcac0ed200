//! Job status for the clients that started long work.

use actix_web::{get, web};
use lectern_core::Services;
use lectern_core::jobs::{self, JobView};
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiResult, ErrorBody};

/// State, attempts, progress and last error of a job the caller started (any job for an admin).
#[utoipa::path(
    tag = "jobs",
    params(("id" = Uuid, Path, description = "job id")),
    security(("bearer" = [])),
    responses(
        (status = 200, body = JobView),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "no such job, or not the caller's")
    )
)]
#[get("/jobs/{id}")]
pub async fn get_job(
    services: web::Data<Services>,
    caller: Caller,
    id: web::Path<Uuid>,
) -> ApiResult<web::Json<JobView>> {
    let job = jobs::get_visible(&services.db, *id, caller.0.user_id(), caller.0.is_admin()).await?;
    Ok(web::Json(job))
}
