//! Typed configuration read from environment variables (and `.env` when present).
//!
//! Every variable is parsed once, at start-up; [`Config::from_env`] reports every
//! missing or invalid value in one [`ConfigError`] so an operator fixes them all at once.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use url::Url;

/// A secret string that never prints itself (logs, panics, `Debug`).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Where media objects live. Both variants speak the S3 protocol through the same client.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// `None` means the provider's default endpoint (AWS).
    pub endpoint: Option<Url>,
    pub bucket: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub force_path_style: bool,
    /// Set when Lectern serves its own S3 endpoint on loopback, backed by this folder.
    pub local: Option<LocalStorage>,
}

#[derive(Debug, Clone)]
pub struct LocalStorage {
    pub dir: PathBuf,
    pub port: u16,
}

#[derive(Debug, Clone)]
pub enum MailTransport {
    /// `smtp://host:port` (plain or STARTTLS when offered), `smtps://` (TLS), credentials in the URL.
    Smtp(Secret),
    /// Every message is written as an `.eml` file in this folder.
    Folder(PathBuf),
}

#[derive(Debug, Clone)]
pub struct MailConfig {
    pub transport: MailTransport,
    pub from: String,
    /// Bulk mail (follower announcements) is spread to at most this many messages a minute, so
    /// a provider does not throttle or block the sender. Transactional mail is not limited.
    pub bulk_per_minute: u32,
}

/// How many jobs one worker process runs at once, per queue.
#[derive(Debug, Clone, Copy)]
pub struct WorkerConcurrency {
    pub email: usize,
    pub media: usize,
    pub default: usize,
}

/// An address block (`10.0.0.0/8`, `::1/128`, or a single address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl FromStr for Cidr {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (
                a.parse::<IpAddr>().map_err(|_| ())?,
                Some(p.parse::<u8>().map_err(|_| ())?),
            ),
            None => (s.parse::<IpAddr>().map_err(|_| ())?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(());
        }
        Ok(Cidr { addr, prefix })
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        fn bits(ip: IpAddr) -> (u128, u8) {
            match ip {
                IpAddr::V4(v4) => (u128::from(u32::from(v4)) << 96, 32),
                IpAddr::V6(v6) => (u128::from(v6), 128),
            }
        }
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let ((net, net_len), (candidate, len)) = (bits(self.addr), bits(ip));
        if net_len != len {
            return false;
        }
        if self.prefix == 0 {
            return true;
        }
        let shift = 128 - u32::from(self.prefix);
        (net >> shift) == (candidate >> shift)
    }
}

/// One entry of `CORS_ALLOWED_ORIGINS`: an exact origin (`https://app.example.com`) or an origin
/// on any port (`http://localhost:*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPattern {
    /// `scheme://host[:port]`, as a browser writes it in `Origin` (lowercase, default port left out).
    Exact(String),
    /// `scheme://host` on any port, the default one included.
    AnyPort(String),
}

impl OriginPattern {
    pub fn matches(&self, origin: &str) -> bool {
        match self {
            OriginPattern::Exact(exact) => origin.eq_ignore_ascii_case(exact),
            OriginPattern::AnyPort(base) => {
                origin.len() >= base.len()
                    && origin.is_char_boundary(base.len())
                    && origin[..base.len()].eq_ignore_ascii_case(base)
                    && match origin[base.len()..].strip_prefix(':') {
                        None => origin.len() == base.len(),
                        Some(port) => {
                            !port.is_empty()
                                && port.len() <= 5
                                && port.bytes().all(|b| b.is_ascii_digit())
                        }
                    }
            }
        }
    }

    /// The entry as a storage bucket's CORS rule writes it (S3 allows one `*` in an origin).
    pub fn as_rule(&self) -> String {
        match self {
            OriginPattern::Exact(exact) => exact.clone(),
            OriginPattern::AnyPort(base) => format!("{base}:*"),
        }
    }
}

impl fmt::Display for OriginPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_rule())
    }
}

impl FromStr for OriginPattern {
    type Err = String;

    fn from_str(item: &str) -> Result<Self, String> {
        if item == "*" || item == "null" {
            return Err(format!(
                "{item:?} is not accepted: list the origins that may call Lectern"
            ));
        }
        let (raw, any_port) = match item.strip_suffix(":*") {
            Some(base) => (base, true),
            None => (item, false),
        };
        let url = Url::parse(raw).map_err(|e| format!("{item:?} is not an origin: {e}"))?;
        let plain = matches!(url.scheme(), "http" | "https")
            && url.host_str().is_some_and(|h| !h.contains('*'))
            && url.username().is_empty()
            && url.password().is_none()
            && url.path() == "/"
            && url.query().is_none()
            && url.fragment().is_none();
        if !plain || (any_port && url.port().is_some()) {
            return Err(format!(
                "{item:?} is not an origin: expected scheme://host[:port] or scheme://host:* \
                 (http or https, no path)"
            ));
        }
        let origin = url.origin().ascii_serialization();
        Ok(if any_port {
            OriginPattern::AnyPort(origin)
        } else {
            OriginPattern::Exact(origin)
        })
    }
}

/// The browser origins allowed to call the API and to use the storage URLs it signs (CORS).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedOrigins(Vec<OriginPattern>);

impl AllowedOrigins {
    pub fn new(patterns: Vec<OriginPattern>) -> Self {
        AllowedOrigins(patterns)
    }

    /// The loopback origins on any port: local mode's development frontends.
    pub fn loopback() -> Vec<OriginPattern> {
        vec![
            OriginPattern::AnyPort("http://localhost".into()),
            OriginPattern::AnyPort("http://127.0.0.1".into()),
        ]
    }

