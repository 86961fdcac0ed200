//! SQL for the `jobs` table.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{Job, JobQueue, Queue};
use crate::error::{Error, Result};

/// A job row written inside a transaction, to be dispatched once that transaction commits.
#[derive(Debug, Clone)]
#[must_use = "dispatch the job after the transaction commits"]
pub struct NewJob {
    pub id: Uuid,
    pub kind: &'static str,
    pub queue: Queue,
    pub run_at: DateTime<Utc>,
    /// An identical job was already queued; this is that job, and it needs no new dispatch.
    pub coalesced: bool,
    /// Due later than it was written (scheduled, debounced): the relay pushes it to Redis once
    /// it is due, rather than the dispatch after commit.
    pub scheduled: bool,
    /// The row was written already marked as dispatched ([`insert_many`]): the push that follows
    /// the commit needs no `UPDATE` to record it. If that push never happens (the process dies
    /// between commit and push, Redis is down), the durability sweep pushes the job within
    /// [`super::durability::SWEEP_AGE`] and a relay tick, as it does for a push Redis lost.
    pub dispatched: bool,
}

impl NewJob {
    pub fn delay(&self) -> Duration {
        (self.run_at - Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO)
    }

    /// The reference long requests answer with (`202 Accepted`).
    pub fn reference(&self) -> JobReference {
        JobReference {
            id: self.id,
            kind: self.kind.to_owned(),
            state: JobState::Queued,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Retrying,
    Succeeded,
    Failed,
}

impl JobState {
    fn parse(s: &str) -> JobState {
        match s {
            "running" => JobState::Running,
            "retrying" => JobState::Retrying,
            "succeeded" => JobState::Succeeded,
            "failed" => JobState::Failed,
            _ => JobState::Queued,
        }
    }
}

/// `{id, kind, state}`: what a client gets back when it starts long work.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct JobReference {
    pub id: Uuid,
    pub kind: String,
    pub state: JobState,
}

/// A job as clients and operators see it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct JobView {
    pub id: Uuid,
    pub kind: String,
    pub state: JobState,
    pub attempts: i32,
    pub max_attempts: i32,
    pub progress: i16,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub run_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub created_by: Option<Uuid>,
}

#[derive(sqlx::FromRow)]
struct JobRow {
    id: Uuid,
    kind: String,
    state: String,
    attempts: i32,
    max_attempts: i32,
    progress: i16,
    last_error: Option<String>,
    created_at: DateTime<Utc>,
    run_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    created_by: Option<Uuid>,
}

impl From<JobRow> for JobView {
    fn from(r: JobRow) -> Self {
        JobView {
            id: r.id,
            kind: r.kind,
            state: JobState::parse(&r.state),
            attempts: r.attempts,
            max_attempts: r.max_attempts,
            progress: r.progress,
            last_error: r.last_error,
            created_at: r.created_at,
            run_at: r.run_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
            created_by: r.created_by,
        }
    }
}

/// Writes a job row in the caller's transaction. Dispatch it with [`JobQueue::dispatch`] after commit.
/// A job with a [`Job::dedupe_key`] coalesces with an identical queued one instead.
pub async fn insert(
    conn: &mut PgConnection,
    job: &Job,
    created_by: Option<Uuid>,
    run_at: Option<DateTime<Utc>>,
) -> Result<NewJob> {
    let policy = job.policy();
    let dedupe_key = job.dedupe_key();
    let run_at = run_at.or_else(|| {
        let debounce = job.debounce();
        (!debounce.is_zero()).then(|| Utc::now() + debounce)
    });
    for _ in 0..3 {
        let id = Uuid::now_v7();
        let inserted: Option<(DateTime<Utc>, bool)> = sqlx::query_as(
            "INSERT INTO jobs (id, kind, queue, payload, max_attempts, created_by, run_at, dedupe_key)
             VALUES ($1, $2, $3, $4, $5, $6, COALESCE($7, now()), $8)
             ON CONFLICT (kind, dedupe_key) WHERE dedupe_key IS NOT NULL AND state = 'queued' DO NOTHING
             RETURNING run_at, run_at > updated_at",
        )
        .bind(id)
        .bind(job.kind())
        .bind(policy.queue.as_str())
        .bind(job.payload_json())
        .bind(policy.max_attempts)
        .bind(created_by)
        .bind(run_at)
        .bind(dedupe_key.as_deref())
        .fetch_optional(&mut *conn)
        .await?;
        if let Some((run_at, scheduled)) = inserted {
            return Ok(NewJob {
                id,
                kind: job.kind(),
                queue: policy.queue,
                run_at,
                coalesced: false,
                scheduled,
                dispatched: false,
            });
        }
        let existing: Option<(Uuid, DateTime<Utc>)> = sqlx::query_as(
            "SELECT id, run_at FROM jobs WHERE kind = $1 AND dedupe_key = $2 AND state = 'queued'",
        )
        .bind(job.kind())
        .bind(dedupe_key.as_deref())
        .fetch_optional(&mut *conn)
        .await?;
        if let Some((id, run_at)) = existing {
            return Ok(NewJob {
                id,
                kind: job.kind(),
                queue: policy.queue,
                run_at,
                coalesced: true,
                scheduled: false,
                dispatched: false,
            });
        }
        // The queued twin started running in between: try again, now without a conflict.
    }
    Err(Error::Conflict {
        code: "job_contention",
        message: "could not enqueue the job under contention; try again".into(),
    })
}

