//! Media storage over the S3 protocol (AWS S3, Backblaze B2, MinIO, or the local loopback server).

pub mod local;

use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, CorsConfiguration, CorsRule};

use crate::config::{AllowedOrigins, ExposeSecret, StorageConfig};
use crate::error::{Dependency, Error};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("object {0:?} not found")]
    NotFound(String),
    #[error("storage unreachable: {0}")]
    Unavailable(String),
    #[error("storage request failed: {0}")]
    Failed(String),
}

impl StorageError {
    /// Worth trying again later (network, timeouts, throttling, 5xx).
    pub fn is_transient(&self) -> bool {
        matches!(self, StorageError::Unavailable(_))
    }
}

impl From<StorageError> for Error {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::NotFound(_) => Error::NotFound("object"),
            StorageError::Unavailable(_) => Error::Unavailable(Dependency::Storage, Box::new(e)),
            StorageError::Failed(_) => Error::Internal(Box::new(e)),
        }
    }
}

fn classify<E: ProvideErrorMetadata, R>(key: &str, e: SdkError<E, R>) -> StorageError {
    match &e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => {
            StorageError::Unavailable(format!("{e}"))
        }
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or("unknown");
            match code {
                "NoSuchKey" | "NotFound" | "NoSuchUpload" => StorageError::NotFound(key.to_owned()),
                "SlowDown" | "ServiceUnavailable" | "InternalError" | "RequestTimeout" => {
                    StorageError::Unavailable(code.to_owned())
                }
                _ => StorageError::Failed(format!(
                    "{code}: {}",
                    service.err().message().unwrap_or("no message")
                )),
            }
        }
        // A HEAD answers 404 without a body, which surfaces as a response error.
        SdkError::ResponseError(_) => StorageError::Failed(format!("{e}")),
        _ => StorageError::Failed(format!("{e}")),
    }
}

/// What a HEAD tells about an object.
#[derive(Debug, Clone)]
pub struct ObjectInfo {
    pub size: u64,
    pub content_type: Option<String>,
    pub etag: Option<String>,
}

/// The bucket CORS rule for browser clients on `origins`: presigned `PUT`s of uploads and parts
/// (with the headers their signatures bind), `GET`/`HEAD` of playback, part `ETag`s readable.
/// `None` when no origin is allowed.
pub fn bucket_cors_rule(origins: &AllowedOrigins) -> Option<CorsConfiguration> {
    if origins.is_empty() {
        return None;
    }
    let rule = CorsRule::builder()
        .set_allowed_origins(Some(
            origins.patterns().iter().map(|p| p.as_rule()).collect(),
        ))
        .set_allowed_methods(Some(vec!["GET".into(), "HEAD".into(), "PUT".into()]))
        .set_allowed_headers(Some(local::bucket_rule_headers()))
        .set_expose_headers(Some(local::bucket_rule_exposed()))
        .max_age_seconds(3600)
        .build()
        .ok()?;
    CorsConfiguration::builder().cors_rules(rule).build().ok()
}

/// A presigned request a client performs itself, so no media byte passes through the API.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct PresignedRequest {
    pub method: String,
    pub url: String,
    /// Headers the client must send exactly as given (they are part of the signature).
    pub headers: std::collections::BTreeMap<String, String>,
}

impl From<aws_sdk_s3::presigning::PresignedRequest> for PresignedRequest {
    fn from(p: aws_sdk_s3::presigning::PresignedRequest) -> Self {
        PresignedRequest {
            method: p.method().to_owned(),
            url: p.uri().to_owned(),
            headers: p
                .headers()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        }
    }
}

/// The S3 client Lectern uses everywhere; cheap to clone.
#[derive(Clone, Debug)]
pub struct Storage {
    client: Client,
    bucket: String,
    /// Browser origins the bucket's CORS rule allows, when Lectern creates the bucket.
    cors: AllowedOrigins,
}

