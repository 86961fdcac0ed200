//! Jobs: typed payloads for every kind of background work, the durable job table
//! (PostgreSQL is the source of truth for a job's state, payload, attempts and errors) and the
//! Redis transport (apalis-redis) that wakes a worker as soon as a job is due.
//!
//! Life of a job: a service inserts the row inside the transaction that created its subject
//! ([`insert`]), commits, then calls [`JobQueue::dispatch`]. If the process dies between the
//! commit and the push, the relay in every worker ([`relay_due`]) pushes it later, so a committed
//! job is never lost; a rolled-back transaction never leaves a job behind.

pub mod attempt;
pub mod durability;
mod noop;
mod payload;
mod store;
pub mod wake;

pub use noop::*;
pub use payload::*;
pub use store::*;

use std::time::Duration;

use apalis::prelude::TaskSink;
use apalis_redis::{Config as RedisQueueConfig, RedisStorage};
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

/// Queues isolate kinds from each other: a burst of transcodes never delays a password-reset mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Queue {
    Email,
    Media,
    Default,
}

impl Queue {
    pub const ALL: [Queue; 3] = [Queue::Email, Queue::Media, Queue::Default];

    pub fn as_str(self) -> &'static str {
        match self {
            Queue::Email => "email",
            Queue::Media => "media",
            Queue::Default => "default",
        }
    }

    pub fn parse(name: &str) -> Queue {
        match name {
            "email" => Queue::Email,
            "media" => Queue::Media,
            _ => Queue::Default,
        }
    }

    /// The Redis queue name, namespaced by the deployment's prefix (no `:` in apalis queue names).
    pub fn redis_name(self, prefix: &str) -> String {
        format!("{prefix}-{}", self.as_str())
    }
}

/// What travels through Redis: only the job's id. The payload stays in PostgreSQL, so a worker
/// always runs the committed version and the job's history lives in one place.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct JobRef {
    pub id: Uuid,
}

/// How often an idle worker asks Redis for work when no wake-up arrives (a backstop: pushes
/// publish a wake-up on [`wake_channel`], which workers subscribe to).
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// The pub/sub channel that wakes the workers of a queue as soon as a job is pushed.
pub fn wake_channel(prefix: &str, queue: Queue) -> String {
    format!("{prefix}-wake-{}", queue.as_str())
}
/// A worker that stops heart-beating for this long loses its Redis leases to live workers.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
pub const MISSED_HEARTBEATS: usize = 3;

/// The apalis-redis settings of one queue. Lectern keeps its own leases and history in
/// PostgreSQL, so apalis-redis's task locks (an `LREM` over the whole pending list per task, which
/// makes a long backlog quadratic) and its per-task pub/sub events are off.
pub fn queue_config(prefix: &str, queue: Queue) -> RedisQueueConfig {
    RedisQueueConfig::default()
        .queue(queue.redis_name(prefix))
        .heartbeat_interval(HEARTBEAT_INTERVAL)
        .missed_heartbeats(MISSED_HEARTBEATS)
        .lock_tasks(false)
        .emit_events(false)
}

/// The apalis-redis storage of one queue.
pub fn redis_storage<C>(conn: C, prefix: &str, queue: Queue) -> RedisStorage<JobRef, C>
where
    C: redis::aio::ConnectionLike + Send + Sync + Clone + 'static,
{
    RedisStorage::new(conn).with_config(queue_config(prefix, queue))
}

/// A Redis client whose connections send every request at once (`TCP_NODELAY`). redis-rs leaves
/// Nagle's algorithm on: with several requests in flight on one multiplexed connection, a small
/// write can wait for the previous segment's delayed ACK, tens of milliseconds.
pub fn redis_client(url: &str) -> redis::RedisResult<redis::Client> {
    use redis::IntoConnectionInfo;
    let info = url.into_connection_info()?;
    let tcp = info.tcp_settings().clone().set_nodelay(true);
    redis::Client::open(info.set_tcp_settings(tcp))
}

