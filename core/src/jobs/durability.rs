//! Redis is a cache of the job table, never the only copy of a job.
//!
//! A job is pushed to Redis once it is committed and due, and recorded as dispatched. Redis can
//! then lose the push: `FLUSHDB`, a restart without persistence (or with a snapshot older than
//! the push), a failover to a replica that had not received it, an eviction. PostgreSQL still
//! holds the job as `queued` (or `retrying`) with a `dispatched_at`, so the relay in every worker
//! pushes it again:
//!
//! - **at once after a new Redis epoch**: the marker key [`epoch_key`] is created with
//!   `SET NX` on every relay tick; when the relay creates it, or when `INFO server`'s `run_id`
//!   changed since the last tick, Redis lost (or may have lost) its data, and every job that was
//!   dispatched but has not started is pushed again ([`Watch::check`], [`repush_before`]);
//! - **by a sweep otherwise** ([`sweep`]): a job dispatched more than [`SWEEP_AGE`] ago that has
//!   not started, and that cannot be in its queue's pending list (the list is empty, or its head
//!   was pushed after the job), is pushed again. Pending task ids are UUIDv7s, so the head's id
//!   tells when it was pushed: a deep backlog that is still being drained is never pushed twice.
//!
//! Pushing a job twice is harmless: the claim in PostgreSQL lets one delivery run it, and a
//! duplicate delivery of a job that is running or done claims nothing and is acknowledged.

use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::aio::ConnectionManager;
use sqlx::PgPool;
use uuid::Uuid;

use super::{JobQueue, Queue, queue_config};
use crate::Result;

/// A job dispatched this long ago that has not started, and that Redis cannot be holding, is
/// pushed again. With the relay's one-second tick, a lost job is pushed again within ~7 s.
pub const SWEEP_AGE: Duration = Duration::from_secs(5);

/// When a queue's pending head carries no push time (not a UUIDv7), a dispatched job must be
/// this old before it is pushed again.
pub const SWEEP_AGE_BLIND: Duration = Duration::from_secs(60);

/// Clock difference tolerated between PostgreSQL (`dispatched_at`) and the processes that push
/// (the UUIDv7 task ids).
const SKEW_SECS: i64 = 2;

/// The key whose absence tells that Redis lost its data since a worker last saw it.
pub fn epoch_key(prefix: &str) -> String {
    format!("{prefix}-epoch")
}

/// Present while a worker re-pushes jobs after a new epoch (its value: when it started); read
/// by `/readyz`.
pub fn repushing_key(prefix: &str) -> String {
    format!("{prefix}-repushing")
}

/// What one worker knows of Redis's epoch.
#[derive(Debug, Default)]
pub struct Watch {
    run_id: Option<String>,
}

impl Watch {
    /// Creates the epoch marker if it is missing and reads the server's `run_id`. Returns why
    /// Redis's content can no longer be trusted (a new epoch), or `None`.
    pub async fn check(
        &mut self,
        conn: &mut ConnectionManager,
        prefix: &str,
    ) -> redis::RedisResult<Option<&'static str>> {
        let (created, info): (Option<String>, String) = redis::pipe()
            .cmd("SET")
            .arg(epoch_key(prefix))
            .arg(Uuid::now_v7().to_string())
            .arg("NX")
            .cmd("INFO")
            .arg("server")
            .query_async(conn)
            .await?;
        let run_id = run_id(&info);
        let restarted = matches!((&self.run_id, &run_id), (Some(old), Some(new)) if old != new);
        if run_id.is_some() {
            self.run_id = run_id;
        }
        Ok(if created.is_some() {
            Some(
                "the epoch marker was missing: Redis lost its data (flush, restart without persistence, failover or eviction)",
            )
        } else if restarted {
            Some("Redis restarted (its run_id changed): pushes since its last snapshot may be lost")
        } else {
            None
        })
    }
}

/// The `run_id` field of `INFO server`.
pub fn run_id(info: &str) -> Option<String> {
    info.lines()
        .find_map(|line| line.strip_prefix("run_id:"))
        .map(|id| id.trim().to_owned())
}

/// When a pending task id (a UUIDv7) was made, if it is one.
fn pushed_at(task_id: &str) -> Option<DateTime<Utc>> {
    let (secs, nanos) = Uuid::parse_str(task_id).ok()?.get_timestamp()?.to_unix();
    DateTime::from_timestamp(i64::try_from(secs).ok()?, nanos)
}