    /// Whether a request's `Origin` header value is allowed.
    pub fn allows(&self, origin: &str) -> bool {
        self.0.iter().any(|p| p.matches(origin))
    }

    pub fn patterns(&self) -> &[OriginPattern] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Accounts and authentication settings.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Earlier signing secrets, still accepted for tokens they signed (key rotation).
    pub previous_jwt_secrets: Vec<Secret>,
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<Cidr>,
    /// `RATE_LIMITS=off` disables every rate limit (behind a gateway that limits already).
    pub rate_limits: bool,
    /// Login attempts per client IP per minute.
    pub login_limit_per_ip: u32,
    /// Failed logins per account (email) per 15 minutes.
    pub login_limit_per_account: u32,
    /// Consecutive failed logins that lock an account, and for how long. The lock holds back
    /// clients that have been failing; a device that signed in before, or an address with no
    /// recent failures, still gets its password checked.
    pub lockout_threshold: i32,
    pub lockout_duration: Duration,
    /// Accounts created per client IP per hour.
    pub register_limit_per_ip: u32,
    /// Password-reset requests per client IP per hour (the account's own device counts apart).
    pub reset_limit_per_ip: u32,
    /// Password-reset mails per address per day, whoever asks: only against floods.
    pub reset_limit_per_address: u32,
    /// Password checks per account per 15 minutes (confirming an account deletion).
    pub password_check_limit: u32,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub host: IpAddr,
    pub port: u16,
    pub public_url: Url,
    /// Where people open the links in mail (the web frontend): `FRONTEND_URL`, by default
    /// `PUBLIC_URL`. Every link shape lives in [`crate::links`].
    pub frontend_url: Url,
    /// Browser origins allowed to call the API and the storage endpoint (`CORS_ALLOWED_ORIGINS`).
    pub cors_allowed_origins: AllowedOrigins,
    pub database_url: Secret,
    pub database_max_connections: u32,
    pub redis_url: Secret,
    /// Prefix of every Redis key and queue name, so several deployments (or tests) share one Redis.
    pub queue_prefix: String,
    pub storage: StorageConfig,
    pub mail: MailConfig,
    /// A student who enrolls again within this time of the instructor's last notice about them
    /// (drop and re-enroll, over and over) is not announced again.
    pub enrollment_notice_window: Duration,
    pub jwt_secret: Secret,
    /// Bearer token for operator routes until accounts with the admin role exist.
    pub admin_token: Option<Secret>,
    pub auth: AuthConfig,
    pub worker_concurrency: WorkerConcurrency,
    /// Per-kind overrides of the job time limit (`JOB_TIMEOUTS=send_email=30,transcode_video=3600`).
    pub job_timeouts: BTreeMap<String, Duration>,
    pub shutdown_timeout: Duration,
    /// Where a worker process serves its Prometheus `/metrics`; `None` when disabled.
    pub worker_metrics_addr: Option<std::net::SocketAddr>,
    /// The first retry's backoff ceiling; each further attempt doubles it (with jitter).
    pub job_retry_base: Duration,
    pub log_format: LogFormat,
    pub media: MediaConfig,
}

/// Uploads and media processing.
#[derive(Debug, Clone)]
pub struct MediaConfig {
    /// Allowed MIME types per kind (`video`, `image`, `audio`, `document`).
    pub allowed_types: BTreeMap<&'static str, Vec<String>>,
    /// Largest accepted file per kind, in bytes.
    pub max_bytes: BTreeMap<&'static str, u64>,
    /// Uploads at least this large are multipart uploads.
    pub multipart_threshold: u64,
    /// Part size of multipart uploads (at least 5 MiB, the S3 minimum).
    pub part_size: u64,
    /// Largest file accepted by the direct `POST /media` upload.
    pub direct_max_bytes: u64,
    /// An upload not completed within this time is removed (row and object).
    pub upload_expiry: Duration,
    /// How often workers look for expired uploads.
    pub sweep_interval: Duration,
    /// Lifetime of presigned upload URLs and of playback URLs.
    pub url_ttl: Duration,
    /// Longest video accepted: checked on the header at probe and again on the decoded
    /// timestamps and frame count while transcoding, since a header can lie.
    pub max_video_duration: Duration,
    /// Largest video picture accepted (displayed size), checked on the stream header before a
    /// frame is decoded: decoding cost grows with the picture, not with the file's bytes.
    pub video_max_width: u32,
    pub video_max_height: u32,
    pub video_max_pixels: u64,
    /// Highest frame rate accepted; it also bounds how many frames a video may hold.
    pub video_max_frame_rate: f64,
    /// Per-user upload quotas, checked when an upload starts: uploads not yet completed, their
    /// declared bytes, and the bytes of every media the user keeps.
    pub quota_pending_uploads: u64,
    pub quota_pending_bytes: u64,
    pub quota_stored_bytes: u64,
    pub image_max_width: u32,
    pub image_max_height: u32,
    pub image_max_pixels: u64,
    /// The `lectern-media` program workers run each media job in (`LECTERN_MEDIA_BIN`); `None`:
    /// the one next to the worker's own executable.
    pub process_bin: Option<std::path::PathBuf>,
}

impl MediaConfig {
    /// The kind a MIME type is allowed as, if any.
    pub fn kind_of(&self, mime: &str) -> Option<&'static str> {
        let mime = mime.trim().to_ascii_lowercase();
        self.allowed_types
            .iter()
            .find(|(_, types)| types.contains(&mime))
            .map(|(kind, _)| *kind)
    }
}

/// Every problem found in the environment, by variable name.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub problems: BTreeMap<&'static str, String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "invalid configuration ({} problem(s)):",
            self.problems.len()
        )?;
        for (name, problem) in &self.problems {
            writeln!(f, "  {name}: {problem}")?;
        }
        Ok(())
    }
}