/// A Redis connection that is established on first use and re-established after Redis restarts.
pub fn redis_connection(url: &str) -> redis::RedisResult<ConnectionManager> {
    let client = redis_client(url)?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(5)))
        .set_number_of_retries(3)
        .set_max_delay(Duration::from_secs(2));
    client.get_connection_manager_lazy(config)
}

/// How long a running attempt owns its job without a heartbeat.
pub const LEASE: Duration = Duration::from_secs(30);

/// The attempt the current task is running, set by the worker around each handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JobContext {
    pub id: Uuid,
    pub attempt: i32,
    pub max_attempts: i32,
}

tokio::task_local! {
    /// The job attempt a handler runs under (see [`current_job`]).
    pub static CURRENT_JOB: JobContext;
}

/// The job attempt this task runs, if it runs one.
pub fn current_job() -> Option<JobContext> {
    CURRENT_JOB.try_with(|c| *c).ok()
}

/// Records the running job's progress (0-100) and extends its lease. Does nothing outside a job.
/// Queues `job` when a row of the `schedules` table is due. `advance_sql` is the conditional
/// UPDATE that moves the due row to its next run and returns it (no row: not due yet); it runs in
/// the transaction that inserts the job. Every worker calls this now and then; the conditional
/// UPDATE lets exactly one of them queue each run.
pub async fn queue_when_due(
    services: &crate::Services,
    advance_sql: &'static str,
    job: &Job,
) -> crate::Result<bool> {
    let mut tx = services.db.begin().await?;
    let due: Option<String> = sqlx::query_scalar(advance_sql)
        .fetch_optional(&mut *tx)
        .await?;
    if due.is_none() {
        return Ok(false);
    }
    let queued = insert(&mut tx, job, None, None).await?;
    tx.commit().await?;
    services.jobs.dispatch(&queued).await;
    Ok(true)
}

pub async fn report_progress(pool: &PgPool, percent: u8) -> crate::Result<()> {
    if let Some(job) = current_job() {
        heartbeat(pool, job.id, job.attempt, LEASE, Some(percent.min(100))).await?;
    }
    Ok(())
}

/// The enqueue handle the API and services use: cheap to clone.
#[derive(Clone)]
pub struct JobQueue {
    pool: PgPool,
    redis: ConnectionManager,
    prefix: String,
    email: RedisStorage<JobRef>,
    media: RedisStorage<JobRef>,
    default: RedisStorage<JobRef>,
}

impl std::fmt::Debug for JobQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobQueue").finish_non_exhaustive()
    }
}

impl JobQueue {
    pub fn new(pool: PgPool, conn: ConnectionManager, prefix: &str) -> Self {
        JobQueue {
            pool,
            redis: conn.clone(),
            prefix: prefix.to_owned(),
            email: redis_storage(conn.clone(), prefix, Queue::Email),
            media: redis_storage(conn.clone(), prefix, Queue::Media),
            default: redis_storage(conn, prefix, Queue::Default),
        }
    }

    fn storage(&self, queue: Queue) -> RedisStorage<JobRef> {
        match queue {
            Queue::Email => self.email.clone(),
            Queue::Media => self.media.clone(),
            Queue::Default => self.default.clone(),
        }
    }

    /// Pushes a committed job to its Redis queue and records that it was dispatched.
    /// Failure is logged, not returned: the relay dispatches the job once Redis is back.
    ///
    /// A job scheduled for later is left to the relay, which pushes it straight onto the pending
    /// list once it is due (so it never starts early, and never passes through apalis-redis's
    /// scheduled set: see [`JobQueue::push_now`]).
    pub async fn dispatch(&self, job: &NewJob) {
        if job.coalesced || job.scheduled {
            return;
        }
        if let Err(e) = self.push_now(&[(job.id, job.queue)]).await {
            tracing::warn!(job_id = %job.id, error = %e, "job committed but not pushed; the relay will push it");
            return;
        }
        if job.dispatched {
            return;
        }
        if let Err(e) = mark_dispatched(&self.pool, job.id).await {
            tracing::warn!(job_id = %job.id, error = %e, "job pushed but not marked dispatched; the relay may push it again (harmless)");
        }
    }

