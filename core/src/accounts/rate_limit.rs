//! Fixed-window counters in Redis. Redis trouble fails open (logged): the account lockout in
//! PostgreSQL still protects passwords while Redis is away.

use std::time::Duration;

use crate::Services;
use crate::error::{Error, Result};

/// Counts one event under `key`; `Err(RateLimited)` once more than `limit` happened in `window`.
pub async fn hit(services: &Services, key: &str, limit: u32, window: Duration) -> Result<()> {
    if !services.config.auth.rate_limits {
        return Ok(());
    }
    let key = format!("{}-ratelimit:{key}", services.config.queue_prefix);
    let mut conn = services.redis.clone();
    let outcome: redis::RedisResult<(u32, i64)> = redis::pipe()
        .atomic()
        .incr(&key, 1u32)
        .cmd("EXPIRE")
        .arg(&key)
        .arg(window.as_secs().max(1))
        .arg("NX")
        .ignore()
        .ttl(&key)
        .query_async(&mut conn)
        .await;
    match outcome {
        Ok((count, ttl)) if count > limit => Err(Error::RateLimited {
            retry_after: Duration::from_secs(u64::try_from(ttl).unwrap_or(1).max(1)),
        }),
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::warn!(error = %e, "rate limiter unavailable; allowing the request");
            Ok(())
        }
    }
}

/// Forgets the failures counted under `key` (after a successful login).
pub async fn reset(services: &Services, key: &str) {
    let key = format!("{}-ratelimit:{key}", services.config.queue_prefix);
    let mut conn = services.redis.clone();
    let _: redis::RedisResult<()> = redis::cmd("DEL").arg(key).query_async(&mut conn).await;
}

fn full_key(services: &Services, key: &str) -> String {
    format!("{}-ratelimit:{key}", services.config.queue_prefix)
}

/// Counts one event under `key` (a failure, say) without refusing anything: [`over`] decides later.
pub async fn record(services: &Services, key: &str, window: Duration) {
    if !services.config.auth.rate_limits {
        return;
    }
    let key = full_key(services, key);
    let mut conn = services.redis.clone();
    let outcome: redis::RedisResult<()> = redis::pipe()
        .atomic()
        .incr(&key, 1u32)
        .ignore()
        .cmd("EXPIRE")
        .arg(&key)
        .arg(window.as_secs().max(1))
        .arg("NX")
        .ignore()
        .query_async(&mut conn)
        .await;
    if let Err(e) = outcome {
        tracing::warn!(error = %e, "rate limiter unavailable; event not counted");
    }
}

/// `Err(RateLimited)` when at least `limit` events are counted under `key`, without counting one.
pub async fn over(services: &Services, key: &str, limit: u32) -> Result<()> {
    match count(services, key).await {
        Some((count, ttl)) if count >= limit => Err(Error::RateLimited {
            retry_after: Duration::from_secs(u64::try_from(ttl).unwrap_or(1).max(1)),
        }),
        _ => Ok(()),
    }
}

/// The events counted under `key` and the seconds left in their window; `None` when there are
/// none, rate limits are off, or Redis is away (fail open, as [`hit`]).
pub async fn count(services: &Services, key: &str) -> Option<(u32, i64)> {
    match read(services, key).await {
        Some(Ok(found)) => found,
        Some(Err(e)) => {
            tracing::warn!(error = %e, "rate limiter unavailable; allowing the request");
            None
        }
        None => None,
    }
}

/// Whether any event is counted under `key`, failing closed: `true` when it cannot be known
/// (rate limits off, Redis away). For the account lock, which PostgreSQL keeps and which must
/// keep protecting the password when the counters are not there.
pub async fn any_or_unknown(services: &Services, key: &str) -> bool {
    !matches!(read(services, key).await, Some(Ok(None)))
}

/// `None` when rate limits are off.
async fn read(services: &Services, key: &str) -> Option<redis::RedisResult<Option<(u32, i64)>>> {
    if !services.config.auth.rate_limits {
        return None;
    }
    let key = full_key(services, key);
    let mut conn = services.redis.clone();
    let outcome: redis::RedisResult<(Option<u32>, i64)> = redis::pipe()
        .get(&key)
        .ttl(&key)
        .query_async(&mut conn)
        .await;
    Some(outcome.map(|(count, ttl)| count.filter(|c| *c > 0).map(|c| (c, ttl))))
}