/// [`insert`] for many jobs at once, in the caller's transaction: one multi-row `INSERT` for
/// every job that runs now (jobs that coalesce or wait for a debounce go one by one, through
/// [`insert`]). Dispatch them with [`JobQueue::dispatch_many`] after commit.
///
/// The rows that run now are written already marked as dispatched (`dispatched_at`, see
/// [`NewJob::dispatched`]), which saves the `UPDATE` after the push: a lost push is then found
/// by the durability sweep instead of the relay's scan of undispatched rows.
pub async fn insert_many(
    conn: &mut PgConnection,
    jobs: &[Job],
    created_by: Option<Uuid>,
) -> Result<Vec<NewJob>> {
    let mut queued = Vec::with_capacity(jobs.len());
    let (mut ids, mut kinds, mut queues, mut payloads, mut max_attempts) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for job in jobs {
        if job.dedupe_key().is_some() || !job.debounce().is_zero() {
            queued.push(insert(conn, job, created_by, None).await?);
            continue;
        }
        let policy = job.policy();
        ids.push(Uuid::now_v7());
        kinds.push(job.kind());
        queues.push(policy.queue);
        payloads.push(job.payload_json());
        max_attempts.push(policy.max_attempts);
    }
    if ids.is_empty() {
        return Ok(queued);
    }
    let queue_names: Vec<&str> = queues.iter().map(|q| q.as_str()).collect();
    let (inserted, run_at): (i64, Option<DateTime<Utc>>) = sqlx::query_as(
        "WITH inserted AS (
            INSERT INTO jobs (id, kind, queue, payload, max_attempts, created_by, dispatched_at)
            SELECT id, kind, queue, payload, max_attempts, $6, now()
              FROM unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::int4[])
                AS new(id, kind, queue, payload, max_attempts)
            RETURNING run_at)
         SELECT count(*), min(run_at) FROM inserted",
    )
    .bind(&ids)
    .bind(&kinds)
    .bind(&queue_names)
    .bind(&payloads)
    .bind(&max_attempts)
    .bind(created_by)
    .fetch_one(&mut *conn)
    .await?;
    let run_at = match run_at {
        Some(run_at) if usize::try_from(inserted).ok() == Some(ids.len()) => run_at,
        _ => {
            return Err(Error::Internal(
                format!("inserted {inserted} of {} jobs", ids.len()).into(),
            ));
        }
    };
    queued.extend(
        ids.into_iter()
            .zip(kinds)
            .zip(queues)
            .map(|((id, kind), queue)| NewJob {
                id,
                kind,
                queue,
                run_at,
                coalesced: false,
                scheduled: false,
                dispatched: true,
            }),
    );
    Ok(queued)
}

/// Records that these jobs are in Redis. Like a claim, the record commits without waiting for
/// its WAL flush: lost to a PostgreSQL crash, it only makes the relay push the jobs again, which
/// the claim makes harmless.
pub async fn mark_dispatched_many(pool: &PgPool, ids: &[Uuid]) -> Result<()> {
    sqlx::query(
        "WITH no_flush AS MATERIALIZED (SELECT set_config('synchronous_commit', 'off', true))
         UPDATE jobs SET dispatched_at = now() FROM no_flush
          WHERE id = ANY($1) AND dispatched_at IS NULL",
    )
    .bind(ids)
    .execute(pool)
    .await?;
    Ok(())
}