    /// [`JobQueue::dispatch`] for many committed jobs: one Redis round trip per queue (and per
    /// [`PUSH_CHUNK`] jobs) and one `UPDATE` to record them. Failures are logged, as in `dispatch`.
    pub async fn dispatch_many(&self, jobs: &[NewJob]) {
        let mut due: Vec<(Uuid, Queue)> = Vec::with_capacity(jobs.len());
        for job in jobs.iter().filter(|j| !j.coalesced && !j.scheduled) {
            due.push((job.id, job.queue));
        }
        if due.is_empty() {
            return;
        }
        if let Err(e) = self.push_now(&due).await {
            tracing::warn!(jobs = due.len(), error = %e, "jobs committed but not pushed; the relay will push them");
            return;
        }
        // Rows written already marked (`insert_many`) need no second write.
        let pushed: Vec<Uuid> = jobs
            .iter()
            .filter(|j| !j.coalesced && !j.scheduled && !j.dispatched)
            .map(|j| j.id)
            .collect();
        if pushed.is_empty() {
            return;
        }
        if let Err(e) = mark_dispatched_many(&self.pool, &pushed).await {
            tracing::warn!(jobs = pushed.len(), error = %e, "jobs pushed but not marked dispatched; the relay may push them again (harmless)");
        }
    }

    /// Enqueues many jobs that run now, `per_transaction` to a transaction ([`insert_many`],
    /// `COMMIT`, [`JobQueue::dispatch_many`]), pipelined: while one group is pushed to Redis,
    /// the next is written to PostgreSQL. Each group commits on its own: an error stops at the
    /// group that failed, and the groups before it stay queued (and are pushed). Returns the
    /// jobs queued, in order.
    pub async fn enqueue_bulk(
        &self,
        jobs: &[Job],
        created_by: Option<Uuid>,
        per_transaction: usize,
    ) -> crate::Result<Vec<NewJob>> {
        let mut queued: Vec<NewJob> = Vec::with_capacity(jobs.len());
        let mut committed: Option<Vec<NewJob>> = None;
        for group in jobs.chunks(per_transaction.max(1)) {
            let write = async {
                let mut tx = self.pool.begin().await?;
                let written = insert_many(&mut tx, group, created_by).await?;
                tx.commit().await?;
                Ok::<_, crate::Error>(written)
            };
            let previous = committed.take();
            let push = async {
                if let Some(previous) = &previous {
                    self.dispatch_many(previous).await;
                }
            };
            let (written, ()) = tokio::join!(write, push);
            queued.extend(previous.into_iter().flatten());
            match written {
                Ok(written) => committed = Some(written),
                Err(e) => {
                    tracing::warn!(queued = queued.len(), error = %e, "bulk enqueue stopped");
                    return Err(e);
                }
            }
        }
        if let Some(last) = committed {
            self.dispatch_many(&last).await;
            queued.extend(last);
        }
        Ok(queued)
    }

    /// Pushes one job id to Redis, to run after `delay` (second granularity in apalis-redis;
    /// a delayed push goes through apalis-redis's scheduled set, which Lectern itself no longer
    /// uses: scheduled jobs and retries are pushed by the relay once due).
    pub async fn push(&self, id: Uuid, queue: Queue, delay: Duration) -> Result<(), crate::Error> {
        if delay.is_zero() {
            return self.push_now(&[(id, queue)]).await;
        }
        let mut storage = self.storage(queue);
        let task = apalis::prelude::TaskBuilder::new(JobRef { id })
            .run_after(delay)
            .build();
        storage.push_task(task).await.map_err(|e| {
            crate::Error::Unavailable(crate::error::Dependency::Redis, e.to_string().into())
        })
    }

