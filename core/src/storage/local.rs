//! An S3-protocol server on loopback backed by a local folder (s3s + s3s-fs).
//!
//! Lectern's local default and its tests use it, so the same aws-sdk-s3 code path (signatures,
//! presigned URLs, multipart uploads) runs everywhere, with or without a cloud account.
//!
//! s3s-fs knows nothing of CORS, so two things are added around it:
//! - [`WithCors`] answers browsers: preflights for the presigned `PUT`s (with the headers their
//!   signatures bind) and for `GET`/`HEAD`, and a grant with `ETag` exposed on the answers, for
//!   the allowed origins only (`CORS_ALLOWED_ORIGINS`, the API's set). Others get no grant.
//! - [`LocalS3`] keeps a bucket's CORS rule (`PutBucketCors`/`GetBucketCors`) in memory, so
//!   Lectern's own bucket set-up runs against it as against a real provider.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use http::header::{self, HeaderValue};
use http::{Method, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use hyper_util::server::graceful::GracefulShutdown;
use s3s::auth::SimpleAuth;
use s3s::dto::*;
use s3s::service::{S3Service, S3ServiceBuilder};
use s3s::{Body, HttpError, HttpResponse, S3, S3Request, S3Response, S3Result, s3_error};
use s3s_fs::FileSystem;

use crate::config::AllowedOrigins;

/// Serves S3 on `listener`, storing objects under `root`, accepting one access key and granting
/// CORS to `cors`; runs until `shutdown` resolves, then lets open connections finish for up to
/// ten seconds.
pub async fn serve(
    listener: tokio::net::TcpListener,
    root: PathBuf,
    access_key: String,
    secret_key: String,
    cors: AllowedOrigins,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    tokio::fs::create_dir_all(&root).await?;
    let fs = FileSystem::new(&root).map_err(|e| {
        std::io::Error::other(format!("cannot serve S3 from {}: {e:?}", root.display()))
    })?;
    let s3 = {
        let mut builder = S3ServiceBuilder::new(LocalS3 {
            fs,
            root: root.clone(),
            cors_rules: Arc::default(),
        });
        builder.set_auth(SimpleAuth::from_single(access_key, secret_key));
        builder.build()
    };
    let service = WithCors {
        s3,
        origins: Arc::new(cors),
    };
    let http = ConnBuilder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "local S3: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.as_mut() => break,
        };
        let conn = http.serve_connection(TokioIo::new(stream), service.clone());
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {},
        () = tokio::time::sleep(Duration::from_secs(10)) => {},
    }
    Ok(())
}

/// Methods a browser may use on the storage URLs Lectern signs: uploads and playback.
const CORS_METHODS: &str = "GET, HEAD, PUT";

/// Request headers a browser may send with them: what presigned PUTs bind (`content-type`; the
/// length is the browser's own header), conditional and range requests, and any `x-amz-*`.
const CORS_REQUEST_HEADERS: [&str; 13] = [
    "authorization",
    "cache-control",
    "content-disposition",
    "content-encoding",
    "content-language",
    "content-md5",
    "content-type",
    "expires",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-unmodified-since",
    "range",
];

/// Response headers a browser may read: the part `ETag`s a multipart upload completes with.
const CORS_EXPOSED: &str = "ETag, Content-Range, Accept-Ranges, x-amz-request-id, x-amz-version-id";

/// How long a browser may cache a preflight's answer.
const CORS_MAX_AGE: &str = "3600";

fn allowed_request_header(name: &str) -> bool {
    name.starts_with("x-amz-") || CORS_REQUEST_HEADERS.contains(&name)
}

/// The S3 service with CORS for the allowed origins.
#[derive(Clone)]
struct WithCors {
    s3: S3Service,
    origins: Arc<AllowedOrigins>,
}

impl WithCors {
    fn allowed_origin(&self, headers: &http::HeaderMap) -> Option<HeaderValue> {
        headers
            .get(header::ORIGIN)
            .filter(|o| o.to_str().is_ok_and(|o| self.origins.allows(o)))
            .cloned()
    }

    /// The answer to a preflight: a grant when the origin, the method and every requested
    /// header are allowed, else a 204 without one (the browser then stops).
    fn preflight(&self, headers: &http::HeaderMap) -> HttpResponse {
        let mut response = http::Response::new(Body::empty());
        *response.status_mut() = StatusCode::NO_CONTENT;
        let vary = HeaderValue::from_static(
            "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
        );
        response.headers_mut().insert(header::VARY, vary);
        let Some(origin) = self.allowed_origin(headers) else {
            return response;
        };
        let method_ok = headers
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|m| m.to_str().ok())
            .is_some_and(|m| matches!(m, "GET" | "HEAD" | "PUT"));
        let requested: Vec<String> = headers
            .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        if !method_ok || !requested.iter().all(|h| allowed_request_header(h)) {
            return response;
        }
        let grant = response.headers_mut();
        grant.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        grant.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(CORS_METHODS),
        );
        if !requested.is_empty()
            && let Ok(value) = HeaderValue::from_str(&requested.join(", "))
        {
            grant.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, value);
        }
        grant.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static(CORS_MAX_AGE),
        );
        response
    }
}

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for WithCors {
    type Response = HttpResponse;
    type Error = HttpError;
    type Future = BoxFuture<'static, Result<HttpResponse, HttpError>>;

    fn call(&self, req: http::Request<hyper::body::Incoming>) -> Self::Future {
        if req.method() == Method::OPTIONS
            && req
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        {
            let response = self.preflight(req.headers());
            return Box::pin(async move { Ok(response) });
        }
        let origin = self.allowed_origin(req.headers());
        let answer = hyper::service::Service::call(&self.s3, req);
        Box::pin(async move {
            let mut response = answer.await?;
            let headers = response.headers_mut();
            headers.append(header::VARY, HeaderValue::from_static("Origin"));
            if let Some(origin) = origin {
                headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
                headers.insert(
                    header::ACCESS_CONTROL_EXPOSE_HEADERS,
                    HeaderValue::from_static(CORS_EXPOSED),
                );
            }
            Ok(response)
        })
    }
}

