//! The actix application: routes, middleware, error handlers, and the OpenAPI document.

use std::sync::{Arc, OnceLock};

use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::middleware::from_fn;
use actix_web::{App, Error, HttpResponse, web};
use lectern_core::Services;
use utoipa::OpenApi;
use utoipa_actix_web::{AppExt, scope};

use crate::error::{self, ApiError};
use crate::request_context;
use crate::routes::{self, ApiDoc};

/// The OpenAPI document, generated from the registered handlers when the first app is built.
pub type OpenApiDoc = Arc<OnceLock<utoipa::openapi::OpenApi>>;

pub fn build(
    services: web::Data<Services>,
    hub: web::Data<crate::ws::Hub>,
    doc: OpenApiDoc,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl actix_web::body::MessageBody>,
        Error = Error,
        InitError = (),
    >,
> {
    let cors = crate::cors::layer(&services.config.cors_allowed_origins);
    let (app, mut api) = App::new()
        .into_utoipa_app()
        .openapi(ApiDoc::openapi())
        .app_data(services)
        .app_data(hub)
        .app_data(web::Data::new(doc.clone()))
        .app_data(error::json_config())
        .app_data(error::path_config())
        .app_data(error::query_config())
        .service(routes::ops::healthz)
        .service(routes::ops::readyz)
        .service(crate::metrics::metrics)
        .service(
            scope("/api/v1")
                .route("/openapi.json", web::get().to(openapi_json))
                .route("/ws", web::get().to(crate::ws::connect))
                .service(routes::auth::register)
                .service(routes::auth::login)
                .service(routes::auth::refresh)
                .service(routes::auth::logout)
                .service(routes::auth::sessions)
                .service(routes::auth::revoke_session)
                .service(routes::auth::verify_email)
                .service(routes::auth::password_reset)
                .service(routes::auth::password_reset_confirm)
                .service(routes::auth::change_password)
                .service(routes::users::me)
                .service(routes::users::update_me)
                .service(routes::users::follow)
                .service(routes::users::unfollow)
                .service(routes::users::export)
                .service(routes::users::delete_me)
                .service(routes::jobs::get_job)
                .service(routes::jobs::admin_list)
                .service(routes::jobs::admin_bulk_retry)
                .service(routes::jobs::admin_noop)
                .service(routes::jobs::admin_get)
                .service(routes::jobs::admin_retry)
                .service(routes::jobs::admin_queues)
                .service(routes::media::start_upload)
                .service(routes::media::complete_upload)
                .service(routes::media::direct_upload)
                .service(routes::media::get_media)
                .service(routes::media::playback)
                .service(routes::media::delete_media)
                .service(routes::media::hls_master)
                .service(routes::media::hls_variant)
                .service(routes::media::storyboard)
                .service(routes::admin::send_test_email)
                .service(routes::admin::audit_log)
                .service(routes::courses::search)
                .service(routes::courses::create)
                .service(routes::courses::recommendations)
                .service(routes::courses::mine)
                .service(routes::courses::get)
                .service(routes::courses::update)
                .service(routes::courses::delete)
                .service(routes::courses::publish)
                .service(routes::courses::unpublish)
                .service(routes::courses::duplicate)
                .service(routes::courses::list_sections)
                .service(routes::courses::create_section)
                .service(routes::courses::update_section)
                .service(routes::courses::delete_section)
                .service(routes::courses::list_reviews)
                .service(routes::courses::submit_review)
                .service(routes::courses::reply_review)
                .service(routes::courses::list_categories)
                .service(routes::courses::create_category)
                .service(routes::courses::enroll)
                .service(routes::courses::drop_course)
                .service(routes::courses::grant)
                .service(routes::courses::revoke_grant)
                .service(routes::courses::my_enrollments)
                .service(routes::courses::unsubscribe)
                .service(routes::courses::unsubscribe_post)
                .service(routes::courses::heartbeat)
                .service(routes::courses::course_progress)
                .service(routes::courses::certificate)
                .service(routes::courses::reissue_certificate)
                .service(routes::notifications::list)
                .service(routes::notifications::mark_read)
                .service(routes::notifications::unread_count)
                .service(routes::analytics::overview)
                .service(routes::analytics::course)
                .service(routes::storefront::update_media)
                .service(routes::storefront::preview)
                .service(routes::storefront::course_thumbnail)
                .service(routes::storefront::public_profile)
                .service(routes::storefront::my_certificates),
        )
        .default_service(web::to(|| async {
            Err::<HttpResponse, _>(ApiError::NoRoute)
        }))
        .split_for_parts();
    crate::idempotency::document(&mut api);
    let _ = doc.set(crate::openapi::finish(api));
    app.wrap(from_fn(crate::idempotency::middleware))
        .wrap(from_fn(crate::input_guard::middleware))
        .wrap(cors)
        .wrap(from_fn(crate::cors::preflight))
        .wrap(from_fn(request_context::middleware))
}

async fn openapi_json(doc: web::Data<OpenApiDoc>) -> HttpResponse {
    match doc.get() {
        Some(api) => HttpResponse::Ok().json(api),
        None => HttpResponse::ServiceUnavailable().finish(),
    }
}