    /// Pushes job ids that are due now straight onto their queues' pending lists, then wakes the
    /// queues' idle workers: one atomic pipeline per queue and [`PUSH_CHUNK`] ids.
    ///
    /// apalis-redis's own push puts every task in its *scheduled* set, which its fetch script
    /// promotes with a single Lua `unpack`: past about 8,000 due tasks (a backlog built while the
    /// workers were down, a bulk enqueue) that call fails and the queue can no longer be fetched.
    /// This writes the same records its fetch script reads (task data, metadata, pending list),
    /// minus the scheduled set.
    pub async fn push_now(&self, jobs: &[(Uuid, Queue)]) -> Result<(), crate::Error> {
        let mut conn = self.redis.clone();
        for queue in Queue::ALL {
            let ids: Vec<Uuid> = jobs
                .iter()
                .filter(|(_, q)| *q == queue)
                .map(|(id, _)| *id)
                .collect();
            if ids.is_empty() {
                continue;
            }
            let config = queue_config(&self.prefix, queue);
            let (data, meta, active) = (
                config.job_data_hash(),
                config.job_meta_hash(),
                config.active_jobs_list(),
            );
            for chunk in ids.chunks(PUSH_CHUNK) {
                let mut pipe = redis::pipe();
                pipe.atomic();
                let mut task_ids = Vec::with_capacity(chunk.len());
                for id in chunk {
                    let task_id = Uuid::now_v7().to_string();
                    let body =
                        serde_json::to_vec(&JobRef { id: *id }).map_err(crate::Error::internal)?;
                    pipe.hset_nx(&data, &task_id, body).ignore();
                    pipe.hset_multiple(
                        format!("{meta}:{task_id}"),
                        &[
                            ("attempts", "0"),
                            ("max_attempts", "25"),
                            ("status", "Pending"),
                            ("idempotency_key", ""),
                        ],
                    )
                    .ignore();
                    task_ids.push(task_id);
                }
                pipe.rpush(&active, &task_ids).ignore();
                pipe.del(config.signal_list()).ignore();
                pipe.lpush(config.signal_list(), 1).ignore();
                // Wakes the queue's idle workers; one that misses it finds the jobs at its next poll.
                pipe.publish(wake_channel(&self.prefix, queue), "").ignore();
                pipe.query_async::<()>(&mut conn).await.map_err(|e| {
                    crate::Error::Unavailable(crate::error::Dependency::Redis, Box::new(e))
                })?;
            }
        }
        Ok(())
    }
}

/// Ids per Redis pipeline when pushing many jobs.
pub const PUSH_CHUNK: usize = 1000;

/// Operators: failed jobs (dead letters) and other states, newest first.
pub async fn admin_list(
    services: &crate::Services,
    caller: &crate::auth::Principal,
    state: Option<JobState>,
    kind: Option<&str>,
    limit: Option<i64>,
    cursor: Option<&str>,
) -> crate::Result<crate::page::Page<JobView>> {
    caller.require_admin()?;
    let limit = crate::page::limit(limit);
    let before = cursor
        .map(|c| {
            c.parse::<Uuid>()
                .map_err(|_| crate::Error::invalid("cursor", "is not a cursor this API gave out"))
        })
        .transpose()?;
    let items = list(&services.db, state, kind, limit, before).await?;
    let next_cursor = (items.len() as i64 == limit)
        .then(|| items.last().map(|j| j.id.to_string()))
        .flatten();
    Ok(crate::page::Page { items, next_cursor })
}

/// Operators: runs failed jobs again, by id or every failed job of a kind. Returns how many.
pub async fn admin_retry(
    services: &crate::Services,
    caller: &crate::auth::Principal,
    ids: Option<&[Uuid]>,
    kind: Option<&str>,
) -> crate::Result<Vec<JobReference>> {
    caller.require_admin()?;
    if ids.is_none() && kind.is_none() {
        return Err(crate::Error::invalid(
            "kind",
            "give a kind (or retry one job by its id)",
        ));
    }
    let requeued = requeue_failed(&services.db, ids, kind).await?;
    for job in &requeued {
        services.jobs.dispatch(job).await;
    }
    Ok(requeued.iter().map(NewJob::reference).collect())
}