/// Reads variables from a source and records every problem instead of stopping at the first.
struct Reader<F: Fn(&str) -> Option<String>> {
    get: F,
    problems: BTreeMap<&'static str, String>,
}

impl<F: Fn(&str) -> Option<String>> Reader<F> {
    fn raw(&self, name: &str) -> Option<String> {
        (self.get)(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    fn problem(&mut self, name: &'static str, message: impl Into<String>) {
        self.problems.insert(name, message.into());
    }

    fn string(&mut self, name: &'static str, default: &str) -> String {
        self.raw(name).unwrap_or_else(|| default.to_owned())
    }

    fn required(&mut self, name: &'static str) -> Option<String> {
        let value = self.raw(name);
        if value.is_none() {
            self.problem(name, "is required but not set");
        }
        value
    }

    fn parse<T: FromStr>(&mut self, name: &'static str, default: T, expected: &str) -> T {
        match self.raw(name) {
            None => default,
            Some(raw) => raw.parse().unwrap_or_else(|_| {
                self.problem(name, format!("expected {expected}, got {raw:?}"));
                default
            }),
        }
    }

    fn bool(&mut self, name: &'static str, default: bool) -> bool {
        match self.raw(name).map(|v| v.to_ascii_lowercase()) {
            None => default,
            Some(v) if matches!(v.as_str(), "1" | "true" | "yes" | "on") => true,
            Some(v) if matches!(v.as_str(), "0" | "false" | "no" | "off") => false,
            Some(v) => {
                self.problem(name, format!("expected true or false, got {v:?}"));
                default
            }
        }
    }

    fn positive(&mut self, name: &'static str, default: usize) -> usize {
        let value = self.parse(name, default, "a positive integer");
        if value == 0 {
            self.problem(name, "must be at least 1");
            return default;
        }
        value
    }

    fn url(&mut self, name: &'static str, raw: &str, schemes: &[&str]) -> Option<Url> {
        match Url::parse(raw) {
            Ok(url) if schemes.contains(&url.scheme()) => Some(url),
            Ok(url) => {
                self.problem(
                    name,
                    format!(
                        "scheme {:?} is not one of {}",
                        url.scheme(),
                        schemes.join(", ")
                    ),
                );
                None
            }
            Err(e) => {
                self.problem(name, format!("not a valid URL: {e}"));
                None
            }
        }
    }
}

const MIN_SECRET_LEN: usize = 32;

impl Config {
    /// Loads `.env` when present (never overriding the real environment), then reads the environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        let _ = dotenvy::dotenv();
        Self::from_source(|name| std::env::var(name).ok())
    }

    /// Reads configuration from any key-value source; tests pass a map.
    pub fn from_source(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut r = Reader {
            get,
            problems: BTreeMap::new(),
        };

        let host = r.parse("HOST", IpAddr::from([127, 0, 0, 1]), "an IP address");
        let port = r.parse("PORT", 8080u16, "a port number (0-65535)");
        let public_url_raw = r.string("PUBLIC_URL", &format!("http://localhost:{port}"));
        let public_url = r.url("PUBLIC_URL", &public_url_raw, &["http", "https"]);
        let frontend_url = match r.raw("FRONTEND_URL") {
            None => public_url.clone(),
            Some(raw) => r
                .url("FRONTEND_URL", &raw, &["http", "https"])
                .and_then(|url| {
                    if url.query().is_some() || url.fragment().is_some() {
                        r.problem(
                            "FRONTEND_URL",
                            "must be a base URL without a query or fragment",
                        );
                        None
                    } else {
                        Some(url)
                    }
                }),
        };

        let database_url = r.string("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/lectern");
        r.url("DATABASE_URL", &database_url, &["postgres", "postgresql"]);
        let database_max_connections =
            r.parse("DATABASE_MAX_CONNECTIONS", 10u32, "a positive integer");

        let redis_url = r.string("REDIS_URL", "redis://127.0.0.1:6379");
        r.url("REDIS_URL", &redis_url, &["redis", "rediss"]);
        let queue_prefix = r.string("QUEUE_PREFIX", "lectern");
        if !queue_prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            r.problem(
                "QUEUE_PREFIX",
                "only letters, digits, '-' and '_' are allowed",
            );
        }

        let storage = read_storage(&mut r);
        let cors_allowed_origins =
            read_cors(&mut r, frontend_url.as_ref(), storage.local.is_some());
        let mail = read_mail(&mut r);

        let jwt_secret = r.required("JWT_SECRET").unwrap_or_default();
        if !jwt_secret.is_empty() && jwt_secret.len() < MIN_SECRET_LEN {
            r.problem(
                "JWT_SECRET",
                format!("must be at least {MIN_SECRET_LEN} characters"),
            );
        }
        let admin_token = r.raw("ADMIN_TOKEN");
        if admin_token
            .as_ref()
            .is_some_and(|t| t.len() < MIN_SECRET_LEN)
        {
            r.problem(
                "ADMIN_TOKEN",
                format!("must be at least {MIN_SECRET_LEN} characters"),
            );
        }

        let auth = read_auth(&mut r);
        let worker_concurrency = WorkerConcurrency {
            email: r.positive("WORKER_CONCURRENCY_EMAIL", 8),
            media: r.positive("WORKER_CONCURRENCY_MEDIA", 2),
            default: r.positive("WORKER_CONCURRENCY_DEFAULT", 4),
        };
        let mut job_timeouts = BTreeMap::new();
        if let Some(raw) = r.raw("JOB_TIMEOUTS") {
            for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let parsed = item.split_once('=').and_then(|(kind, secs)| {
                    let kind = kind.trim();
                    let secs: u64 = secs.trim().parse().ok().filter(|s| *s > 0)?;
                    crate::jobs::KINDS
                        .contains(&kind)
                        .then(|| (kind.to_owned(), Duration::from_secs(secs)))
                });
                match parsed {
                    Some((kind, limit)) => {
                        job_timeouts.insert(kind, limit);
                    }
                    None => r.problem(
                        "JOB_TIMEOUTS",
                        format!("{item:?} is not kind=seconds with a known job kind"),
                    ),
                }
            }
        }
        let shutdown_timeout =
            Duration::from_secs(r.parse("SHUTDOWN_TIMEOUT_SECS", 30u64, "a number of seconds"));
        // Set but empty, or `off`, disables the listener; unset means the default address.
        let worker_metrics_addr = match (r.get)("WORKER_METRICS_ADDR").map(|v| v.trim().to_owned())
        {
            None => Some(std::net::SocketAddr::from(([127, 0, 0, 1], 9464))),
            Some(v) if v.is_empty() || v.eq_ignore_ascii_case("off") => None,
            Some(v) => match v.parse() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    r.problem(
                        "WORKER_METRICS_ADDR",
                        format!("expected host:port (e.g. 127.0.0.1:9464) or off, got {v:?}"),
                    );
                    None
                }
            },
        };
        let job_retry_base = Duration::from_millis(r.parse(
            "JOB_RETRY_BASE_MS",
            5000u64,
            "a number of milliseconds",
        ));
        if job_retry_base.is_zero() {
            r.problem("JOB_RETRY_BASE_MS", "must be at least 1");
        }
        let log_format = match r.string("LOG_FORMAT", "pretty").as_str() {
            "pretty" => LogFormat::Pretty,
            "json" => LogFormat::Json,
            other => {
                r.problem(
                    "LOG_FORMAT",
                    format!("expected pretty or json, got {other:?}"),
                );
                LogFormat::Pretty
            }
        };

        let media = read_media(&mut r);
        let enrollment_notice_window = Duration::from_secs(r.parse(
            "ENROLLMENT_NOTICE_WINDOW_SECS",
            24 * 3600u64,
            "a number of seconds",
        ));

        let (Some(public_url), Some(frontend_url), true) =
            (public_url, frontend_url, r.problems.is_empty())
        else {
            return Err(ConfigError {
                problems: r.problems,
            });
        };
        Ok(Config {
            host,
            port,
            public_url,
            frontend_url,
            cors_allowed_origins,
            database_url: Secret::new(database_url),
            database_max_connections,
            redis_url: Secret::new(redis_url),
            queue_prefix,
            storage,
            mail,
            enrollment_notice_window,
            jwt_secret: Secret::new(jwt_secret),
            admin_token: admin_token.map(Secret::new),
            auth,
            worker_concurrency,
            job_timeouts,
            shutdown_timeout,
            worker_metrics_addr,
            job_retry_base,
            log_format,
            media,
        })
    }
}

