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
    /// Something to know that does not stop this process from serving (for Redis: it lost its
    /// data and the workers are pushing the queued jobs again from PostgreSQL).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
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
        note: None,
    }
}

/// What Redis's answers mean for the queue.
#[derive(Debug)]
enum RedisProblem {
    Down(redis::RedisError),
    RefusesWrites(redis::RedisError),
}

impl std::fmt::Display for RedisProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisProblem::Down(e) => write!(
                f,
                "Redis is unreachable ({e}); jobs are committed in PostgreSQL and pushed once it is back"
            ),
            RedisProblem::RefusesWrites(e) => write!(
                f,
                "Redis refuses writes ({e}): raise its maxmemory or free memory; jobs are committed in PostgreSQL and pushed once it takes writes again"
            ),
        }
    }
}

/// Writes a short-lived probe key (a read-only replica or a full Redis with `noeviction`
/// refuses it) and reads the queue's epoch marker and re-push flag
/// (see [`crate::jobs::durability`]). Returns a note when Redis lost its data.
async fn redis_check(services: &Services) -> Result<Option<String>, RedisProblem> {
    use crate::jobs::durability::{epoch_key, repushing_key};
    let prefix = &services.config.queue_prefix;
    let mut conn = services.redis.clone();
    let (epoch, repushing): (Option<String>, Option<String>) = redis::cmd("MGET")
        .arg(epoch_key(prefix))
        .arg(repushing_key(prefix))
        .query_async(&mut conn)
        .await
        .map_err(RedisProblem::Down)?;
    redis::cmd("SET")
        .arg(format!("{prefix}-readyz-probe"))
        .arg(1)
        .arg("PX")
        .arg(10_000)
        .query_async::<()>(&mut conn)
        .await
        .map_err(|e| {
            // An error code from the server (OOM, READONLY, MISCONF): it answers but refuses.
            if e.code().is_some() {
                RedisProblem::RefusesWrites(e)
            } else {
                RedisProblem::Down(e)
            }
        })?;
    Ok(match (epoch, repushing) {
        (_, Some(since)) => Some(format!("Redis lost its data; the workers are pushing the queued jobs again from PostgreSQL (since {since})")),
        (None, None) => Some("Redis holds no epoch marker: it lost its data (flush, restart without persistence, failover) or no worker has started yet; workers push every queued job again from PostgreSQL as soon as they see it".to_owned()),
        (Some(_), None) => None,
    })
}

/// Runs the three checks concurrently, each bounded by a short timeout.
pub async fn readiness(services: &Services) -> Readiness {
    let database = check(async {
        sqlx::query_scalar!("SELECT 1 AS ping")
            .fetch_one(&services.db)
            .await
            .map(|_| ())
    });
    let redis = async {
        let mut note = None;
        let mut checked = check(async {
            note = redis_check(services).await?;
            Ok::<_, RedisProblem>(())
        })
        .await;
        checked.note = note;
        checked
    };
    let storage = check(services.storage.ready());
    let (database, redis, storage) = tokio::join!(database, redis, storage);
    Readiness {
        ready: database.ok && redis.ok && storage.ok,
        database,
        redis,
        storage,
    }
}
