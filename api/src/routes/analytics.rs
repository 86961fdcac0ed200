//! Instructor dashboards.

use actix_web::{get, web};
use lectern_core::Services;
use lectern_core::analytics::{self, CourseAnalytics, Overview, RangeParams};
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiResult, ErrorBody};

/// The instructor's overview: courses, enrollments, completions, ratings, revenue per currency.
#[utoipa::path(
    tag = "analytics",
    params(RangeParams),
    security(("bearer" = [])),
    responses(
        (status = 200, body = Overview),
        (status = 422, body = ErrorBody, description = "a bad range or time zone")
    )
)]
#[get("/instructor/overview")]
pub async fn overview(
    services: web::Data<Services>,
    caller: Caller,
    params: web::Query<RangeParams>,
) -> ApiResult<web::Json<Overview>> {
    Ok(web::Json(
        analytics::overview(&services, &caller.0, &params).await?,
    ))
}

/// One course's dashboard: enrollment trend, progress distribution, videos, revenue, ratings.
#[utoipa::path(
    tag = "analytics",
    operation_id = "course_analytics",
    params(("id" = Uuid, Path), RangeParams),
    security(("bearer" = [])),
    responses(
        (status = 200, body = CourseAnalytics),
        (status = 404, body = ErrorBody, description = "no such course of the caller's"),
        (status = 422, body = ErrorBody, description = "a bad range or time zone")
    )
)]
#[get("/instructor/courses/{id}/analytics")]
pub async fn course(
    services: web::Data<Services>,
    caller: Caller,
    id: web::Path<Uuid>,
    params: web::Query<RangeParams>,
) -> ApiResult<web::Json<CourseAnalytics>> {
    Ok(web::Json(
        analytics::course(&services, &caller.0, *id, &params).await?,
    ))
}