fn read_storage<F: Fn(&str) -> Option<String>>(r: &mut Reader<F>) -> StorageConfig {
    let backend = r.string("STORAGE_BACKEND", "local");
    let bucket = r.string("S3_BUCKET", "lectern-media");
    if !(3..=63).contains(&bucket.len())
        || !bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
    {
        r.problem(
            "S3_BUCKET",
            "must be 3-63 characters of lowercase letters, digits, '-' and '.'",
        );
    }
    let region = r.string("S3_REGION", "us-east-1");
    match backend.as_str() {
        "local" => {
            let port = r.parse("LOCAL_S3_PORT", 9000u16, "a port number (0-65535)");
            let dir = PathBuf::from(r.string("LOCAL_S3_DIR", "./data/s3"));
            let endpoint = Url::parse(&format!("http://127.0.0.1:{port}")).ok();
            let (access_key_id, secret) = read_local_keys(r);
            StorageConfig {
                endpoint,
                bucket,
                region,
                access_key_id,
                secret_access_key: Secret::new(secret),
                force_path_style: true,
                local: Some(LocalStorage { dir, port }),
            }
        }
        "s3" => {
            let endpoint = r
                .raw("S3_ENDPOINT")
                .and_then(|raw| r.url("S3_ENDPOINT", &raw, &["http", "https"]));
            let access_key_id = r.required("S3_ACCESS_KEY_ID").unwrap_or_default();
            let secret = r.required("S3_SECRET_ACCESS_KEY").unwrap_or_default();
            let force_path_style = r.bool("S3_FORCE_PATH_STYLE", endpoint.is_some());
            StorageConfig {
                endpoint,
                bucket,
                region,
                access_key_id,
                secret_access_key: Secret::new(secret),
                force_path_style,
                local: None,
            }
        }
        other => {
            r.problem(
                "STORAGE_BACKEND",
                format!("expected local or s3, got {other:?}"),
            );
            StorageConfig {
                endpoint: None,
                bucket,
                region,
                access_key_id: String::new(),
                secret_access_key: Secret::new(""),
                force_path_style: false,
                local: None,
            }
        }
    }
}

/// `CORS_ALLOWED_ORIGINS`: comma-separated origins (`https://app.example.com`, `http://localhost:*`
/// for any port), or `none`. Unset: the `FRONTEND_URL` origin, plus the loopback origins on any
/// port in local mode (`STORAGE_BACKEND=local`).
fn read_cors<F: Fn(&str) -> Option<String>>(
    r: &mut Reader<F>,
    frontend_url: Option<&Url>,
    local: bool,
) -> AllowedOrigins {
    const NAME: &str = "CORS_ALLOWED_ORIGINS";
    let Some(raw) = r.raw(NAME) else {
        let mut patterns: Vec<OriginPattern> = frontend_url
            .map(|url| OriginPattern::Exact(url.origin().ascii_serialization()))
            .into_iter()
            .collect();
        if local {
            patterns.extend(AllowedOrigins::loopback());
        }
        return AllowedOrigins::new(patterns);
    };
    if raw.eq_ignore_ascii_case("none") {
        return AllowedOrigins::default();
    }
    let mut patterns = Vec::new();
    for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match item.parse::<OriginPattern>() {
            Ok(pattern) if !patterns.contains(&pattern) => patterns.push(pattern),
            Ok(_) => {}
            Err(problem) => {
                r.problem(NAME, problem);
                break;
            }
        }
    }
    AllowedOrigins::new(patterns)
}