/// [`mark_dispatched_many`] for one job.
pub async fn mark_dispatched(pool: &PgPool, id: Uuid) -> Result<()> {
    sqlx::query(
        "WITH no_flush AS MATERIALIZED (SELECT set_config('synchronous_commit', 'off', true))
         UPDATE jobs SET dispatched_at = now() FROM no_flush
          WHERE id = $1 AND dispatched_at IS NULL",
    )
    .bind(id)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<JobView>> {
    let row: Option<JobRow> = sqlx::query_as(
        "SELECT id, kind, state, attempts, max_attempts, progress, last_error, created_at,
                run_at, started_at, finished_at, created_by
         FROM jobs WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(Into::into))
}

/// An attempt a worker now owns.
#[derive(Debug)]
pub struct Claimed {
    pub id: Uuid,
    pub kind: String,
    pub payload: serde_json::Value,
    pub attempt: i32,
    pub max_attempts: i32,
}

/// Takes a job for one attempt, atomically: only a queued or retrying job that is due, or a
/// running one whose owner vanished (lease expired), can be claimed. A duplicate delivery of a
/// job that already ran, or that another worker is running, claims nothing.
///
/// The claim commits without waiting for its WAL flush (`synchronous_commit = off` for this
/// statement's transaction only, set by `set_config(..., true)`): the job starts without a disk
/// write in its path. A claim lost to a PostgreSQL crash only means the job is queued again and
/// re-delivered, and it cannot outlive an outcome: the success or failure written after it is a
/// durable commit, which flushes the WAL up to and past the claim's commit record.
pub async fn claim(pool: &PgPool, id: Uuid, lease: Duration) -> Result<Option<Claimed>> {
    let lease_secs = lease.as_secs_f64();
    let row: Option<(Uuid, String, serde_json::Value, i32, i32)> = sqlx::query_as(
        "WITH no_flush AS MATERIALIZED (SELECT set_config('synchronous_commit', 'off', true))
         UPDATE jobs
            SET state = 'running', attempts = attempts + 1, started_at = now(), updated_at = now(),
                lease_expires_at = now() + make_interval(secs => $2)
           FROM no_flush
          WHERE id = $1
            AND ((state IN ('queued', 'retrying') AND run_at <= now() + interval '1 second')
                 OR (state = 'running' AND lease_expires_at < now()))
         RETURNING id, kind, payload, attempts, max_attempts",
    )
    .bind(id)
    .bind(lease_secs)
    .fetch_optional(pool)
    .await?;
    Ok(
        row.map(|(id, kind, payload, attempt, max_attempts)| Claimed {
            id,
            kind,
            payload,
            attempt,
            max_attempts,
        }),
    )
}

/// [`claim`] for many deliveries in one statement. Each id is claimed at most once, whatever
/// the number of times it appears; the ids that cannot be claimed are missing from the result.
pub async fn claim_many(pool: &PgPool, ids: &[Uuid], lease: Duration) -> Result<Vec<Claimed>> {
    let rows: Vec<(Uuid, String, serde_json::Value, i32, i32)> = sqlx::query_as(
        "WITH no_flush AS MATERIALIZED (SELECT set_config('synchronous_commit', 'off', true))
         UPDATE jobs
            SET state = 'running', attempts = attempts + 1, started_at = now(), updated_at = now(),
                lease_expires_at = now() + make_interval(secs => $2)
           FROM no_flush
          WHERE id = ANY($1)
            AND ((state IN ('queued', 'retrying') AND run_at <= now() + interval '1 second')
                 OR (state = 'running' AND lease_expires_at < now()))
         RETURNING id, kind, payload, attempts, max_attempts",
    )
    .bind(ids)
    .bind(lease.as_secs_f64())
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, kind, payload, attempt, max_attempts)| Claimed {
            id,
            kind,
            payload,
            attempt,
            max_attempts,
        })
        .collect())
}

