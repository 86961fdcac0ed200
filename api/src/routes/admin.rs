//! Operator routes.

use actix_web::{HttpResponse, get, post, web};
use lectern_core::{Services, email};
use serde::Deserialize;

use crate::auth::Caller;
use crate::error::{ApiResult, ErrorBody};
use crate::routes::JobAccepted;
use lectern_core::accounts::AuditEntry;
use lectern_core::page::Page;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestEmailRequest {
    /// Where to send the test message.
    pub to: String,
    /// Optional text included in the message (at most 500 characters).
    pub note: Option<String>,
}

/// Queues a test message through the real mail path (job, worker, transport) and answers with the job.
#[utoipa::path(
    tag = "admin",
    request_body = TestEmailRequest,
    security(("bearer" = [])),
    responses(
        (status = 202, body = JobAccepted, description = "queued"),
        (status = 403, body = ErrorBody, description = "not an admin")
    )
)]
#[post("/admin/email/test")]
pub async fn send_test_email(
    services: web::Data<Services>,
    caller: Caller,
    body: web::Json<TestEmailRequest>,
) -> ApiResult<HttpResponse> {
    let job =
        email::queue_test_message(&services, &body.to, body.note.as_deref(), &caller.0).await?;
    Ok(JobAccepted::response(job))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct AuditQuery {
    /// Only events about this user.
    pub user_id: Option<uuid::Uuid>,
    /// Page size, 1 to 100 (default 20).
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

/// Security events (logins, failures, lockouts, refresh-token reuse, password and role changes), newest first.
#[utoipa::path(
    tag = "admin",
    params(AuditQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, body = Page<AuditEntry>, description = "a page of events"),
        (status = 403, body = ErrorBody, description = "not an admin")
    )
)]
#[get("/admin/audit-log")]
pub async fn audit_log(
    services: web::Data<Services>,
    caller: Caller,
    query: web::Query<AuditQuery>,
) -> ApiResult<web::Json<Page<AuditEntry>>> {
    let page = lectern_core::accounts::audit_log(
        &services,
        &caller.0,
        query.user_id,
        query.limit,
        query.cursor.as_deref(),
    )
    .await?;
    Ok(web::Json(page))
}
