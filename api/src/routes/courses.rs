//! Courses, sections, reviews, categories, enrollments: thin shells over `lectern_core::courses`
//! and `lectern_core::learning`.

use actix_web::{HttpRequest, HttpResponse, delete, get, patch, post, put, web};
use lectern_core::Services;
use lectern_core::courses::catalog::{self, CourseCard, SearchParams};
use lectern_core::courses::categories::{self, CategoryInput, CategoryView};
use lectern_core::courses::reviews::{self, ReplyInput, ReviewInput, ReviewView};
use lectern_core::courses::sections::{self, SectionInput, SectionView};
use lectern_core::courses::{self, CourseDetail, CourseInput, CourseView, Published};
use lectern_core::learning::entitlements::{self, Entitlement, GrantInput};
use lectern_core::learning::{self, EnrollOutcome, Enrolled, EnrollmentView};
use lectern_core::page::Page;
use serde::Deserialize;
use uuid::Uuid;

use crate::auth::{Caller, Client, MaybeCaller, SignedCaller};
use crate::error::{ApiResult, ErrorBody};
use crate::routes::JobAccepted;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

/// Searches the public catalogue: full text (typo tolerant), filters, orderings, cursor pages.
#[utoipa::path(
    tag = "courses",
    operation_id = "search_courses",
    params(SearchParams),
    responses(
        (status = 200, body = Page<CourseCard>, description = "a page of courses"),
        (status = 422, body = ErrorBody, description = "a filter, ordering or cursor is invalid")
    )
)]
#[get("/courses")]
pub async fn search(
    services: web::Data<Services>,
    params: web::Query<SearchParams>,
) -> ApiResult<web::Json<Page<CourseCard>>> {
    Ok(web::Json(catalog::search(&services, &params).await?))
}

/// Creates a draft course (instructors), with a unique slug and an "Introduction" section.
#[utoipa::path(
    tag = "courses",
    operation_id = "create_course",
    request_body = CourseInput,
    security(("bearer" = [])),
    responses(
        (status = 201, body = CourseDetail, description = "the draft"),
        (status = 403, body = ErrorBody, description = "instructor_required"),
        (status = 409, body = ErrorBody, description = "slug_contention: try again")
    )
)]
#[post("/courses")]
pub async fn create(
    services: web::Data<Services>,
    caller: Caller,
    body: web::Json<CourseInput>,
) -> ApiResult<HttpResponse> {
    let course = courses::create(&services, &caller.0, &body).await?;
    Ok(HttpResponse::Created().json(course))
}

/// Personal recommendations for the caller (popular courses for a new account), best first, in
/// pages of `limit` (at most 50). The ranking is computed at each request, so a course whose
/// score changed between two pages may be skipped or shown twice.
#[utoipa::path(
    tag = "courses",
    params(PageParams),
    security(("bearer" = [])),
    responses(
        (status = 200, body = Page<CourseCard>, description = "a page of recommendations"),
        (status = 422, body = ErrorBody, description = "the cursor is not one this API gave out")
    )
)]
#[get("/courses/recommendations")]
pub async fn recommendations(
    services: web::Data<Services>,
    caller: Caller,
    params: web::Query<PageParams>,
) -> ApiResult<web::Json<Page<CourseCard>>> {
    Ok(web::Json(
        catalog::recommendations(&services, &caller.0, params.limit, params.cursor.as_deref())
            .await?,
    ))
}

/// The instructor's own courses, every status.
#[utoipa::path(
    tag = "courses",
    operation_id = "my_courses",
    params(PageParams),
    security(("bearer" = [])),
    responses((status = 200, body = Page<CourseView>, description = "a page of the caller's courses"))
)]
#[get("/instructor/courses")]
pub async fn mine(
    services: web::Data<Services>,
    caller: Caller,
    params: web::Query<PageParams>,
) -> ApiResult<web::Json<Page<CourseView>>> {
    Ok(web::Json(
        courses::mine(&services, &caller.0, params.limit, params.cursor.as_deref()).await?,
    ))
}