/// Pushes again, for one queue, jobs that were dispatched but have not started: those
/// dispatched more than `age` ago and before `before` (when given). Safe in every worker at
/// once (`SKIP LOCKED`); each job pushed is stamped with a new `dispatched_at`. Returns how many.
pub async fn repush_dispatched(
    pool: &PgPool,
    jobs: &JobQueue,
    queue: Queue,
    age: Duration,
    before: Option<DateTime<Utc>>,
    limit: i64,
) -> Result<usize> {
    let mut tx = pool.begin().await?;
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM jobs
          WHERE queue = $1 AND state IN ('queued', 'retrying') AND dispatched_at IS NOT NULL
            AND run_at <= now() + interval '1 second'
            AND dispatched_at < LEAST(now() - make_interval(secs => $2),
                                      COALESCE($3, 'infinity'::timestamptz))
          ORDER BY dispatched_at
          LIMIT $4
          FOR UPDATE SKIP LOCKED",
    )
    .bind(queue.as_str())
    .bind(age.as_secs_f64())
    .bind(before)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    if ids.is_empty() {
        tx.commit().await?;
        return Ok(0);
    }
    let pushes: Vec<(Uuid, Queue)> = ids.iter().map(|id| (*id, queue)).collect();
    super::store::push_and_mark(&mut tx, jobs, &pushes).await?;
    tx.commit().await?;
    Ok(ids.len())
}

/// After a new epoch: pushes again every job dispatched before `since` that has not started,
/// in rounds of `limit`, up to `rounds` rounds. Returns how many, and whether any are left.
pub async fn repush_before(
    pool: &PgPool,
    jobs: &JobQueue,
    since: DateTime<Utc>,
    limit: i64,
    rounds: usize,
) -> Result<(usize, bool)> {
    let mut pushed = 0;
    for queue in Queue::ALL {
        let mut left = true;
        for _ in 0..rounds {
            let round =
                repush_dispatched(pool, jobs, queue, Duration::ZERO, Some(since), limit).await?;
            pushed += round;
            if round < limit as usize {
                left = false;
                break;
            }
        }
        if left {
            return Ok((pushed, true));
        }
    }
    Ok((pushed, false))
}

/// The sweep: for each queue, pushes again the jobs dispatched more than [`SWEEP_AGE`] ago that
/// have not started and cannot be in the queue's pending list (pushed before its head).
pub async fn sweep(
    pool: &PgPool,
    jobs: &JobQueue,
    conn: &mut ConnectionManager,
    prefix: &str,
    limit: i64,
) -> Result<usize> {
    let mut heads = redis::pipe();
    for queue in Queue::ALL {
        heads
            .cmd("LINDEX")
            .arg(queue_config(prefix, queue).active_jobs_list())
            .arg(0);
    }
    let heads: Vec<Option<String>> = heads.query_async(conn).await?;
    let mut pushed = 0;
    for (queue, head) in Queue::ALL.into_iter().zip(heads) {
        let (age, before) = match head.as_deref().map(pushed_at) {
            // Nothing pending: whatever was dispatched and has not started is not in Redis.
            None => (SWEEP_AGE, None),
            Some(Some(head)) => (SWEEP_AGE, Some(head - chrono::Duration::seconds(SKEW_SECS))),
            Some(None) => (SWEEP_AGE_BLIND, None),
        };
        pushed += repush_dispatched(pool, jobs, queue, age, before, limit).await?;
    }
    Ok(pushed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lectern writes apalis-redis's records itself (see `JobQueue::push_now`) and reads its
    /// pending list here: an apalis-redis release that renames them must fail this test.
    #[test]
    fn apalis_redis_key_layout_is_the_one_lectern_writes() {
        let config = queue_config("pfx", Queue::Email);
        assert_eq!(config.active_jobs_list(), "pfx-email:active");
        assert_eq!(config.job_data_hash(), "pfx-email:data");
        assert_eq!(config.job_meta_hash(), "pfx-email:meta");
        assert_eq!(config.signal_list(), "pfx-email:signal");
        assert_eq!(config.scheduled_jobs_set(), "pfx-email:scheduled");
        assert_eq!(config.done_jobs_set(), "pfx-email:done");
        assert_eq!(config.dead_jobs_set(), "pfx-email:dead");
        assert_eq!(config.workers_set(), "pfx-email:workers");
        assert_eq!(config.inflight_jobs_set(), "pfx-email:inflight");
    }

    #[test]
    fn run_id_is_read_from_info_server() {
        let info = "# Server\r\nredis_version:7.0.15\r\nrun_id:abc123\r\ntcp_port:6379\r\n";
        assert_eq!(run_id(info).as_deref(), Some("abc123"));
        assert_eq!(run_id("# Server\r\n"), None);
    }

    #[test]
    fn a_pending_task_id_tells_when_it_was_pushed() {
        let before = Utc::now() - chrono::Duration::seconds(1);
        let at = pushed_at(&Uuid::now_v7().to_string()).expect("a v7 id has a time");
        assert!(at >= before && at <= Utc::now() + chrono::Duration::seconds(1));
        assert_eq!(pushed_at(&Uuid::new_v4().to_string()), None);
        assert_eq!(pushed_at("01ARZ3NDEKTSV4RRFFQ69G5FAV"), None);
    }
}
