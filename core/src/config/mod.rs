//! Typed configuration read from environment variables (and `.env` when present).
//!
//! Every variable is parsed once, at start-up; [`Config::from_env`] reports every
//! missing or invalid value in one [`ConfigError`] so an operator fixes them all at once.

mod auth;
mod cors;
mod mail;
mod media;
mod network;
mod reader;
mod storage;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use url::Url;

pub use auth::AuthConfig;
pub use cors::{AllowedOrigins, OriginPattern};
pub use mail::{MailConfig, MailTransport};
pub use media::MediaConfig;
pub use network::{IpNet, any_contains};
pub use reader::ConfigError;
use reader::Reader;
/// A secret string that never prints itself (logs, panics, `Debug`) and is wiped on drop; read
/// it with [`ExposeSecret::expose_secret`].
pub use secrecy::{ExposeSecret, SecretString as Secret};
pub use storage::{LocalStorage, StorageConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// How many jobs one worker process runs at once, per queue.
#[derive(Debug, Clone, Copy)]
pub struct WorkerConcurrency {
    pub email: usize,
    pub media: usize,
    pub default: usize,
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

pub(crate) const MIN_SECRET_LEN: usize = 32;

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

        let storage = storage::read_storage(&mut r);
        let cors_allowed_origins =
            cors::read_cors(&mut r, frontend_url.as_ref(), storage.local.is_some());
        let mail = mail::read_mail(&mut r);

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

        let auth = auth::read_auth(&mut r);
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

        let media = media::read_media(&mut r);
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
            database_url: Secret::from(database_url),
            database_max_connections,
            redis_url: Secret::from(redis_url),
            queue_prefix,
            storage,
            mail,
            enrollment_notice_window,
            jwt_secret: Secret::from(jwt_secret),
            admin_token: admin_token.map(Secret::from),
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

/// The shared test fixture: a configuration read from a map.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use std::collections::HashMap;

    /// Loads `vars`, with a key pair of the test's own for the embedded S3 endpoint unless set.
    pub(crate) fn load(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
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

    pub(crate) const SECRET: &str = "0123456789abcdef0123456789abcdef";
    pub(crate) const LOCAL_KEY: &str = "test-local-key";
    pub(crate) const LOCAL_SECRET: &str = "test-local-secret-0123456789";
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::*;

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
    fn secrets_do_not_print() {
        let config = load(&[("JWT_SECRET", SECRET)]).expect("valid");
        let debug = format!("{config:?}");
        assert!(!debug.contains(SECRET));
        assert!(!debug.contains(LOCAL_SECRET));
    }
}