/// A job with its payload and every failed attempt's error, for operators.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct JobDetail {
    #[serde(flatten)]
    pub job: JobView,
    pub payload: serde_json::Value,
    /// `[{"attempt", "error", "at"}]`
    pub errors: serde_json::Value,
}

pub async fn admin_get(
    services: &crate::Services,
    caller: &crate::auth::Principal,
    id: Uuid,
) -> crate::Result<JobDetail> {
    caller.require_admin()?;
    let job = get(&services.db, id)
        .await?
        .ok_or(crate::Error::NotFound("job"))?;
    let (payload, errors): (serde_json::Value, serde_json::Value) =
        sqlx::query_as("SELECT payload, errors FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_one(&services.db)
            .await?;
    Ok(JobDetail {
        job,
        payload,
        errors,
    })
}

pub async fn admin_queues(
    services: &crate::Services,
    caller: &crate::auth::Principal,
) -> crate::Result<Vec<QueueDepth>> {
    caller.require_admin()?;
    depths(&services.db).await
}

/// How a job attempt failed, which decides what happens next.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Worth another attempt after a backoff: a dependency timed out, an SMTP 4xx, storage throttling.
    #[error("{0}")]
    Retryable(String),
    /// Retrying cannot help: a corrupt file, a refused mailbox, a subject that no longer exists.
    #[error("{0}")]
    Permanent(String),
}

impl From<crate::Error> for JobError {
    fn from(e: crate::Error) -> Self {
        match e {
            crate::Error::Unavailable(dep, source) => {
                JobError::Retryable(format!("{dep} unavailable: {source}"))
            }
            crate::Error::Internal(source) => {
                JobError::Retryable(format!("internal error: {source}"))
            }
            other => JobError::Permanent(other.to_string()),
        }
    }
}

/// Exponential backoff with full jitter: attempt 1 waits up to `base`, each further attempt up to
/// twice as long, capped at `max`. Jitter spreads retries so failures do not come back in waves.
pub fn backoff(attempt: i32, base: Duration, max: Duration) -> Duration {
    let exp = u32::try_from(attempt.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
    let ceiling = base.saturating_mul(2u32.saturating_pow(exp)).min(max);
    let ceiling_ms = u64::try_from(ceiling.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    let jittered = rand::random_range(ceiling_ms / 2..=ceiling_ms);
    Duration::from_millis(jittered)
}

/// Frees Redis of finished deliveries. apalis-redis keeps every task's data, metadata and id
/// forever; Lectern's job history lives in PostgreSQL, so Redis only needs what is pending.
/// One worker at a time does it (a short Redis lock). Returns how many tasks were dropped.
pub async fn vacuum_redis(services: &crate::Services) -> crate::Result<usize> {
    use apalis_core::backend::Vacuum;
    let prefix = &services.config.queue_prefix;
    let mut conn = services.redis.clone();
    let locked: Option<String> = redis::cmd("SET")
        .arg(format!("{prefix}-vacuum-lock"))
        .arg("1")
        .arg("NX")
        .arg("EX")
        .arg(50)
        .query_async(&mut conn)
        .await?;
    if locked.is_none() {
        return Ok(0);
    }
    let mut dropped = 0;
    for queue in Queue::ALL {
        let mut storage = redis_storage(services.redis.clone(), prefix, queue);
        dropped += storage.vacuum().await.map_err(|e| {
            crate::Error::Unavailable(crate::error::Dependency::Redis, e.to_string().into())
        })?;
        let name = queue.redis_name(prefix);
        let _: () = redis::cmd("UNLINK")
            .arg(format!("{name}:done"))
            .arg(format!("{name}:dead"))
            .query_async(&mut conn)
            .await?;
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_secs(2);
        let max = Duration::from_secs(60);
        for _ in 0..100 {
            let first = backoff(1, base, max);
            assert!(
                first >= Duration::from_secs(1) && first <= base,
                "{first:?}"
            );
            let third = backoff(3, base, max);
            assert!(
                third >= Duration::from_secs(4) && third <= Duration::from_secs(8),
                "{third:?}"
            );
            assert!(backoff(30, base, max) <= max);
        }
    }
}