/// The key pair earlier versions of Lectern accepted by default on the embedded S3 endpoint:
/// published, so anything on the host could read every object with it.
const PUBLISHED_LOCAL_KEYS: [&str; 2] = ["lectern-local", "lectern-local-secret"];

/// The embedded S3 endpoint's key pair: required, not the published one, the secret long enough
/// not to be guessed (`scripts/dev run` writes a random pair into `.env` on first run).
fn read_local_keys<F: Fn(&str) -> Option<String>>(r: &mut Reader<F>) -> (String, String) {
    const HOW: &str = "the embedded S3 endpoint needs a key pair of its own \
                       (scripts/dev run writes a random one into .env)";
    let access_key_id = r.raw("S3_ACCESS_KEY_ID").unwrap_or_default();
    let secret = r.raw("S3_SECRET_ACCESS_KEY").unwrap_or_default();
    if access_key_id.is_empty() || PUBLISHED_LOCAL_KEYS.contains(&access_key_id.as_str()) {
        r.problem(
            "S3_ACCESS_KEY_ID",
            format!("is unset or the published default: {HOW}"),
        );
    }
    if secret.is_empty() || PUBLISHED_LOCAL_KEYS.contains(&secret.as_str()) {
        r.problem(
            "S3_SECRET_ACCESS_KEY",
            format!("is unset or the published default: {HOW}"),
        );
    } else if secret.len() < 16 {
        r.problem(
            "S3_SECRET_ACCESS_KEY",
            format!("must be at least 16 characters: {HOW}"),
        );
    }
    (access_key_id, secret)
}

fn read_media<F: Fn(&str) -> Option<String>>(r: &mut Reader<F>) -> MediaConfig {
    const MIB: u64 = 1024 * 1024;
    let defaults: [(&'static str, &'static str, &'static str, &str, u64); 4] = [
        (
            "video",
            "MEDIA_VIDEO_TYPES",
            "MEDIA_VIDEO_MAX_BYTES",
            "video/mp4,video/quicktime,video/webm,video/x-matroska,video/x-msvideo,video/mp2t",
            5 * 1024 * MIB,
        ),
        (
            "image",
            "MEDIA_IMAGE_TYPES",
            "MEDIA_IMAGE_MAX_BYTES",
            "image/jpeg,image/png,image/webp,image/gif",
            30 * MIB,
        ),
        (
            "audio",
            "MEDIA_AUDIO_TYPES",
            "MEDIA_AUDIO_MAX_BYTES",
            "audio/mpeg,audio/mp4,audio/wav,audio/ogg,audio/flac",
            500 * MIB,
        ),
        (
            "document",
            "MEDIA_DOCUMENT_TYPES",
            "MEDIA_DOCUMENT_MAX_BYTES",
            "application/pdf",
            100 * MIB,
        ),
    ];
    let mut allowed_types = BTreeMap::new();
    let mut max_bytes = BTreeMap::new();
    for (kind, types_var, max_var, default_types, default_max) in defaults {
        let types: Vec<String> = r
            .string(types_var, default_types)
            .split(',')
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect();
        if let Some(bad) = types.iter().find(|t| {
            t.split_once('/')
                .is_none_or(|(a, b)| a.is_empty() || b.is_empty() || b.contains('/'))
        }) {
            r.problem(types_var, format!("{bad:?} is not a MIME type"));
        }
        allowed_types.insert(kind, types);
        let max = r.parse(max_var, default_max, "a number of bytes");
        if max == 0 {
            r.problem(max_var, "must be at least 1");
        }
        max_bytes.insert(kind, max);
    }
    let part_size = r.parse("MEDIA_PART_BYTES", 16 * MIB, "a number of bytes");
    if !(5 * MIB..=5 * 1024 * MIB).contains(&part_size) {
        r.problem(
            "MEDIA_PART_BYTES",
            "must be between 5 MiB and 5 GiB (S3 part limits)",
        );
    }
    let multipart_threshold = r.parse(
        "MEDIA_MULTIPART_THRESHOLD_BYTES",
        64 * MIB,
        "a number of bytes",
    );
    if multipart_threshold < part_size {
        r.problem(
            "MEDIA_MULTIPART_THRESHOLD_BYTES",
            "must be at least MEDIA_PART_BYTES",
        );
    }
    let secs = |r: &mut Reader<F>, name: &'static str, default: u64| {
        let v: u64 = r.parse(name, default, "a number of seconds");
        if v == 0 {
            r.problem(name, "must be at least 1");
        }
        Duration::from_secs(v.max(1))
    };
    MediaConfig {
        allowed_types,
        max_bytes,
        multipart_threshold,
        part_size,
        direct_max_bytes: r.parse("MEDIA_DIRECT_MAX_BYTES", 25 * MIB, "a number of bytes"),
        upload_expiry: secs(r, "MEDIA_UPLOAD_EXPIRY_SECS", 24 * 3600),
        sweep_interval: secs(r, "MEDIA_SWEEP_INTERVAL_SECS", 60),
        url_ttl: secs(r, "MEDIA_URL_TTL_SECS", 900),
        max_video_duration: secs(r, "MEDIA_VIDEO_MAX_DURATION_SECS", 6 * 3600),
        video_max_width: u32::try_from(r.positive("MEDIA_VIDEO_MAX_WIDTH", 4096)).unwrap_or(4096),
        video_max_height: u32::try_from(r.positive("MEDIA_VIDEO_MAX_HEIGHT", 4096)).unwrap_or(4096),
        video_max_pixels: r.parse(
            "MEDIA_VIDEO_MAX_PIXELS",
            4096 * 2304u64,
            "a number of pixels",
        ),
        video_max_frame_rate: {
            let fps: f64 = r.parse("MEDIA_VIDEO_MAX_FRAME_RATE", 120.0, "frames per second");
            if !(fps.is_finite() && fps >= 1.0) {
                r.problem("MEDIA_VIDEO_MAX_FRAME_RATE", "must be at least 1");
            }
            fps.max(1.0)
        },
        quota_pending_uploads: r.positive("MEDIA_QUOTA_PENDING_UPLOADS", 10) as u64,
        quota_pending_bytes: r.parse(
            "MEDIA_QUOTA_PENDING_BYTES",
            20 * 1024 * MIB,
            "a number of bytes",
        ),
        quota_stored_bytes: r.parse(
            "MEDIA_QUOTA_STORED_BYTES",
            200 * 1024 * MIB,
            "a number of bytes",
        ),
        process_bin: r.raw("LECTERN_MEDIA_BIN").and_then(|raw| {
            let path = std::path::PathBuf::from(&raw);
            if !path.is_absolute() {
                r.problem(
                    "LECTERN_MEDIA_BIN",
                    format!("must be an absolute path, got {raw:?}"),
                );
                None
            } else if !path.is_file() {
                r.problem("LECTERN_MEDIA_BIN", format!("{raw} is not a file"));
                None
            } else {
                Some(path)
            }
        }),
        image_max_width: u32::try_from(r.positive("MEDIA_IMAGE_MAX_WIDTH", 16_384))
            .unwrap_or(16_384),
        image_max_height: u32::try_from(r.positive("MEDIA_IMAGE_MAX_HEIGHT", 16_384))
            .unwrap_or(16_384),
        image_max_pixels: r.parse(
            "MEDIA_IMAGE_MAX_PIXELS",
            50_000_000u64,
            "a number of pixels",
        ),
    }
}