/// A course page by id or slug. Drafts are visible to their instructor only (404 to others).
#[utoipa::path(
    tag = "courses",
    operation_id = "get_course",
    params(("id" = String, Path, description = "course id or slug")),
    responses(
        (status = 401, body = ErrorBody, description = "a bearer token was sent but is not valid (the token is optional here)"),
        (status = 200, body = CourseDetail),
        (status = 404, body = ErrorBody, description = "no such course, or a draft of someone else's")
    )
)]
#[get("/courses/{id}")]
pub async fn get(
    services: web::Data<Services>,
    caller: MaybeCaller,
    id: web::Path<String>,
) -> ApiResult<web::Json<CourseDetail>> {
    Ok(web::Json(
        courses::get(&services, caller.0.as_ref(), &id).await?,
    ))
}

/// Changes a course's fields (the instructor's own).
#[utoipa::path(
    tag = "courses",
    operation_id = "update_course",
    params(("id" = Uuid, Path)),
    request_body = CourseInput,
    security(("bearer" = [])),
    responses(
        (status = 200, body = CourseDetail, description = "the changed course"),
        (status = 403, body = ErrorBody, description = "not_course_owner"),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "course_archived, slug_contention")
    )
)]
#[patch("/courses/{id}")]
pub async fn update(
    services: web::Data<Services>,
    caller: Caller,
    id: web::Path<Uuid>,
    body: web::Json<CourseInput>,
) -> ApiResult<web::Json<CourseDetail>> {
    Ok(web::Json(
        courses::update(&services, &caller.0, *id, &body).await?,
    ))
}

/// Deletes a course (soft); refused while students are enrolled.
#[utoipa::path(
    tag = "courses",
    operation_id = "delete_course",
    params(("id" = Uuid, Path)),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "deleted"),
        (status = 403, body = ErrorBody, description = "not_course_owner"),
        (status = 409, body = ErrorBody, description = "course_has_students")
    )
)]
#[delete("/courses/{id}")]
pub async fn delete(
    services: web::Data<Services>,
    caller: Caller,
    id: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    courses::delete(&services, &caller.0, *id).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Publishes a course when every publishing rule holds; 422 lists each unmet rule.
#[utoipa::path(
    tag = "courses",
    params(("id" = Uuid, Path)),
    security(("bearer" = [])),
    responses(
        (status = 200, body = Published, description = "published"),
        (status = 403, body = ErrorBody, description = "not_course_owner, email_unverified"),
        (status = 409, body = ErrorBody, description = "course_archived"),
        (status = 422, body = ErrorBody, description = "`fields` lists every unmet publishing rule")
    )
)]
#[post("/courses/{id}/publish")]
pub async fn publish(
    services: web::Data<Services>,
    caller: Caller,
    id: web::Path<Uuid>,
) -> ApiResult<web::Json<Published>> {
    Ok(web::Json(
        courses::publish(&services, &caller.0, *id).await?,
    ))
}

/// Takes a course out of the catalogue.
#[utoipa::path(
    tag = "courses",
    params(("id" = Uuid, Path)),
    security(("bearer" = [])),
    responses(
        (status = 200, body = CourseView, description = "back to draft"),
        (status = 403, body = ErrorBody, description = "not_course_owner"),
        (status = 409, body = ErrorBody, description = "not_published")
    )
)]
#[post("/courses/{id}/unpublish")]
pub async fn unpublish(
    services: web::Data<Services>,
    caller: Caller,
    id: web::Path<Uuid>,
) -> ApiResult<web::Json<CourseView>> {
    Ok(web::Json(
        courses::unpublish(&services, &caller.0, *id).await?,
    ))
}

/// Copies a course and its sections into a new draft.
#[utoipa::path(
    tag = "courses",
    operation_id = "duplicate_course",
    params(("id" = Uuid, Path)),
    security(("bearer" = [])),
    responses(
        (status = 201, body = CourseDetail, description = "the copy, a draft"),
        (status = 403, body = ErrorBody, description = "not_course_owner, instructor_required"),
        (status = 409, body = ErrorBody, description = "slug_contention: try again")
    )
)]
#[post("/courses/{id}/duplicate")]
pub async fn duplicate(
    services: web::Data<Services>,
    caller: Caller,
    id: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    let copy = courses::duplicate(&services, &caller.0, *id).await?;
    Ok(HttpResponse::Created().json(copy))
}