/// Extends a running attempt's lease (long jobs call this while they work) and records progress.
pub async fn heartbeat(
    pool: &PgPool,
    id: Uuid,
    attempt: i32,
    lease: Duration,
    progress: Option<u8>,
) -> Result<bool> {
    let updated = sqlx::query(
        "UPDATE jobs
            SET lease_expires_at = now() + make_interval(secs => $3),
                progress = COALESCE($4, progress), updated_at = now()
          WHERE id = $1 AND attempts = $2 AND state = 'running'",
    )
    .bind(id)
    .bind(attempt)
    .bind(lease.as_secs_f64())
    .bind(progress.map(i16::from))
    .execute(pool)
    .await?;
    Ok(updated.rows_affected() == 1)
}

const SUCCEED: &str = "UPDATE jobs
    SET state = 'succeeded', progress = 100, lease_expires_at = NULL,
        finished_at = now(), updated_at = now()
  WHERE id = $1 AND attempts = $2 AND state = 'running'";

/// Records a successful attempt. Fenced by the attempt number: a worker whose lease was taken
/// over cannot overwrite the newer attempt's outcome.
pub async fn succeed(pool: &PgPool, id: Uuid, attempt: i32) -> Result<bool> {
    let updated = sqlx::query(SUCCEED)
        .bind(id)
        .bind(attempt)
        .execute(pool)
        .await?;
    Ok(updated.rows_affected() == 1)
}

/// [`succeed`] inside the caller's transaction (see [`super::attempt::complete_in`]).
pub async fn succeed_in(conn: &mut PgConnection, id: Uuid, attempt: i32) -> Result<bool> {
    let updated = sqlx::query(SUCCEED)
        .bind(id)
        .bind(attempt)
        .execute(conn)
        .await?;
    Ok(updated.rows_affected() == 1)
}

/// [`succeed`] for many attempts in one statement: `(job id, attempt)` pairs. Returns the ids
/// whose success was recorded (the others no longer belonged to their attempt).
pub async fn succeed_many(pool: &PgPool, attempts: &[(Uuid, i32)]) -> Result<Vec<Uuid>> {
    let (ids, numbers): (Vec<Uuid>, Vec<i32>) = attempts.iter().copied().unzip();
    let done: Vec<Uuid> = sqlx::query_scalar(
        "UPDATE jobs
            SET state = 'succeeded', progress = 100, lease_expires_at = NULL,
                finished_at = now(), updated_at = now()
           FROM unnest($1::uuid[], $2::int4[]) AS done(id, attempt)
          WHERE jobs.id = done.id AND jobs.attempts = done.attempt AND jobs.state = 'running'
         RETURNING jobs.id",
    )
    .bind(&ids)
    .bind(&numbers)
    .fetch_all(pool)
    .await?;
    Ok(done)
}