fn read_auth<F: Fn(&str) -> Option<String>>(r: &mut Reader<F>) -> AuthConfig {
    let previous_jwt_secrets: Vec<Secret> = r
        .raw("JWT_PREVIOUS_SECRETS")
        .map(|raw| {
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(Secret::new)
                .collect()
        })
        .unwrap_or_default();
    if previous_jwt_secrets
        .iter()
        .any(|s| s.expose().len() < MIN_SECRET_LEN)
    {
        r.problem(
            "JWT_PREVIOUS_SECRETS",
            format!("each secret must be at least {MIN_SECRET_LEN} characters"),
        );
    }
    let access_secs: u64 = r.parse("ACCESS_TOKEN_TTL_SECS", 900, "a number of seconds");
    if !(30..=3600).contains(&access_secs) {
        r.problem(
            "ACCESS_TOKEN_TTL_SECS",
            "must be between 30 and 3600 seconds (access tokens are short-lived)",
        );
    }
    let refresh_days: u64 = r.parse("REFRESH_TOKEN_TTL_DAYS", 30, "a number of days");
    let mut trusted_proxies = Vec::new();
    if let Some(raw) = r.raw("TRUSTED_PROXIES") {
        for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match item.parse::<Cidr>() {
                Ok(cidr) => trusted_proxies.push(cidr),
                Err(()) => r.problem(
                    "TRUSTED_PROXIES",
                    format!("{item:?} is not an IP address or CIDR block"),
                ),
            }
        }
    }
    let rate_limits = match r.string("RATE_LIMITS", "on").as_str() {
        "on" => true,
        "off" => false,
        other => {
            r.problem("RATE_LIMITS", format!("expected on or off, got {other:?}"));
            true
        }
    };
    AuthConfig {
        previous_jwt_secrets,
        access_token_ttl: Duration::from_secs(access_secs),
        refresh_token_ttl: Duration::from_secs(refresh_days * 24 * 3600),
        trusted_proxies,
        rate_limits,
        login_limit_per_ip: u32::try_from(r.positive("LOGIN_LIMIT_PER_IP", 30)).unwrap_or(30),
        login_limit_per_account: u32::try_from(r.positive("LOGIN_LIMIT_PER_ACCOUNT", 10))
            .unwrap_or(10),
        lockout_threshold: i32::try_from(r.positive("LOCKOUT_THRESHOLD", 5)).unwrap_or(5),
        lockout_duration: Duration::from_secs(r.parse(
            "LOCKOUT_SECS",
            900u64,
            "a number of seconds",
        )),
        register_limit_per_ip: u32::try_from(r.positive("REGISTER_LIMIT_PER_IP", 20)).unwrap_or(20),
        reset_limit_per_ip: u32::try_from(r.positive("RESET_LIMIT_PER_IP", 5)).unwrap_or(5),
        reset_limit_per_address: u32::try_from(r.positive("RESET_LIMIT_PER_ADDRESS", 20))
            .unwrap_or(20),
        password_check_limit: u32::try_from(r.positive("PASSWORD_CHECK_LIMIT", 5)).unwrap_or(5),
    }
}