/// A course's sections in order, all on the one page (`next_cursor` is always `null`).
#[utoipa::path(
    tag = "courses",
    params(("id" = String, Path, description = "course id or slug")),
    responses(
        (status = 401, body = ErrorBody, description = "a bearer token was sent but is not valid (the token is optional here)"),
        (status = 200, body = Page<SectionView>, description = "every section"),
        (status = 404, body = ErrorBody, description = "no such course, or a draft of someone else's")
    )
)]
#[get("/courses/{id}/sections")]
pub async fn list_sections(
    services: web::Data<Services>,
    caller: MaybeCaller,
    id: web::Path<String>,
) -> ApiResult<web::Json<Page<SectionView>>> {
    Ok(web::Json(Page::whole(
        sections::list(&services, caller.0.as_ref(), &id).await?,
    )))
}

/// Adds a section (at the end, or at `position`).
#[utoipa::path(
    tag = "courses",
    params(("id" = Uuid, Path)),
    request_body = SectionInput,
    security(("bearer" = [])),
    responses(
        (status = 201, body = SectionView, description = "the new section"),
        (status = 403, body = ErrorBody, description = "not_course_owner"),
        (status = 409, body = ErrorBody, description = "course_archived")
    )
)]
#[post("/courses/{id}/sections")]
pub async fn create_section(
    services: web::Data<Services>,
    caller: Caller,
    id: web::Path<Uuid>,
    body: web::Json<SectionInput>,
) -> ApiResult<HttpResponse> {
    let section = sections::create(&services, &caller.0, *id, &body).await?;
    Ok(HttpResponse::Created().json(section))
}

/// Renames or moves a section.
#[utoipa::path(
    tag = "courses",
    params(("id" = Uuid, Path)),
    request_body = SectionInput,
    security(("bearer" = [])),
    responses(
        (status = 200, body = SectionView, description = "the changed section"),
        (status = 403, body = ErrorBody, description = "not_course_owner"),
        (status = 409, body = ErrorBody, description = "course_archived")
    )
)]
#[patch("/sections/{id}")]
pub async fn update_section(
    services: web::Data<Services>,
    caller: Caller,
    id: web::Path<Uuid>,
    body: web::Json<SectionInput>,
) -> ApiResult<web::Json<SectionView>> {
    Ok(web::Json(
        sections::update(&services, &caller.0, *id, &body).await?,
    ))
}

/// Deletes a section; the ones after it move up.
#[utoipa::path(
    tag = "courses",
    params(("id" = Uuid, Path)),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "deleted"),
        (status = 403, body = ErrorBody, description = "not_course_owner"),
        (status = 409, body = ErrorBody, description = "course_archived")
    )
)]
#[delete("/sections/{id}")]
pub async fn delete_section(
    services: web::Data<Services>,
    caller: Caller,
    id: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    sections::delete(&services, &caller.0, *id).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// A course's reviews, newest first.
#[utoipa::path(
    tag = "courses",
    params(("id" = String, Path, description = "course id or slug"), PageParams),
    responses(
        (status = 401, body = ErrorBody, description = "a bearer token was sent but is not valid (the token is optional here)"),
        (status = 200, body = Page<ReviewView>, description = "a page of reviews"),
        (status = 404, body = ErrorBody, description = "no such course, or a draft of someone else's")
    )
)]
#[get("/courses/{id}/reviews")]
pub async fn list_reviews(
    services: web::Data<Services>,
    caller: MaybeCaller,
    id: web::Path<String>,
    params: web::Query<PageParams>,
) -> ApiResult<web::Json<Page<ReviewView>>> {
    Ok(web::Json(
        reviews::list(
            &services,
            caller.0.as_ref(),
            &id,
            params.limit,
            params.cursor.as_deref(),
        )
        .await?,
    ))
}

