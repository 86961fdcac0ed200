//! Readiness: can this process reach PostgreSQL, Redis and storage right now?

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::Services;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Check {
    pub ok: bool,
    pub latency_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Readiness {
    pub ready: bool,
    pub database: Check,
    pub redis: Check,
    pub storage: Check,
}

async fn check<E: std::fmt::Display>(fut: impl Future<Output = Result<(), E>>) -> Check {
    let started = Instant::now();
    let outcome = tokio::time::timeout(CHECK_TIMEOUT, fut).await;
    let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let error = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!("no answer within {} ms", CHECK_TIMEOUT.as_millis())),
    };
    Check {
        ok: error.is_none(),
        latency_ms,
        error,
    }
}

/// Runs the three checks concurrently, each bounded by a short timeout.
pub async fn readiness(services: &Services) -> Readiness {
    let database = check(async {
        sqlx::query("SELECT 1")
            .execute(&services.db)
            .await
            .map(|_| ())
    });
    let redis = check(async {
        let mut conn = services.redis.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map(|_| ())
    });
    let storage = check(services.storage.ready());
    let (database, redis, storage) = tokio::join!(database, redis, storage);
    Readiness {
        ready: database.ok && redis.ok && storage.ok,
        database,
        redis,
        storage,
    }
}