fn read_mail<F: Fn(&str) -> Option<String>>(r: &mut Reader<F>) -> MailConfig {
    let transport = match r.raw("SMTP_URL") {
        Some(raw) => {
            r.url("SMTP_URL", &raw, &["smtp", "smtps"]);
            MailTransport::Smtp(Secret::new(raw))
        }
        None => MailTransport::Folder(PathBuf::from(r.string("MAIL_DIR", "./data/mail"))),
    };
    let from = r.string("MAIL_FROM", "Lectern <no-reply@lectern.localhost>");
    if from.parse::<lettre::message::Mailbox>().is_err() {
        r.problem("MAIL_FROM", format!("not a valid mailbox: {from:?}"));
    }
    let bulk_per_minute = r.parse(
        "MAIL_BULK_PER_MINUTE",
        600u32,
        "a number of messages per minute",
    );
    if bulk_per_minute == 0 {
        r.problem("MAIL_BULK_PER_MINUTE", "must be at least 1".to_owned());
    }
    MailConfig {
        transport,
        from,
        bulk_per_minute,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Loads `vars`, with a key pair of the test's own for the embedded S3 endpoint unless set.
    fn load(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        // Later pairs win, so `vars` override the defaults.
        let map: HashMap<String, String> = [
            ("S3_ACCESS_KEY_ID", LOCAL_KEY),
            ("S3_SECRET_ACCESS_KEY", LOCAL_SECRET),
        ]
        .into_iter()
        .chain(vars.iter().copied())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        Config::from_source(|name| map.get(name).cloned())
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    const LOCAL_KEY: &str = "test-local-key";
    const LOCAL_SECRET: &str = "test-local-secret-0123456789";

    #[test]
    fn the_embedded_s3_refuses_the_published_or_a_missing_key_pair() {
        for (key, secret) in [
            ("lectern-local", "lectern-local-secret"),
            ("lectern-local", LOCAL_SECRET),
            (LOCAL_KEY, "lectern-local-secret"),
            ("", ""),
            (LOCAL_KEY, "short"),
        ] {
            let err = load(&[
                ("JWT_SECRET", SECRET),
                ("S3_ACCESS_KEY_ID", key),
                ("S3_SECRET_ACCESS_KEY", secret),
            ])
            .expect_err("refused");
            assert!(
                err.problems.contains_key("S3_ACCESS_KEY_ID")
                    || err.problems.contains_key("S3_SECRET_ACCESS_KEY"),
                "{key:?}/{secret:?}: {err}"
            );
        }
        let config = load(&[("JWT_SECRET", SECRET)]).expect("a pair of its own");
        assert_eq!(config.storage.access_key_id, LOCAL_KEY);
    }

    #[test]
    fn defaults_run_on_one_machine() {
        let config = load(&[("JWT_SECRET", SECRET)]).expect("defaults are valid");
        assert_eq!(config.port, 8080);
        assert_eq!(config.public_url.as_str(), "http://localhost:8080/");
        assert_eq!(config.frontend_url, config.public_url);
        assert!(config.storage.local.is_some());
        assert!(matches!(config.mail.transport, MailTransport::Folder(_)));
        assert_eq!(config.worker_concurrency.media, 2);
        assert_eq!(
            config.worker_metrics_addr,
            Some("127.0.0.1:9464".parse().expect("addr"))
        );
        assert_eq!(config.job_retry_base, Duration::from_secs(5));
    }

    #[test]
    fn worker_metrics_can_move_or_be_switched_off() {
        for off in ["", "off", "OFF"] {
            let config =
                load(&[("JWT_SECRET", SECRET), ("WORKER_METRICS_ADDR", off)]).expect("valid");
            assert_eq!(config.worker_metrics_addr, None, "{off:?}");
        }
        let config = load(&[
            ("JWT_SECRET", SECRET),
            ("WORKER_METRICS_ADDR", "0.0.0.0:9500"),
        ])
        .expect("valid");
        assert_eq!(
            config.worker_metrics_addr,
            Some("0.0.0.0:9500".parse().expect("addr"))
        );
        let err = load(&[("JWT_SECRET", SECRET), ("WORKER_METRICS_ADDR", "9500")])
            .expect_err("a port alone is not an address");
        assert!(err.problems.contains_key("WORKER_METRICS_ADDR"));
    }

    #[test]
    fn the_media_program_must_be_an_existing_absolute_path() {
        let config = load(&[("JWT_SECRET", SECRET)]).expect("valid");
        assert_eq!(config.media.process_bin, None);
        let here = std::env::current_exe().expect("current exe");
        let here = here.to_str().expect("utf-8 path");
        let config = load(&[("JWT_SECRET", SECRET), ("LECTERN_MEDIA_BIN", here)]).expect("valid");
        assert_eq!(
            config.media.process_bin,
            Some(std::path::PathBuf::from(here))
        );
        for bad in ["lectern-media", "/nonexistent/lectern-media", "/"] {
            let err = load(&[("JWT_SECRET", SECRET), ("LECTERN_MEDIA_BIN", bad)]).expect_err(bad);
            assert!(err.problems.contains_key("LECTERN_MEDIA_BIN"), "{bad}");
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = load(&[
            ("PORT", "eighty"),
            ("REDIS_URL", "http://nope"),
            ("STORAGE_BACKEND", "s3"),
            ("S3_ACCESS_KEY_ID", ""),
            ("S3_SECRET_ACCESS_KEY", ""),
            ("WORKER_CONCURRENCY_EMAIL", "0"),
            ("LOG_FORMAT", "xml"),
        ])
        .expect_err("invalid");
        let names: Vec<_> = err.problems.keys().copied().collect();
        assert_eq!(
            names,
            vec![
                "JWT_SECRET",
                "LOG_FORMAT",
                "PORT",
                "REDIS_URL",
                "S3_ACCESS_KEY_ID",
                "S3_SECRET_ACCESS_KEY",
                "WORKER_CONCURRENCY_EMAIL"
            ]
        );
        let text = err.to_string();
        assert!(text.contains("PORT: expected a port number"), "{text}");
    }

    #[test]
    fn the_frontend_url_is_a_plain_http_base() {
        let config = load(&[
            ("JWT_SECRET", SECRET),
            ("FRONTEND_URL", "https://app.example/learn/"),
        ])
        .expect("valid");
        assert_eq!(config.frontend_url.as_str(), "https://app.example/learn/");
        assert_eq!(config.public_url.as_str(), "http://localhost:8080/");
        for bad in ["ftp://app.example", "not a url", "https://app.example/?x=1"] {
            let err = load(&[("JWT_SECRET", SECRET), ("FRONTEND_URL", bad)]).expect_err(bad);
            assert!(err.problems.contains_key("FRONTEND_URL"), "{bad}: {err}");
        }
    }

    #[test]
    fn trusted_proxies_are_cidr_blocks() {
        let config = load(&[
            ("JWT_SECRET", SECRET),
            ("TRUSTED_PROXIES", "10.0.0.0/8, ::1"),
        ])
        .expect("valid");
        let proxies = &config.auth.trusted_proxies;
        assert!(proxies[0].contains("10.1.2.3".parse().expect("ip")));
        assert!(!proxies[0].contains("11.1.2.3".parse().expect("ip")));
        assert!(proxies[0].contains("::ffff:10.9.9.9".parse().expect("ip")));
        assert!(proxies[1].contains("::1".parse().expect("ip")));
        assert!(!proxies[1].contains("127.0.0.1".parse().expect("ip")));
        let err =
            load(&[("JWT_SECRET", SECRET), ("TRUSTED_PROXIES", "10.0.0.0/33")]).expect_err("bad");
        assert!(err.problems.contains_key("TRUSTED_PROXIES"));
    }

    #[test]
    fn cors_defaults_to_the_frontend_and_loopback_in_local_mode() {
        let config = load(&[
            ("JWT_SECRET", SECRET),
            ("PUBLIC_URL", "https://api.example.com/"),
            ("FRONTEND_URL", "https://www.example.com/app"),
        ])
        .expect("valid");
        assert_eq!(config.frontend_url.as_str(), "https://www.example.com/app");
        let cors = &config.cors_allowed_origins;
        assert!(cors.allows("https://www.example.com"));
        assert!(cors.allows("http://localhost:5173"));
        assert!(cors.allows("http://127.0.0.1:3000"));
        assert!(cors.allows("http://localhost"));
        assert!(!cors.allows("https://api.example.com"), "not the frontend");
        assert!(!cors.allows("http://www.example.com"), "scheme differs");
        assert!(!cors.allows("https://www.example.com.evil.test"));
        assert!(!cors.allows("http://localhost.evil.test:80"));
        assert!(!cors.allows("http://localhost:80x"));
        assert!(!cors.allows("null"));

        // FRONTEND_URL defaults to PUBLIC_URL; outside local mode loopback is not allowed.
        let config = load(&[
            ("JWT_SECRET", SECRET),
            ("PUBLIC_URL", "https://api.example.com"),
            ("STORAGE_BACKEND", "s3"),
            ("S3_ACCESS_KEY_ID", "k"),
            ("S3_SECRET_ACCESS_KEY", "s"),
        ])
        .expect("valid");
        assert_eq!(config.frontend_url.as_str(), "https://api.example.com/");
        let cors = &config.cors_allowed_origins;
        assert!(cors.allows("https://api.example.com"));
        assert!(!cors.allows("http://localhost:5173"));
    }

    #[test]
    fn cors_origins_are_exact_origins_or_any_port() {
        let config = load(&[
            ("JWT_SECRET", SECRET),
            (
                "CORS_ALLOWED_ORIGINS",
                " https://App.Example.com:443/ , http://10.0.0.5:*,http://[::1]:8080",
            ),
        ])
        .expect("valid");
        let cors = &config.cors_allowed_origins;
        assert!(cors.allows("https://app.example.com"));
        assert!(!cors.allows("https://app.example.com:8443"));
        assert!(cors.allows("http://10.0.0.5:1234"));
        assert!(cors.allows("http://[::1]:8080"));
        assert!(
            !cors.allows("http://localhost:5173"),
            "the list replaces the default"
        );
        let rules: Vec<String> = cors.patterns().iter().map(OriginPattern::as_rule).collect();
        assert_eq!(
            rules,
            [
                "https://app.example.com",
                "http://10.0.0.5:*",
                "http://[::1]:8080"
            ]
        );

        let none =
            load(&[("JWT_SECRET", SECRET), ("CORS_ALLOWED_ORIGINS", "none")]).expect("valid");
        assert!(none.cors_allowed_origins.is_empty());

        for bad in [
            "*",
            "null",
            "app.example.com",
            "https://app.example.com/path",
            "https://app.example.com?x=1",
            "ftp://files.example.com",
            "https://user@app.example.com",
            "https://app.example.com:8443:*",
            "https://ok.example.com, https://*.example.com",
        ] {
            let err =
                load(&[("JWT_SECRET", SECRET), ("CORS_ALLOWED_ORIGINS", bad)]).expect_err(bad);
            assert!(
                err.problems.contains_key("CORS_ALLOWED_ORIGINS"),
                "{bad}: {err}"
            );
        }
        let err = load(&[("JWT_SECRET", SECRET), ("FRONTEND_URL", "mailto:x@y.z")])
            .expect_err("not a web URL");
        assert!(err.problems.contains_key("FRONTEND_URL"));
    }

    #[test]
    fn secrets_do_not_print() {
        let config = load(&[("JWT_SECRET", SECRET)]).expect("valid");
        let debug = format!("{config:?}");
        assert!(!debug.contains(SECRET));
        assert!(!debug.contains(LOCAL_SECRET));
    }
}