/// Writes the caller's review (enrolled students; a second one edits the first).
#[utoipa::path(
    tag = "courses",
    params(("id" = String, Path)),
    request_body = ReviewInput,
    security(("bearer" = [])),
    responses(
        (status = 201, body = ReviewView, description = "the caller's first review"),
        (status = 200, body = ReviewView, description = "the caller's review, edited"),
        (status = 403, body = ErrorBody, description = "not_enrolled")
    )
)]
#[post("/courses/{id}/reviews")]
pub async fn submit_review(
    services: web::Data<Services>,
    caller: Caller,
    id: web::Path<String>,
    body: web::Json<ReviewInput>,
) -> ApiResult<HttpResponse> {
    let (review, created) = reviews::submit(&services, &caller.0, &id, &body).await?;
    Ok(if created {
        HttpResponse::Created().json(review)
    } else {
        HttpResponse::Ok().json(review)
    })
}

/// The course's instructor replies to a review.
#[utoipa::path(
    tag = "courses",
    params(("id" = Uuid, Path, description = "the review")),
    request_body = ReplyInput,
    security(("bearer" = [])),
    responses(
        (status = 200, body = ReviewView, description = "the review with its reply"),
        (status = 403, body = ErrorBody, description = "not_course_owner")
    )
)]
#[post("/reviews/{id}/reply")]
pub async fn reply_review(
    services: web::Data<Services>,
    caller: Caller,
    id: web::Path<Uuid>,
    body: web::Json<ReplyInput>,
) -> ApiResult<web::Json<ReviewView>> {
    Ok(web::Json(
        reviews::reply(&services, &caller.0, *id, &body).await?,
    ))
}

/// Every category, all on the one page (`next_cursor` is always `null`).
#[utoipa::path(tag = "courses", responses((status = 200, body = Page<CategoryView>, description = "every category")))]
#[get("/categories")]
pub async fn list_categories(
    services: web::Data<Services>,
) -> ApiResult<web::Json<Page<CategoryView>>> {
    Ok(web::Json(Page::whole(categories::list(&services).await?)))
}

/// Creates a category (admins).
#[utoipa::path(
    tag = "courses",
    request_body = CategoryInput,
    security(("bearer" = [])),
    responses(
        (status = 201, body = CategoryView, description = "the new category"),
        (status = 403, body = ErrorBody, description = "not an admin"),
        (status = 409, body = ErrorBody, description = "category_exists")
    )
)]
#[post("/admin/categories")]
pub async fn create_category(
    services: web::Data<Services>,
    caller: Caller,
    body: web::Json<CategoryInput>,
) -> ApiResult<HttpResponse> {
    let category = categories::create(&services, &caller.0, &body).await?;
    Ok(HttpResponse::Created().json(category))
}

/// Enrolls the caller (idempotent; re-activates a dropped enrollment with its progress). A paid
/// course needs a grant or a purchase (else 402 `payment_required`, also when re-enrolling after
/// a drop), a verified email and an `Idempotency-Key` header.
#[utoipa::path(
    tag = "learning",
    params(
        ("id" = String, Path, description = "course id or slug"),
        ("Idempotency-Key" = Option<String>, Header, description = "required for a paid course")
    ),
    security(("bearer" = [])),
    responses(
        (status = 201, body = Enrolled, description = "enrolled"),
        (status = 200, body = Enrolled, description = "already enrolled, or re-enrolled after a drop"),
        (status = 402, body = ErrorBody, description = "payment_required: a paid course without a grant"),
        (status = 403, body = ErrorBody, description = "email_unverified (paid courses)"),
        (status = 409, body = ErrorBody, description = "own_course, course_not_open")
    )
)]
#[post("/courses/{id}/enroll")]
pub async fn enroll(
    services: web::Data<Services>,
    caller: Caller,
    id: web::Path<String>,
    req: HttpRequest,
) -> ApiResult<HttpResponse> {
    let key = req
        .headers()
        .get("Idempotency-Key")
        .and_then(|v| v.to_str().ok());
    let enrolled = learning::enroll(&services, &caller.0, &id, key).await?;
    Ok(match enrolled.outcome {
        EnrollOutcome::Created => HttpResponse::Created().json(enrolled),
        _ => HttpResponse::Ok().json(enrolled),
    })
}