impl Storage {
    pub fn new(config: &StorageConfig) -> Self {
        let credentials = Credentials::new(
            config.access_key_id.clone(),
            config.secret_access_key.expose_secret().to_owned(),
            None,
            None,
            "lectern-config",
        );
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .read_timeout(Duration::from_secs(30))
            .build();
        let mut builder = aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .credentials_provider(credentials)
            .force_path_style(config.force_path_style)
            .timeout_config(timeouts);
        if let Some(endpoint) = &config.endpoint {
            builder = builder.endpoint_url(endpoint.as_str().trim_end_matches('/'));
        }
        Storage {
            client: Client::from_conf(builder.build()),
            bucket: config.bucket.clone(),
            cors: AllowedOrigins::default(),
        }
    }

    /// The browser origins for the CORS rule of a bucket Lectern creates (`CORS_ALLOWED_ORIGINS`).
    pub fn with_cors(mut self, origins: &AllowedOrigins) -> Self {
        self.cors = origins.clone();
        self
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Creates the bucket when it does not exist (local default and tests; production buckets
    /// are usually made by the operator, in which case this is a cheap HEAD). A bucket Lectern
    /// creates gets the CORS rule browsers need (see [`bucket_cors_rule`]); an existing bucket's
    /// rule is the operator's and is left alone.
    pub async fn ensure_bucket(&self) -> Result<(), StorageError> {
        if self.ready().await.is_ok() {
            return Ok(());
        }
        match self
            .client
            .create_bucket()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(_) => {
                self.set_cors_rule().await;
                Ok(())
            }
            Err(e) => {
                let code = e.code().map(str::to_owned);
                match code.as_deref() {
                    Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists") => Ok(()),
                    _ => Err(classify(&self.bucket, e)),
                }
            }
        }
    }

    /// Sets the bucket's CORS rule. A provider that refuses it (some S3-compatible services have
    /// no bucket CORS API) leaves the rule to the operator: logged, not fatal.
    async fn set_cors_rule(&self) {
        let Some(rule) = bucket_cors_rule(&self.cors) else {
            return;
        };
        if let Err(e) = self
            .client
            .put_bucket_cors()
            .bucket(&self.bucket)
            .cors_configuration(rule)
            .send()
            .await
        {
            tracing::warn!(
                error = %classify(&self.bucket, e),
                "could not set the bucket's CORS rule; set it by hand (README, CORS)"
            );
        }
    }

    /// The bucket's CORS rules, as (allowed origins, allowed methods) per rule; empty when the
    /// bucket has none.
    pub async fn cors_rules(&self) -> Result<Vec<(Vec<String>, Vec<String>)>, StorageError> {
        match self
            .client
            .get_bucket_cors()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(out) => Ok(out
                .cors_rules()
                .iter()
                .map(|r| (r.allowed_origins().to_vec(), r.allowed_methods().to_vec()))
                .collect()),
            Err(e) if e.code() == Some("NoSuchCORSConfiguration") => Ok(Vec::new()),
            Err(e) => Err(classify(&self.bucket, e)),
        }
    }

