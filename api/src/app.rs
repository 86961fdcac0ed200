//! The actix application: routes, middleware, error handlers, and the OpenAPI document.

use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::middleware::from_fn;
use actix_web::{App, Error, HttpResponse, web};
use lectern_core::Services;
use utoipa::OpenApi;
use utoipa_actix_web::{AppExt, scope};

use crate::error::{self, ApiError};
use crate::request_context;
use crate::routes::{self, ApiDoc};

pub fn build(
    services: web::Data<Services>,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl actix_web::body::MessageBody>,
        Error = Error,
        InitError = (),
    >,
> {
    App::new()
        .into_utoipa_app()
        .openapi(ApiDoc::openapi())
        .app_data(services)
        .app_data(error::json_config())
        .app_data(error::path_config())
        .app_data(error::query_config())
        .service(routes::ops::healthz)
        .service(routes::ops::readyz)
        .service(
            scope("/api/v1")
                .service(routes::jobs::get_job)
                .service(routes::admin::send_test_email),
        )
        .openapi_service(|api| {
            let api = web::Data::new(api);
            web::resource("/api/v1/openapi.json")
                .app_data(api)
                .route(
                    web::get().to(|api: web::Data<utoipa::openapi::OpenApi>| async move {
                        HttpResponse::Ok().json(api.get_ref())
                    }),
                )
        })
        .default_service(web::to(|| async {
            Err::<HttpResponse, _>(ApiError::NoRoute)
        }))
        .into_app()
        .wrap(from_fn(request_context::middleware))
}