/// Drops the caller's enrollment (progress is kept).
#[utoipa::path(
    tag = "learning",
    params(("id" = String, Path, description = "course id or slug")),
    security(("bearer" = [])),
    responses(
        (status = 200, body = EnrollmentView, description = "dropped"),
        (status = 404, body = ErrorBody, description = "no such course or enrollment"),
        (status = 409, body = ErrorBody, description = "course_completed")
    )
)]
#[post("/courses/{id}/drop")]
pub async fn drop_course(
    services: web::Data<Services>,
    caller: Caller,
    id: web::Path<String>,
) -> ApiResult<web::Json<EnrollmentView>> {
    Ok(web::Json(
        learning::drop_course(&services, &caller.0, &id).await?,
    ))
}

/// Gives a student a paid course (its instructor or an admin; audited). Until payments exist,
/// this is how a paid course is opened to a student; granting again is harmless.
#[utoipa::path(
    tag = "learning",
    params(("id" = Uuid, Path)),
    request_body = GrantInput,
    security(("bearer" = [])),
    responses(
        (status = 201, body = Entitlement, description = "granted"),
        (status = 200, body = Entitlement, description = "the student already held the course"),
        (status = 403, body = ErrorBody, description = "not the course's instructor nor an admin"),
        (status = 404, body = ErrorBody, description = "no such course or student")
    )
)]
#[post("/courses/{id}/grants")]
pub async fn grant(
    services: web::Data<Services>,
    caller: Caller,
    client: Client,
    id: web::Path<Uuid>,
    body: web::Json<GrantInput>,
) -> ApiResult<HttpResponse> {
    let granted = entitlements::grant(&services, &caller.0, *id, &body, &client.0).await?;
    Ok(if granted.created {
        HttpResponse::Created().json(granted.entitlement)
    } else {
        HttpResponse::Ok().json(granted.entitlement)
    })
}

/// Takes a granted course back (its instructor or an admin; audited): an active enrollment is
/// dropped, and enrolling again needs a new grant.
#[utoipa::path(
    tag = "learning",
    params(("id" = Uuid, Path), ("user_id" = String, Path, description = "the student's user id")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "revoked"),
        (status = 403, body = ErrorBody, description = "not the course's instructor nor an admin"),
        (status = 404, body = ErrorBody, description = "no such course or grant")
    )
)]
#[delete("/courses/{id}/grants/{user_id}")]
pub async fn revoke_grant(
    services: web::Data<Services>,
    caller: Caller,
    client: Client,
    path: web::Path<(Uuid, String)>,
) -> ApiResult<HttpResponse> {
    let (id, user_id) = path.into_inner();
    entitlements::revoke(&services, &caller.0, id, &user_id, &client.0).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The caller's enrollments with progress.
#[utoipa::path(
    tag = "learning",
    params(PageParams),
    security(("bearer" = [])),
    responses((status = 200, body = Page<EnrollmentView>, description = "a page of the caller's enrollments"))
)]
#[get("/me/enrollments")]
pub async fn my_enrollments(
    services: web::Data<Services>,
    caller: Caller,
    params: web::Query<PageParams>,
) -> ApiResult<web::Json<Page<EnrollmentView>>> {
    Ok(web::Json(
        learning::mine(&services, &caller.0, params.limit, params.cursor.as_deref()).await?,
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UnsubscribeParams {
    pub token: String,
}

/// One-click unsubscribe from non-essential mail (the `List-Unsubscribe` link). No login needed:
/// the token is signed for one user.
#[utoipa::path(
    tag = "users",
    params(UnsubscribeParams),
    responses(
        (status = 200, body = Unsubscribed, description = "unsubscribed (again, harmlessly)"),
        (status = 422, body = ErrorBody, description = "the token is not one Lectern signed")
    )
)]
#[get("/unsubscribe")]
pub async fn unsubscribe(
    services: web::Data<Services>,
    params: web::Query<UnsubscribeParams>,
) -> ApiResult<web::Json<Unsubscribed>> {
    lectern_core::accounts::unsubscribe(&services, &params.token).await?;
    Ok(web::Json(Unsubscribed { unsubscribed: true }))
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Unsubscribed {
    /// Always `true`.
    pub unsubscribed: bool,
}

/// The same, as the RFC 8058 one-click POST that mail clients send.
#[utoipa::path(
    tag = "users",
    params(UnsubscribeParams),
    responses(
        (status = 200, body = Unsubscribed, description = "unsubscribed (again, harmlessly)"),
        (status = 422, body = ErrorBody, description = "the token is not one Lectern signed")
    )
)]
#[post("/unsubscribe")]
pub async fn unsubscribe_post(
    services: web::Data<Services>,
    params: web::Query<UnsubscribeParams>,
) -> ApiResult<web::Json<Unsubscribed>> {
    lectern_core::accounts::unsubscribe(&services, &params.token).await?;
    Ok(web::Json(Unsubscribed { unsubscribed: true }))
}