    /// Readiness: the bucket answers a HEAD.
    pub async fn ready(&self) -> Result<(), StorageError> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| classify(&self.bucket, e))
    }

    pub async fn put(
        &self,
        key: &str,
        body: ByteStream,
        content_type: &str,
    ) -> Result<(), StorageError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(body)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| classify(key, e))
    }

    /// The object's bytes as a stream; nothing is buffered whole.
    pub async fn get(&self, key: &str) -> Result<ByteStream, StorageError> {
        self.client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map(|out| out.body)
            .map_err(|e| classify(key, e))
    }

    /// `Ok(None)` when the object does not exist.
    pub async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StorageError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => Ok(Some(ObjectInfo {
                size: out
                    .content_length()
                    .and_then(|n| u64::try_from(n).ok())
                    .unwrap_or(0),
                content_type: out.content_type().map(str::to_owned),
                etag: out.e_tag().map(str::to_owned),
            })),
            Err(SdkError::ServiceError(e)) if e.raw().status().as_u16() == 404 => Ok(None),
            Err(e) => Err(classify(key, e)),
        }
    }

    /// Deleting an absent object succeeds (S3 semantics), so deletes are idempotent.
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| classify(key, e))
    }

    fn presigning(expires_in: Duration) -> Result<PresigningConfig, StorageError> {
        PresigningConfig::expires_in(expires_in).map_err(|e| StorageError::Failed(e.to_string()))
    }

    /// A PUT the client performs itself; the signature binds the content type and length.
    pub async fn presign_put(
        &self,
        key: &str,
        content_type: &str,
        content_length: u64,
        expires_in: Duration,
    ) -> Result<PresignedRequest, StorageError> {
        let length =
            i64::try_from(content_length).map_err(|e| StorageError::Failed(e.to_string()))?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .content_length(length)
            .presigned(Self::presigning(expires_in)?)
            .await
            .map(Into::into)
            .map_err(|e| classify(key, e))
    }

    pub async fn presign_get(
        &self,
        key: &str,
        expires_in: Duration,
    ) -> Result<PresignedRequest, StorageError> {
        self.client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(Self::presigning(expires_in)?)
            .await
            .map(Into::into)
            .map_err(|e| classify(key, e))
    }

    /// Starts a multipart upload and returns its upload id.
    pub async fn create_multipart(
        &self,
        key: &str,
        content_type: &str,
    ) -> Result<String, StorageError> {
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .send()
            .await
            .map_err(|e| classify(key, e))?;
        out.upload_id().map(str::to_owned).ok_or_else(|| {
            StorageError::Failed("no upload id in CreateMultipartUpload answer".into())
        })
    }

    /// A presigned PUT for one part (numbered from 1) of a multipart upload. The signature binds
    /// the part's exact length, so storage refuses a bigger (or smaller) body.
    pub async fn presign_upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: i32,
        content_length: u64,
        expires_in: Duration,
    ) -> Result<PresignedRequest, StorageError> {
        let length =
            i64::try_from(content_length).map_err(|e| StorageError::Failed(e.to_string()))?;
        self.client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(part_number)
            .content_length(length)
            .presigned(Self::presigning(expires_in)?)
            .await
            .map(Into::into)
            .map_err(|e| classify(key, e))
    }

    /// The parts uploaded so far to a multipart upload: part number and size in bytes.
    pub async fn list_parts(
        &self,
        key: &str,
        upload_id: &str,
    ) -> Result<Vec<(i32, u64)>, StorageError> {
        let mut out = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let page = self
                .client
                .list_parts()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .set_part_number_marker(marker.take())
                .send()
                .await
                .map_err(|e| classify(key, e))?;
            for part in page.parts() {
                if let Some(n) = part.part_number() {
                    let size = part.size().and_then(|s| u64::try_from(s).ok()).unwrap_or(0);
                    out.push((n, size));
                }
            }
            match page.next_part_number_marker() {
                Some(next) if page.is_truncated() == Some(true) => marker = Some(next.to_owned()),
                _ => break,
            }
        }
        Ok(out)
    }

    /// Completes a multipart upload from the parts the client reports (part number, ETag).
    pub async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(i32, String)],
    ) -> Result<(), StorageError> {
        let completed = CompletedMultipartUpload::builder()
            .set_parts(Some(
                parts
                    .iter()
                    .map(|(n, etag)| CompletedPart::builder().part_number(*n).e_tag(etag).build())
                    .collect(),
            ))
            .build();
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(completed)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| classify(key, e))
    }

    pub async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StorageError> {
        self.client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| classify(key, e))
    }

    /// Copies an object of `size` bytes to another key of the bucket, server-side: one
    /// `CopyObject` up to S3's 5 GiB limit, a multipart copy (`UploadPartCopy`) beyond it.
    /// Keys are Lectern's own (`media/{uuid}/...`), so they need no escaping in the copy source.
    pub async fn copy(&self, from: &str, to: &str, size: u64) -> Result<(), StorageError> {
        const SINGLE_COPY_MAX: u64 = 5 * 1024 * 1024 * 1024;
        const PART: u64 = 1024 * 1024 * 1024;
        let source = format!("{}/{from}", self.bucket);
        if size <= SINGLE_COPY_MAX {
            return self
                .client
                .copy_object()
                .bucket(&self.bucket)
                .key(to)
                .copy_source(&source)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| classify(from, e));
        }
        let upload_id = self
            .create_multipart(to, "application/octet-stream")
            .await?;
        let mut parts = Vec::new();
        let copied = async {
            let mut start = 0u64;
            let mut number = 1i32;
            while start < size {
                let end = (start + PART).min(size) - 1;
                let out = self
                    .client
                    .upload_part_copy()
                    .bucket(&self.bucket)
                    .key(to)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .copy_source(&source)
                    .copy_source_range(format!("bytes={start}-{end}"))
                    .send()
                    .await
                    .map_err(|e| classify(from, e))?;
                let etag = out
                    .copy_part_result()
                    .and_then(|r| r.e_tag())
                    .ok_or_else(|| {
                        StorageError::Failed("no ETag in UploadPartCopy answer".into())
                    })?;
                parts.push((number, etag.to_owned()));
                start = end + 1;
                number += 1;
            }
            self.complete_multipart(to, &upload_id, &parts).await
        }
        .await;
        if copied.is_err() {
            let _ = self.abort_multipart(to, &upload_id).await;
        }
        copied
    }

    /// The first bytes of an object (`len` at most), for sniffing its real type.
    pub async fn get_head(&self, key: &str, len: usize) -> Result<Vec<u8>, StorageError> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .range(format!("bytes=0-{}", len.saturating_sub(1)))
            .send()
            .await
            .map_err(|e| classify(key, e))?;
        let bytes = out
            .body
            .collect()
            .await
            .map_err(|e| StorageError::Unavailable(e.to_string()))?
            .into_bytes();
        Ok(bytes.iter().take(len).copied().collect())
    }

    /// Streams an object into a local file; returns its size.
    pub async fn download_to(
        &self,
        key: &str,
        path: &std::path::Path,
    ) -> Result<u64, StorageError> {
        use tokio::io::AsyncWriteExt;
        let mut body = self.get(key).await?;
        let mut file = tokio::fs::File::create(path)
            .await
            .map_err(|e| StorageError::Failed(format!("{}: {e}", path.display())))?;
        let mut size = 0u64;
        while let Some(chunk) = body
            .try_next()
            .await
            .map_err(|e| StorageError::Unavailable(e.to_string()))?
        {
            size += chunk.len() as u64;
            file.write_all(&chunk)
                .await
                .map_err(|e| StorageError::Failed(format!("{}: {e}", path.display())))?;
        }
        file.flush()
            .await
            .map_err(|e| StorageError::Failed(format!("{}: {e}", path.display())))?;
        Ok(size)
    }

    /// Uploads a local file, streamed from disk.
    pub async fn put_file(
        &self,
        key: &str,
        path: &std::path::Path,
        content_type: &str,
    ) -> Result<(), StorageError> {
        let body = ByteStream::from_path(path)
            .await
            .map_err(|e| StorageError::Failed(format!("{}: {e}", path.display())))?;
        self.put(key, body, content_type).await
    }

    /// Every key under a prefix.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let out = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| classify(prefix, e))?;
            keys.extend(
                out.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
            match out.next_continuation_token() {
                Some(next) if out.is_truncated() == Some(true) => token = Some(next.to_owned()),
                _ => break,
            }
        }
        Ok(keys)
    }

    /// Deletes every object under a prefix; returns how many. Idempotent.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<usize, StorageError> {
        let keys = self.list(prefix).await?;
        for key in &keys {
            self.delete(key).await?;
        }
        Ok(keys.len())
    }
}
