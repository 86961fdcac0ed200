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
#[utoipa::path(tag = "notifications", params(ListParams), security(("bearer" = [])), responses((status = 200, body = Page<NotificationView>)))]
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
#[utoipa::path(tag = "notifications", request_body = MarkRead, security(("bearer" = [])), responses((status = 200), (status = 422, body = ErrorBody)))]
#[post("/notifications/read")]
pub async fn mark_read(
    services: web::Data<Services>,
    caller: Caller,
    body: web::Json<MarkRead>,
) -> ApiResult<web::Json<serde_json::Value>> {
    let marked = notifications::mark_read(&services, &caller.0, &body).await?;
    Ok(web::Json(serde_json::json!({ "marked": marked })))
}

/// How many notifications the caller has not read.
#[utoipa::path(tag = "notifications", security(("bearer" = [])), responses((status = 200)))]
#[get("/notifications/unread-count")]
pub async fn unread_count(
    services: web::Data<Services>,
    caller: Caller,
) -> ApiResult<web::Json<serde_json::Value>> {
    let unread = notifications::unread_count(&services, &caller.0).await?;
    Ok(web::Json(serde_json::json!({ "unread": unread })))
}