/// The player's heartbeat: where playback is and how much was watched since the last one.
/// Completion (90 % of the video watched) is computed here, never taken from the client.
#[utoipa::path(
    tag = "learning",
    params(("media_id" = Uuid, Path)),
    request_body = lectern_core::learning::progress::Heartbeat,
    security(("bearer" = [])),
    responses(
        (status = 200, body = lectern_core::learning::progress::VideoProgressView, description = "the progress as recorded"),
        (status = 404, body = ErrorBody, description = "no such video in a course the caller is enrolled in")
    )
)]
#[put("/progress/videos/{media_id}")]
pub async fn heartbeat(
    services: web::Data<Services>,
    caller: SignedCaller,
    media_id: web::Path<Uuid>,
    body: web::Json<lectern_core::learning::progress::Heartbeat>,
) -> ApiResult<web::Json<lectern_core::learning::progress::VideoProgressView>> {
    Ok(web::Json(
        lectern_core::learning::progress::heartbeat(&services, &caller.0, *media_id, &body).await?,
    ))
}

/// The caller's progress in a course, video by video.
#[utoipa::path(
    tag = "learning",
    params(("id" = String, Path, description = "course id or slug")),
    security(("bearer" = [])),
    responses(
        (status = 200, body = lectern_core::learning::progress::CourseProgress),
        (status = 404, body = ErrorBody, description = "no such course or enrollment")
    )
)]
#[get("/courses/{id}/progress")]
pub async fn course_progress(
    services: web::Data<Services>,
    caller: Caller,
    id: web::Path<String>,
) -> ApiResult<web::Json<lectern_core::learning::progress::CourseProgress>> {
    Ok(web::Json(
        lectern_core::learning::progress::course_progress(&services, &caller.0, &id).await?,
    ))
}

/// Public verification of a certificate, by id or verification code, with a short-lived PDF link.
#[utoipa::path(
    tag = "learning",
    params(("id" = String, Path, description = "certificate id or verification code")),
    responses(
        (status = 200, body = lectern_core::learning::certificates::CertificateView),
        (status = 404, body = ErrorBody, description = "no such certificate")
    )
)]
#[get("/certificates/{id}")]
pub async fn certificate(
    services: web::Data<Services>,
    id: web::Path<String>,
) -> ApiResult<web::Json<lectern_core::learning::certificates::CertificateView>> {
    Ok(web::Json(
        lectern_core::learning::certificates::verify(&services, &id).await?,
    ))
}

/// Re-renders a certificate (after a name change): same id and code. The student or an admin.
#[utoipa::path(
    tag = "learning",
    params(("id" = Uuid, Path)),
    security(("bearer" = [])),
    responses(
        (status = 202, body = JobAccepted, description = "the rendering job"),
        (status = 404, body = ErrorBody, description = "no such certificate of the caller's")
    )
)]
#[post("/certificates/{id}/reissue")]
pub async fn reissue_certificate(
    services: web::Data<Services>,
    caller: Caller,
    id: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    let job = lectern_core::learning::certificates::reissue(&services, &caller.0, *id).await?;
    Ok(JobAccepted::response(job))
}