/// Records a failed attempt: back to `retrying` in `retry_in` (by PostgreSQL's clock; the relay
/// pushes it to Redis once it is due), or `failed` for good (a dead letter that keeps its payload
/// and every attempt's error) when `retry_in` is `None`.
pub async fn fail(
    pool: &PgPool,
    id: Uuid,
    attempt: i32,
    error: &str,
    retry_in: Option<Duration>,
) -> Result<bool> {
    let updated = sqlx::query(
        "UPDATE jobs
            SET state = CASE WHEN $4::float8 IS NULL THEN 'failed' ELSE 'retrying' END,
                run_at = COALESCE(now() + make_interval(secs => $4::float8), run_at),
                dispatched_at = NULL,
                lease_expires_at = NULL,
                last_error = $3,
                errors = errors || jsonb_build_array(
                    jsonb_build_object('attempt', $2, 'error', $3, 'at', now())),
                finished_at = CASE WHEN $4::float8 IS NULL THEN now() END,
                updated_at = now()
          WHERE id = $1 AND attempts = $2 AND state = 'running'",
    )
    .bind(id)
    .bind(attempt)
    .bind(error)
    .bind(retry_in.map(|d| d.as_secs_f64()))
    .execute(pool)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// Gives back jobs whose worker vanished mid-attempt (its lease expired without a heartbeat):
/// the attempt counts as failed, and the job is retried or, out of attempts, failed for good.
pub async fn recover_expired(pool: &PgPool) -> Result<u64> {
    let done = sqlx::query(
        "UPDATE jobs
            SET state = CASE WHEN attempts >= max_attempts THEN 'failed' ELSE 'retrying' END,
                lease_expires_at = NULL, dispatched_at = NULL, run_at = now() - interval '1 hour',
                last_error = 'the worker running this attempt stopped responding',
                errors = errors || jsonb_build_array(jsonb_build_object(
                    'attempt', attempts,
                    'error', 'the worker running this attempt stopped responding',
                    'at', now())),
                finished_at = CASE WHEN attempts >= max_attempts THEN now() END,
                updated_at = now()
          WHERE state = 'running' AND lease_expires_at < now()",
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Pushes `jobs` to Redis, then records them as dispatched in `tx` (whose `SELECT … FOR UPDATE`
/// picked them): the relay's and the durability sweep's one way to hand jobs to Redis.
pub(crate) async fn push_and_mark(
    tx: &mut sqlx::PgConnection,
    queue: &JobQueue,
    jobs: &[(Uuid, Queue)],
) -> Result<()> {
    queue.push_now(jobs).await?;
    let ids: Vec<Uuid> = jobs.iter().map(|(id, _)| *id).collect();
    sqlx::query("UPDATE jobs SET dispatched_at = now() WHERE id = ANY($1)")
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Pushes to Redis every job that is due but not in Redis: jobs scheduled for later and retries
/// (nothing else pushes them: see [`JobQueue::dispatch`]), committed jobs whose dispatch was lost
/// (process crash, Redis down), and jobs given back by [`recover_expired`]. A job that was due
/// when it was written gets a few seconds of grace, so the process that wrote it can push it
/// first; one that came due later (`run_at > updated_at`) goes as soon as it is due. Safe to run
/// in every worker at once (`SKIP LOCKED`). Returns how many jobs it pushed.
pub async fn relay_due(pool: &PgPool, queue: &JobQueue, limit: i64) -> Result<usize> {
    let mut tx = pool.begin().await?;
    let due: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT id, queue FROM jobs
          WHERE state IN ('queued', 'retrying') AND dispatched_at IS NULL
            AND run_at <= now()
            AND (run_at > updated_at OR run_at <= now() - interval '3 seconds')
          ORDER BY run_at
          LIMIT $1
          FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    if due.is_empty() {
        tx.commit().await?;
        return Ok(0);
    }
    let jobs: Vec<(Uuid, Queue)> = due
        .iter()
        .map(|(id, queue_name)| (*id, Queue::parse(queue_name)))
        .collect();
    push_and_mark(&mut tx, queue, &jobs).await?;
    tx.commit().await?;
    Ok(jobs.len())
}

/// Fails a job that cannot even be decoded (unknown kind or corrupt payload) without running it.
pub async fn reject(pool: &PgPool, id: Uuid, attempt: i32, reason: &str) -> Result<()> {
    fail(pool, id, attempt, reason, None).await.map(|_| ())
}

/// Jobs started by one user, or by anyone for an admin; `None` when the caller may not see it.
pub async fn get_visible(
    pool: &PgPool,
    id: Uuid,
    viewer: Option<Uuid>,
    admin: bool,
) -> Result<JobView> {
    let job = get(pool, id).await?.ok_or(Error::NotFound("job"))?;
    if admin || (viewer.is_some() && job.created_by == viewer) {
        Ok(job)
    } else {
        Err(Error::NotFound("job"))
    }
}

/// One page of jobs for operators, newest first, filtered by state and kind.
pub async fn list(
    pool: &PgPool,
    state: Option<JobState>,
    kind: Option<&str>,
    limit: i64,
    before: Option<Uuid>,
) -> Result<Vec<JobView>> {
    let state = state.map(|s| match s {
        JobState::Queued => "queued",
        JobState::Running => "running",
        JobState::Retrying => "retrying",
        JobState::Succeeded => "succeeded",
        JobState::Failed => "failed",
    });
    let rows: Vec<JobRow> = sqlx::query_as(
        "SELECT id, kind, state, attempts, max_attempts, progress, last_error, created_at,
                run_at, started_at, finished_at, created_by
           FROM jobs
          WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR kind = $2)
            AND ($3::uuid IS NULL OR id < $3)
          ORDER BY id DESC LIMIT $4",
    )
    .bind(state)
    .bind(kind)
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(Into::into).collect())
}

/// Sends failed jobs back to the queue with a fresh budget of attempts (their history is kept).
/// `ids` or `kind` selects them; returns the jobs to dispatch.
pub async fn requeue_failed(
    pool: &PgPool,
    ids: Option<&[Uuid]>,
    kind: Option<&str>,
) -> Result<Vec<NewJob>> {
    let mut tx = pool.begin().await?;
    let failed: Vec<(Uuid, String, i32, String)> = sqlx::query_as(
        "SELECT id, kind, attempts, queue FROM jobs
          WHERE state = 'failed' AND ($1::uuid[] IS NULL OR id = ANY($1)) AND ($2::text IS NULL OR kind = $2)
          ORDER BY id LIMIT 10000 FOR UPDATE SKIP LOCKED",
    )
    .bind(ids)
    .bind(kind)
    .fetch_all(&mut *tx)
    .await?;
    let mut requeued = Vec::with_capacity(failed.len());
    for (id, kind, attempts, queue) in failed {
        // A kind this version does not know stays a dead letter.
        let (Some(policy), Some(kind)) = (
            super::policy_of(&kind),
            super::KINDS.into_iter().find(|k| *k == kind),
        ) else {
            continue;
        };
        // A coalescing job whose twin is already queued stays failed: the twin does the work.
        let run_at: Option<DateTime<Utc>> = sqlx::query_scalar(
            "UPDATE jobs SET state = 'queued', max_attempts = $2, run_at = now(), dispatched_at = NULL,
                    finished_at = NULL, updated_at = now()
              WHERE id = $1
                AND NOT EXISTS (SELECT 1 FROM jobs twin WHERE twin.kind = jobs.kind
                                AND twin.dedupe_key = jobs.dedupe_key AND twin.state = 'queued')
             RETURNING run_at",
        )
        .bind(id)
        .bind(attempts + policy.max_attempts)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(run_at) = run_at else {
            continue;
        };
        requeued.push(NewJob {
            id,
            kind,
            // The queue it was enqueued on (a kind's payload may choose it).
            queue: Queue::parse(&queue),
            run_at,
            coalesced: false,
            scheduled: false,
            dispatched: false,
        });
    }
    tx.commit().await?;
    Ok(requeued)
}

/// Jobs per queue and state, for `GET /admin/queues`.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct QueueDepth {
    pub queue: String,
    pub queued: i64,
    pub running: i64,
    pub retrying: i64,
    pub failed: i64,
    /// Queued or retrying jobs that are due now.
    pub due: i64,
    /// Age in seconds of the oldest due job, a measure of backlog.
    pub oldest_due_secs: Option<f64>,
}

pub async fn depths(pool: &PgPool) -> Result<Vec<QueueDepth>> {
    let rows: Vec<QueueDepth> = sqlx::query_as(
        "SELECT q.queue,
                count(j.id) FILTER (WHERE j.state = 'queued') AS queued,
                count(j.id) FILTER (WHERE j.state = 'running') AS running,
                count(j.id) FILTER (WHERE j.state = 'retrying') AS retrying,
                count(j.id) FILTER (WHERE j.state = 'failed') AS failed,
                count(j.id) FILTER (WHERE j.state IN ('queued', 'retrying') AND j.run_at <= now()) AS due,
                EXTRACT(EPOCH FROM now() - min(j.run_at)
                    FILTER (WHERE j.state IN ('queued', 'retrying') AND j.run_at <= now()))::float8 AS oldest_due_secs
           FROM (VALUES ('email'), ('media'), ('default')) AS q(queue)
           LEFT JOIN jobs j ON j.queue = q.queue AND j.state <> 'succeeded'
          GROUP BY q.queue ORDER BY q.queue",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows)
}

/// Gives back an attempt that was interrupted (the worker is shutting down), not failed: the
/// attempt is not counted, and the job is due again at once for the next worker.
pub async fn release(pool: &PgPool, id: Uuid, attempt: i32) -> Result<bool> {
    let updated = sqlx::query(
        "UPDATE jobs
            SET state = CASE WHEN attempts > 1 THEN 'retrying' ELSE 'queued' END,
                attempts = attempts - 1, lease_expires_at = NULL, dispatched_at = NULL,
                run_at = now() - interval '1 hour', updated_at = now()
          WHERE id = $1 AND attempts = $2 AND state = 'running'",
    )
    .bind(id)
    .bind(attempt)
    .execute(pool)
    .await?;
    Ok(updated.rows_affected() == 1)
}
