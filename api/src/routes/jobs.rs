//! Job status for the clients that started long work.

use actix_web::{HttpResponse, get, post, web};
use lectern_core::jobs::{self, JobDetail, JobState, JobView, QueueDepth};
use lectern_core::page::Page;
use lectern_core::{Error, Services};
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiResult, ErrorBody};
use crate::routes::JobAccepted;

/// State, attempts, progress and last error of a job the caller started (any job for an admin).
#[utoipa::path(
    tag = "jobs",
    params(("id" = Uuid, Path, description = "job id")),
    security(("bearer" = [])),
    responses(
        (status = 200, body = JobView),
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

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
pub struct JobQuery {
    /// queued, running, retrying, succeeded or failed.
    pub state: Option<JobState>,
    pub kind: Option<String>,
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

/// Jobs for operators (`?state=failed` lists dead letters), newest first.
#[utoipa::path(
    tag = "admin",
    params(JobQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, body = Page<JobView>, description = "a page of jobs"),
        (status = 403, body = ErrorBody, description = "not an admin")
    )
)]
#[get("/admin/jobs")]
pub async fn admin_list(
    services: web::Data<Services>,
    caller: Caller,
    query: web::Query<JobQuery>,
) -> ApiResult<web::Json<Page<JobView>>> {
    let page = jobs::admin_list(
        &services,
        &caller.0,
        query.state,
        query.kind.as_deref(),
        query.limit,
        query.cursor.as_deref(),
    )
    .await?;
    Ok(web::Json(page))
}

/// A job with its payload and every failed attempt's error.
#[utoipa::path(
    tag = "admin",
    params(("id" = Uuid, Path)),
    security(("bearer" = [])),
    responses(
        (status = 200, body = JobDetail),
        (status = 403, body = ErrorBody, description = "not an admin"),
        (status = 404, body = ErrorBody)
    )
)]
#[get("/admin/jobs/{id}")]
pub async fn admin_get(
    services: web::Data<Services>,
    caller: Caller,
    id: web::Path<Uuid>,
) -> ApiResult<web::Json<JobDetail>> {
    Ok(web::Json(jobs::admin_get(&services, &caller.0, *id).await?))
}

/// Runs a failed job again with a fresh budget of attempts.
#[utoipa::path(
    tag = "admin",
    params(("id" = Uuid, Path)),
    security(("bearer" = [])),
    responses(
        (status = 202, body = JobAccepted, description = "queued again"),
        (status = 403, body = ErrorBody, description = "not an admin"),
        (status = 409, body = ErrorBody, description = "job_not_failed")
    )
)]
#[post("/admin/jobs/{id}/retry")]
pub async fn admin_retry(
    services: web::Data<Services>,
    caller: Caller,
    id: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    let ids = [*id];
    let mut retried = jobs::admin_retry(&services, &caller.0, Some(&ids), None).await?;
    match retried.pop() {
        Some(job) => Ok(JobAccepted::response(job)),
        None => {
            jobs::get(&services.db, *id)
                .await?
                .ok_or(Error::NotFound("job"))?;
            Err(Error::Conflict {
                code: "job_not_failed",
                message: "only failed jobs can be retried".into(),
            }
            .into())
        }
    }
}

#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkRetry {
    /// Retry every failed job of this kind.
    pub kind: String,
}

/// Runs every failed job of a kind again.
#[utoipa::path(
    tag = "admin",
    request_body = BulkRetry,
    security(("bearer" = [])),
    responses(
        (status = 202, body = Retried, description = "how many jobs run again"),
        (status = 403, body = ErrorBody, description = "not an admin")
    )
)]
#[post("/admin/jobs/retry")]
pub async fn admin_bulk_retry(
    services: web::Data<Services>,
    caller: Caller,
    body: web::Json<BulkRetry>,
) -> ApiResult<HttpResponse> {
    let retried = jobs::admin_retry(&services, &caller.0, None, Some(&body.kind)).await?;
    Ok(HttpResponse::Accepted().json(Retried {
        retried: retried.len(),
    }))
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Retried {
    /// How many failed jobs were queued again.
    pub retried: usize,
}

/// Jobs per queue and state, and the age of the oldest due job. Every queue is on the one page
/// (`next_cursor` is always `null`).
#[utoipa::path(
    tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, body = Page<QueueDepth>, description = "every queue"),
        (status = 403, body = ErrorBody, description = "not an admin")
    )
)]
#[get("/admin/queues")]
pub async fn admin_queues(
    services: web::Data<Services>,
    caller: Caller,
) -> ApiResult<web::Json<Page<QueueDepth>>> {
    Ok(web::Json(Page::whole(
        jobs::admin_queues(&services, &caller.0).await?,
    )))
}

#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NoopRequest {
    /// How many jobs to enqueue, 1 to 10,000 (default 1).
    #[serde(default = "one")]
    pub count: u32,
    /// How long each job holds its worker slot, in milliseconds (default 0, at most 600,000).
    #[serde(default)]
    pub sleep_ms: u32,
    /// Record each job's effect in the ledger (`job_ledger`), in the transaction that completes it.
    #[serde(default)]
    pub record: bool,
    /// The queue to run on (default `default`).
    #[serde(default)]
    pub queue: Option<jobs::Queue>,
    /// Make every attempt fail, `retryable` (retried until attempts run out) or `permanent`.
    #[serde(default)]
    pub fail: Option<jobs::NoopFailure>,
}

fn one() -> u32 {
    1
}

/// Enqueues diagnostic no-op jobs: a smoke test of a queue's workers, end to end.
#[utoipa::path(
    tag = "admin",
    request_body = NoopRequest,
    security(("bearer" = [])),
    responses(
        (status = 202, body = NoopQueued, description = "the queued jobs"),
        (status = 403, body = ErrorBody, description = "not an admin")
    )
)]
#[post("/admin/jobs/noop")]
pub async fn admin_noop(
    services: web::Data<Services>,
    caller: Caller,
    body: web::Json<NoopRequest>,
) -> ApiResult<HttpResponse> {
    let body = body.into_inner();
    let noop = jobs::Noop {
        sleep_ms: body.sleep_ms,
        record: body.record,
        queue: body.queue.unwrap_or(jobs::Queue::Default),
        fail: body.fail,
    };
    let ids = jobs::admin_enqueue_noops(&services, &caller.0, body.count, noop).await?;
    Ok(HttpResponse::Accepted().json(NoopQueued {
        queued: ids.len(),
        ids,
    }))
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct NoopQueued {
    /// How many jobs were queued.
    pub queued: usize,
    /// Their ids, to follow at `GET /jobs/{id}`.
    pub ids: Vec<Uuid>,
}
