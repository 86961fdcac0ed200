//! The caller's in-app notifications.

use actix_web::{get, post, web};
use lectern_core::Services;
use lectern_core::notifications::{self, MarkRead, NotificationView};
use lectern_core::page::Page;
use serde::Deserialize;

use crate::auth::Caller;
use crate::error::{ApiResult, ErrorBody};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only unread notifications.
    #[serde(default)]
    pub unread: bool,
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

/// The caller's notifications, newest first.
#[utoipa::path(
    tag = "notifications",
    operation_id = "list_notifications",
    params(ListParams),
    security(("bearer" = [])),
    responses((status = 200, body = Page<NotificationView>, description = "a page of notifications"))
)]
#[get("/notifications")]
pub async fn list(
    services: web::Data<Services>,
    caller: Caller,
    params: web::Query<ListParams>,
) -> ApiResult<web::Json<Page<NotificationView>>> {
    Ok(web::Json(
        notifications::list(
            &services,
            &caller.0,
            params.unread,
            params.limit,
            params.cursor.as_deref(),
        )
        .await?,
    ))
}

/// Marks notifications as read (`{"ids": [...]}` or `{"all": true}`).
#[utoipa::path(
    tag = "notifications",
    request_body = MarkRead,
    security(("bearer" = [])),
    responses(
        (status = 200, body = Marked, description = "how many changed"),
        (status = 422, body = ErrorBody, description = "neither ids nor all")
    )
)]
#[post("/notifications/read")]
pub async fn mark_read(
    services: web::Data<Services>,
    caller: Caller,
    body: web::Json<MarkRead>,
) -> ApiResult<web::Json<Marked>> {
    let marked = notifications::mark_read(&services, &caller.0, &body).await?;
    Ok(web::Json(Marked { marked }))
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Marked {
    /// How many notifications changed from unread to read.
    pub marked: u64,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Unread {
    /// How many notifications the caller has not read.
    pub unread: i64,
}

/// How many notifications the caller has not read.
#[utoipa::path(
    tag = "notifications",
    security(("bearer" = [])),
    responses((status = 200, body = Unread, description = "the count"))
)]
#[get("/notifications/unread-count")]
pub async fn unread_count(
    services: web::Data<Services>,
    caller: Caller,
) -> ApiResult<web::Json<Unread>> {
    let unread = notifications::unread_count(&services, &caller.0).await?;
    Ok(web::Json(Unread { unread }))
}