/// s3s-fs, plus bucket CORS rules kept in memory.
struct LocalS3 {
    fs: FileSystem,
    root: PathBuf,
    cors_rules: Arc<Mutex<HashMap<String, CORSConfiguration>>>,
}

impl LocalS3 {
    fn bucket_exists(&self, bucket: &str) -> S3Result<()> {
        let valid = !bucket.is_empty() && !bucket.contains(['/', '\\']) && bucket != "..";
        if valid && self.root.join(bucket).is_dir() {
            Ok(())
        } else {
            Err(s3_error!(NoSuchBucket))
        }
    }

    fn rules(&self) -> std::sync::MutexGuard<'_, HashMap<String, CORSConfiguration>> {
        self.cors_rules
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Implements [`S3`] for [`LocalS3`]: the listed operations go to s3s-fs unchanged, the
/// others are written out after them. (`#[async_trait]` must see the methods expanded, so the
/// macro writes the whole impl.)
macro_rules! local_s3 {
    ($($name:ident($input:ty) -> $output:ty;)* { $($own:tt)* }) => {
        #[async_trait::async_trait]
        impl S3 for LocalS3 {
            $(
                async fn $name(&self, req: S3Request<$input>) -> S3Result<S3Response<$output>> {
                    self.fs.$name(req).await
                }
            )*
            $($own)*
        }
    };
}

local_s3! {
    create_bucket(CreateBucketInput) -> CreateBucketOutput;
    copy_object(CopyObjectInput) -> CopyObjectOutput;
    delete_bucket(DeleteBucketInput) -> DeleteBucketOutput;
    delete_object(DeleteObjectInput) -> DeleteObjectOutput;
    delete_objects(DeleteObjectsInput) -> DeleteObjectsOutput;
    get_bucket_location(GetBucketLocationInput) -> GetBucketLocationOutput;
    get_object(GetObjectInput) -> GetObjectOutput;
    head_bucket(HeadBucketInput) -> HeadBucketOutput;
    head_object(HeadObjectInput) -> HeadObjectOutput;
    list_buckets(ListBucketsInput) -> ListBucketsOutput;
    list_objects(ListObjectsInput) -> ListObjectsOutput;
    list_objects_v2(ListObjectsV2Input) -> ListObjectsV2Output;
    put_object(PutObjectInput) -> PutObjectOutput;
    create_multipart_upload(CreateMultipartUploadInput) -> CreateMultipartUploadOutput;
    upload_part(UploadPartInput) -> UploadPartOutput;
    upload_part_copy(UploadPartCopyInput) -> UploadPartCopyOutput;
    list_parts(ListPartsInput) -> ListPartsOutput;
    complete_multipart_upload(CompleteMultipartUploadInput) -> CompleteMultipartUploadOutput;
    abort_multipart_upload(AbortMultipartUploadInput) -> AbortMultipartUploadOutput;
    {
        async fn put_bucket_cors(
            &self,
            req: S3Request<PutBucketCorsInput>,
        ) -> S3Result<S3Response<PutBucketCorsOutput>> {
            self.bucket_exists(&req.input.bucket)?;
            self.rules()
                .insert(req.input.bucket, req.input.cors_configuration);
            Ok(S3Response::new(PutBucketCorsOutput::default()))
        }

        async fn get_bucket_cors(
            &self,
            req: S3Request<GetBucketCorsInput>,
        ) -> S3Result<S3Response<GetBucketCorsOutput>> {
            self.bucket_exists(&req.input.bucket)?;
            match self.rules().get(&req.input.bucket) {
                Some(config) => Ok(S3Response::new(GetBucketCorsOutput {
                    cors_rules: Some(config.cors_rules.clone()),
                })),
                None => Err(s3_error!(NoSuchCORSConfiguration)),
            }
        }

        async fn delete_bucket_cors(
            &self,
            req: S3Request<DeleteBucketCorsInput>,
        ) -> S3Result<S3Response<DeleteBucketCorsOutput>> {
            self.bucket_exists(&req.input.bucket)?;
            self.rules().remove(&req.input.bucket);
            Ok(S3Response::new(DeleteBucketCorsOutput::default()))
        }
    }
}

/// The header names a bucket CORS rule lists for Lectern's clients (see [`CORS_REQUEST_HEADERS`]).
pub fn bucket_rule_headers() -> Vec<String> {
    let mut names: Vec<String> = CORS_REQUEST_HEADERS
        .iter()
        .map(|h| (*h).to_owned())
        .collect();
    names.push("x-amz-*".into());
    names
}

/// Header names exposed to browsers by a bucket CORS rule.
pub fn bucket_rule_exposed() -> Vec<String> {
    CORS_EXPOSED
        .split(',')
        .map(|h| h.trim().to_owned())
        .collect()
}
