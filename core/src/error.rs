//! The error every core service returns. The API maps it to HTTP in one place.

use std::collections::BTreeMap;

/// Problems with individual input fields: field name to a list of human sentences.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldErrors(pub BTreeMap<String, Vec<String>>);

impl FieldErrors {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, field: &str, problem: impl Into<String>) {
        self.0
            .entry(field.to_owned())
            .or_default()
            .push(problem.into());
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(())` when no field has a problem, else a validation error carrying all of them.
    pub fn into_result(self) -> Result<(), Error> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(Error::Validation(self))
        }
    }
}

/// Which external service failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dependency {
    Database,
    Redis,
    Storage,
    Mail,
}

impl std::fmt::Display for Dependency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Dependency::Database => "database",
            Dependency::Redis => "redis",
            Dependency::Storage => "storage",
            Dependency::Mail => "mail",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("one or more fields are invalid")]
    Validation(FieldErrors),
    /// 401: no credential, or one that is wrong, expired or revoked.
    #[error("{message}")]
    Unauthenticated { code: &'static str, message: String },
    /// 403: the caller is known but may not do this.
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
    /// 402: the thing must be paid for (or granted) first.
    #[error("{message}")]
    PaymentRequired { message: String },
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// 422 about the request as a whole rather than a field (an `Idempotency-Key` reused with
    /// another body).
    #[error("{message}")]
    Unprocessable { code: &'static str, message: String },
    #[error("too many attempts; try again in {} s", retry_after.as_secs().max(1))]
    RateLimited { retry_after: std::time::Duration },
    #[error("{0} is unavailable")]
    Unavailable(
        Dependency,
        #[source] Box<dyn std::error::Error + Send + Sync>,
    ),
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn internal(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Internal(Box::new(e))
    }

    pub fn unauthenticated() -> Self {
        Error::Unauthenticated {
            code: "unauthenticated",
            message: "a valid access token is required".into(),
        }
    }

    pub fn forbidden() -> Self {
        Error::Forbidden {
            code: "forbidden",
            message: "you are not allowed to do this".into(),
        }
    }

    pub fn invalid(field: &str, problem: impl Into<String>) -> Self {
        let mut fields = FieldErrors::new();
        fields.add(field, problem);
        Error::Validation(fields)
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::RowNotFound => Error::NotFound("row"),
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => {
                Error::Unavailable(Dependency::Database, Box::new(e))
            }
            _ => Error::Internal(Box::new(e)),
        }
    }
}

impl From<redis::RedisError> for Error {
    fn from(e: redis::RedisError) -> Self {
        if e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
        {
            Error::Unavailable(Dependency::Redis, Box::new(e))
        } else {
            Error::Internal(Box::new(e))
        }
    }
}
