//! Running one delivery of a job: claim it in PostgreSQL, run its handler under the kind's time
//! limit while heart-beating its lease, and record the outcome (success, a retry after a
//! backoff, or a dead letter). Redis deliveries are at-least-once; the claim makes a duplicate
//! delivery a no-op.

use std::collections::HashMap;
use std::time::Duration;

use apalis::prelude::{BoxDynError, Data};
use lectern_core::Services;
use lectern_core::jobs::{self, Claimed, Job, JobError, JobRef};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::{Mutex, Notify, mpsc, oneshot};
use tracing::Instrument;
use uuid::Uuid;

/// A running attempt owns its job this long without a heartbeat; a crashed worker's job is
/// handed to a live worker once it lapses.
const LEASE: Duration = jobs::LEASE;
const HEARTBEAT: Duration = Duration::from_secs(10);
const RETRY_MAX: Duration = Duration::from_secs(30 * 60);
/// Jobs the relay pushes per statement.
const RELAY_BATCH: i64 = 1000;

/// Attempts this process is running: (job id, attempt). Given back if shutdown cuts them short.
static IN_FLIGHT: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<uuid::Uuid, i32>>,
> = std::sync::LazyLock::new(Default::default);

fn track(id: uuid::Uuid, attempt: Option<i32>) {
    if let Ok(mut map) = IN_FLIGHT.lock() {
        match attempt {
            Some(attempt) => {
                map.insert(id, attempt);
            }
            None => {
                map.remove(&id);
            }
        }
    }
}

/// After the shutdown timeout: jobs still running here go back to the queue without counting
/// the interrupted attempt, so a live worker (or this one, restarted) runs them at once.
pub async fn release_in_flight(services: &Services) {
    let pending: Vec<(uuid::Uuid, i32)> = IN_FLIGHT
        .lock()
        .map(|map| map.iter().map(|(id, attempt)| (*id, *attempt)).collect())
        .unwrap_or_default();
    for (id, attempt) in pending {
        match jobs::release(&services.db, id, attempt).await {
            Ok(true) => {
                tracing::warn!(job_id = %id, "shutdown cut the job short; it is back on the queue")
            }
            Ok(false) => {}
            Err(e) => {
                tracing::error!(job_id = %id, error = %e, "could not give the job back; its lease will lapse and another worker will take it")
            }
        }
    }
}

/// Claims and successes of the deliveries this process runs, grouped: while one statement is
/// running, the requests that arrive wait and then go together in the next one (one PostgreSQL
/// write and commit per group, not per job). A lone request goes at once, so grouping adds no
/// latency when the queue is quiet.
///
/// A claim is awaited (the job cannot start before it). A success is not: the handler hands it
/// over and returns, so the apalis slot is free for the next job while the success group waits
/// for its durable commit (River's asynchronous completer). A disk stall then delays the record
/// of finished jobs, never the start of new ones. The hand-over is bounded
/// ([`SUCCESS_BACKLOG`]): when that many successes wait, handlers wait for room (backpressure).
/// A success that never becomes durable (the process dies first) leaves the job `running` with
/// its lease, which lapses: the relay then hands the job back and it runs again (at least once).
#[derive(Clone)]
pub struct Batches {
    claims: mpsc::Sender<ClaimRequest>,
    successes: mpsc::Sender<(Uuid, i32)>,
    /// Successes handed over and not yet written (committed or failed).
    pending: Arc<Pending>,
}

/// The most requests one statement carries.
const MAX_BATCH: usize = 1000;

/// Statements of each kind in flight at once: while PostgreSQL commits one group, the next
/// can already be on its way (a busy or slow machine is latency-bound, not CPU-bound).
const STATEMENTS_IN_FLIGHT: usize = 2;

/// Successes that may wait for their write before handlers must wait for room.
const SUCCESS_BACKLOG: usize = 4 * MAX_BATCH;

/// Claims that may wait for their statement (deliveries are bounded by the slots anyway).
const CLAIM_BACKLOG: usize = 4 * MAX_BATCH;

/// A count of successes handed over but not yet written, and a wake-up when it reaches zero.
#[derive(Default)]
struct Pending {
    count: AtomicUsize,
    idle: Notify,
}

impl Pending {
    fn add(&self, n: usize) {
        self.count.fetch_add(n, Ordering::AcqRel);
    }

    fn done(&self, n: usize) {
        if self.count.fetch_sub(n, Ordering::AcqRel) == n {
            self.idle.notify_waiters();
        }
    }
}

impl Batches {
    pub fn start(services: &Services) -> Batches {
        let (claims, claim_rx) = mpsc::channel(CLAIM_BACKLOG);
        let (successes, success_rx) = mpsc::channel(SUCCESS_BACKLOG);
        let claim_rx = Arc::new(Mutex::new(claim_rx));
        let success_rx = Arc::new(Mutex::new(success_rx));
        let pending = Arc::new(Pending::default());
        for _ in 0..STATEMENTS_IN_FLIGHT {
            tokio::spawn(claim_loop(services.db.clone(), Arc::clone(&claim_rx)));
            tokio::spawn(success_loop(
                services.db.clone(),
                Arc::clone(&success_rx),
                Arc::clone(&pending),
            ));
        }
        Batches {
            claims,
            successes,
            pending,
        }
    }

    async fn claim(&self, id: Uuid) -> Result<Option<Claimed>, String> {
        let (tx, rx) = oneshot::channel();
        self.claims
            .send((id, tx))
            .await
            .map_err(|_| "the claim batcher stopped".to_owned())?;
        rx.await
            .map_err(|_| "the claim batcher stopped".to_owned())?
    }

    /// Hands the attempt's success to the success batcher; waits only for room in its backlog.
    async fn succeed(&self, id: Uuid, attempt: i32) -> Result<(), String> {
        // Room first, then the hand-over with no await in between: a caller dropped while it
        // waits for room leaves nothing counted (its job is still tracked as in flight).
        let permit = self
            .successes
            .reserve()
            .await
            .map_err(|_| "the completion batcher stopped".to_owned())?;
        self.pending.add(1);
        permit.send((id, attempt));
        Ok(())
    }

    /// Waits until every success handed over so far is written, or `timeout` passes. Shutdown
    /// calls it before giving back unfinished jobs. Returns how many are still unwritten.
    pub async fn flush_successes(&self, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let idle = self.pending.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            let left = self.pending.count.load(Ordering::Acquire);
            if left == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                let left = self.pending.count.load(Ordering::Acquire);
                tracing::warn!(
                    left,
                    "successes still unwritten at shutdown; their jobs will run again once their leases lapse"
                );
                return left;
            }
        }
    }
}

/// Takes what is waiting in `rx` (at least one request, at most [`MAX_BATCH`]), sorted by job
/// id so that concurrent statements lock rows in the same order.
async fn next_batch<T>(rx: &Mutex<mpsc::Receiver<T>>, id: impl Fn(&T) -> Uuid) -> Option<Vec<T>> {
    let mut rx = rx.lock().await;
    let first = rx.recv().await?;
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(request) => batch.push(request),
            Err(_) => break,
        }
    }
    batch.sort_by_key(|request| id(request));
    Some(batch)
}

type ClaimRequest = (Uuid, oneshot::Sender<Result<Option<Claimed>, String>>);

async fn claim_loop(pool: sqlx::PgPool, rx: Arc<Mutex<mpsc::Receiver<ClaimRequest>>>) {
    while let Some(batch) = next_batch(&rx, |(id, _)| *id).await {
        let ids: Vec<Uuid> = batch.iter().map(|(id, _)| *id).collect();
        match jobs::claim_many(&pool, &ids, LEASE).await {
            Ok(claimed) => {
                let mut by_id: HashMap<Uuid, Claimed> =
                    claimed.into_iter().map(|c| (c.id, c)).collect();
                // A job delivered twice in one group is claimed once: the first delivery runs it.
                for (id, reply) in batch {
                    if let Err(Ok(Some(orphan))) = reply.send(Ok(by_id.remove(&id))) {
                        // The delivery gave up waiting (shutdown): give the job back at once.
                        if let Err(e) = jobs::release(&pool, orphan.id, orphan.attempt).await {
                            tracing::warn!(job_id = %orphan.id, error = %e, "could not give back a claimed job; its lease will lapse");
                        }
                    }
                }
            }
            Err(e) => {
                let message = format!("could not claim the job: {e}");
                for (_, reply) in batch {
                    let _ = reply.send(Err(message.clone()));
                }
            }
        }
    }
}

/// Writes handed-over successes in groups. A success that cannot be written is logged: its job
/// stays `running` until its lease lapses, then runs again.
async fn success_loop(
    pool: sqlx::PgPool,
    rx: Arc<Mutex<mpsc::Receiver<(Uuid, i32)>>>,
    pending: Arc<Pending>,
) {
    while let Some(attempts) = next_batch(&rx, |(id, _)| *id).await {
        match jobs::succeed_many(&pool, &attempts).await {
            Ok(done) if done.len() < attempts.len() => {
                let done: std::collections::HashSet<Uuid> = done.into_iter().collect();
                for (id, attempt) in attempts.iter().filter(|(id, _)| !done.contains(id)) {
                    tracing::warn!(job_id = %id, attempt, "success not recorded: the attempt no longer owned the job (its lease lapsed and it was taken over)");
                }
            }
            Ok(_) => {}
            Err(e) => {
                for (id, attempt) in &attempts {
                    tracing::error!(job_id = %id, attempt, error = %e, "could not record the job's success; its lease will lapse and it will run again");
                }
            }
        }
        pending.done(attempts.len());
    }
}

/// The apalis handler. Errors returned here only concern the transport (PostgreSQL unreachable
/// while claiming); the job's own failures are recorded in its row.
pub async fn run_job(
    job_ref: JobRef,
    services: Data<Services>,
    batches: Data<Batches>,
) -> Result<(), BoxDynError> {
    let Some(claimed) = claim_patiently(&batches, job_ref.id).await else {
        return Ok(());
    };
    let span = tracing::info_span!(
        "job",
        job_id = %claimed.id,
        kind = %claimed.kind,
        attempt = claimed.attempt,
        max_attempts = claimed.max_attempts,
    );
    let (id, attempt) = (claimed.id, claimed.attempt);
    track(id, Some(attempt));
    let mut metered = crate::metrics::JOBS.start(&claimed.kind);
    let outcome = execute(&services, &batches, claimed, &mut metered)
        .instrument(span)
        .await;
    track(id, None);
    if let Err(e) = outcome {
        // Only PostgreSQL failing to record the outcome gets here. The attempt keeps its lease,
        // which lapses; the job is then taken back and pushed again by the relay. An error
        // returned to apalis would park the delivery in its scheduled set instead.
        tracing::error!(job_id = %id, attempt, error = %e, "could not record the job's outcome; its lease will lapse and it will run again");
    }
    Ok(())
}

/// How long a delivery waits for PostgreSQL to claim its job before it is dropped.
const CLAIM_PATIENCE: Duration = Duration::from_secs(5);

/// Claims the delivered job, retrying while PostgreSQL fails. `None`: nothing to run here,
/// either because the job is done, not due or held by another worker (a duplicate delivery),
/// or because PostgreSQL stayed unreachable for [`CLAIM_PATIENCE`]. The delivery is then
/// acknowledged and dropped, never handed back to apalis as failed: apalis would park it in
/// its scheduled set, which Lectern does not watch. The job is still `queued` in PostgreSQL
/// with a `dispatched_at`, so the relay's sweep pushes it again (`jobs::durability`).
async fn claim_patiently(batches: &Batches, id: Uuid) -> Option<Claimed> {
    let started = std::time::Instant::now();
    let mut pause = Duration::from_millis(100);
    loop {
        match batches.claim(id).await {
            Ok(Some(claimed)) => return Some(claimed),
            Ok(None) => {
                tracing::debug!(job_id = %id, "delivery ignored: job already done, not due, or held by another worker");
                return None;
            }
            Err(e) if started.elapsed() + pause < CLAIM_PATIENCE => {
                tracing::warn!(job_id = %id, error = %e, retry_in_ms = pause.as_millis() as u64, "could not claim the job; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            Err(e) => {
                tracing::warn!(job_id = %id, error = %e, "could not claim the job; dropping this delivery, the relay pushes the job again");
                return None;
            }
        }
    }
}

async fn execute(
    services: &Services,
    batches: &Batches,
    claimed: Claimed,
    metered: &mut crate::metrics::Attempt,
) -> Result<(), BoxDynError> {
    use crate::metrics::Outcome;
    let job = match Job::from_parts(&claimed.kind, claimed.payload.clone()) {
        Ok(job) => job,
        Err(e) => {
            tracing::error!(error = %e, "undecodable job payload; failing it without running");
            let reason = format!("the job's payload cannot be read: {e}");
            jobs::reject(&services.db, claimed.id, claimed.attempt, &reason).await?;
            metered.finish(Outcome::Failed);
            return Ok(());
        }
    };
    let time_limit = services
        .config
        .job_timeouts
        .get(job.kind())
        .copied()
        .unwrap_or(job.policy().timeout);
    tracing::info!("job started");
    let started = std::time::Instant::now();

    let context = jobs::JobContext {
        id: claimed.id,
        attempt: claimed.attempt,
        max_attempts: claimed.max_attempts,
    };
    let work = jobs::CURRENT_JOB.scope(
        context,
        jobs::attempt::scope(
            claimed.id,
            claimed.attempt,
            crate::handlers::handle(services, job),
        ),
    );
    let mut completed_by_handler = false;
    let outcome = tokio::select! {
        result = tokio::time::timeout(time_limit, work) => match result {
            Ok((result, completed)) => {
                completed_by_handler = completed;
                result
            }
            Err(_) => Err(JobError::Retryable(format!(
                "cancelled by the watchdog after {} s (the time limit for this kind of job)",
                time_limit.as_secs()
            ))),
        },
        () = keep_lease(services, &claimed) => Err(JobError::Retryable(
            "lost ownership of the job (lease taken over); abandoning this attempt".into(),
        )),
    };
    let elapsed_ms = started.elapsed().as_millis() as u64;

    match outcome {
        Ok(()) => {
            // A handler that committed its effect with the completion has recorded it already.
            // Otherwise the success is handed to the batcher, and the slot frees at once.
            if !completed_by_handler {
                batches.succeed(claimed.id, claimed.attempt).await?;
            }
            metered.finish(Outcome::Succeeded);
            tracing::info!(elapsed_ms, "job succeeded");
        }
        Err(JobError::Retryable(reason)) if claimed.attempt < claimed.max_attempts => {
            let delay = jobs::backoff(claimed.attempt, services.config.job_retry_base, RETRY_MAX);
            tracing::warn!(elapsed_ms, error = %reason, retry_in_ms = delay.as_millis() as u64, "job failed; will retry");
            // The retry is not pushed to Redis now: the relay pushes it once it is due, straight
            // onto the pending list. (apalis-redis's scheduled set, the other way, is promoted
            // by one Lua `unpack` that fails past about 8,000 due tasks: a retry storm would
            // wedge the queue.)
            jobs::fail(
                &services.db,
                claimed.id,
                claimed.attempt,
                &reason,
                Some(delay),
            )
            .await?;
            metered.finish(Outcome::Retried);
        }
        Err(JobError::Retryable(reason) | JobError::Permanent(reason)) => {
            tracing::error!(elapsed_ms, error = %reason, "job failed for good");
            jobs::fail(&services.db, claimed.id, claimed.attempt, &reason, None).await?;
            metered.finish(Outcome::Failed);
        }
    }
    Ok(())
}

/// Extends the lease every few seconds; returns only if ownership was lost.
async fn keep_lease(services: &Services, claimed: &Claimed) {
    loop {
        tokio::time::sleep(HEARTBEAT).await;
        match jobs::heartbeat(&services.db, claimed.id, claimed.attempt, LEASE, None).await {
            Ok(true) => {}
            Ok(false) => return,
            // PostgreSQL hiccup: keep working; the lease has slack for a few missed beats.
            Err(e) => tracing::warn!(error = %e, "could not extend the job's lease"),
        }
    }
}

/// Every second: hand back jobs of vanished workers and push due jobs that are not in Redis.
/// Runs in every worker process; `SKIP LOCKED` keeps them from doing the same work twice.
pub async fn relay_loop(services: Services, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut delay = Duration::from_secs(1);
    let mut last_vacuum = std::time::Instant::now();
    let mut last_schedule_check = std::time::Instant::now();
    let mut last_sweep = std::time::Instant::now();
    let mut epoch = jobs::durability::Watch::default();
    // After a new Redis epoch: jobs dispatched before this instant are pushed again.
    let mut repush_since: Option<chrono::DateTime<chrono::Utc>> = None;
    let prefix = services.config.queue_prefix.clone();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(delay) => {}
        }
        let result = async {
            let recovered = jobs::recover_expired(&services.db).await?;
            if recovered > 0 {
                tracing::warn!(
                    recovered,
                    "took back jobs from workers that stopped responding"
                );
            }
            // Redis is a cache of the job table: after it lost its data, push again every job
            // it was holding; otherwise push again the ones it lost some other way (the sweep).
            let mut redis = services.redis.clone();
            if let Some(reason) = epoch.check(&mut redis, &prefix).await? {
                tracing::warn!(
                    reason,
                    "new Redis epoch; pushing again every job dispatched but not started"
                );
                repush_since = Some(chrono::Utc::now());
            }
            if let Some(since) = repush_since {
                let key = jobs::durability::repushing_key(&prefix);
                let _: () = redis::cmd("SET")
                    .arg(&key)
                    .arg(since.to_rfc3339())
                    .arg("EX")
                    .arg(30)
                    .query_async(&mut redis)
                    .await?;
                let (pushed, left) = jobs::durability::repush_before(
                    &services.db,
                    &services.jobs,
                    since,
                    RELAY_BATCH,
                    10,
                )
                .await?;
                tracing::info!(pushed, done = !left, "pushed again jobs Redis lost");
                if !left {
                    repush_since = None;
                    let _: () = redis::cmd("DEL").arg(&key).query_async(&mut redis).await?;
                }
            } else {
                let swept = jobs::durability::sweep(
                    &services.db,
                    &services.jobs,
                    &mut redis,
                    &prefix,
                    RELAY_BATCH,
                )
                .await?;
                if swept > 0 {
                    tracing::warn!(swept, "pushed again jobs dispatched but missing from Redis");
                }
            }
            // A long backlog (Redis was down) goes out in rounds of RELAY_BATCH, up to ten a second.
            let mut pushed = 0;
            for _ in 0..10 {
                let round = jobs::relay_due(&services.db, &services.jobs, RELAY_BATCH).await?;
                pushed += round;
                if round < RELAY_BATCH as usize {
                    break;
                }
            }
            if pushed > 0 {
                tracing::info!(pushed, "relayed due jobs to Redis");
            }
            if last_schedule_check.elapsed() >= Duration::from_secs(5) {
                last_schedule_check = std::time::Instant::now();
                if lectern_core::courses::stats::schedule_nightly(&services).await? {
                    tracing::info!("queued the nightly recompute of course counters");
                }
                if lectern_core::notifications::schedule_digests(&services).await? {
                    tracing::info!("queued the daily notification digests");
                }
            }
            if last_sweep.elapsed() >= services.config.media.sweep_interval {
                last_sweep = std::time::Instant::now();
                lectern_core::media::sweep_abandoned(&services).await?;
                lectern_core::media::sweep_upload_keys(&services).await?;
                lectern_core::idempotency::sweep_expired(&services).await?;
                lectern_core::media::workdir::sweep().await;
            }
            if last_vacuum.elapsed() >= Duration::from_secs(60) {
                last_vacuum = std::time::Instant::now();
                let dropped = jobs::vacuum_redis(&services).await?;
                tracing::debug!(dropped, "vacuumed finished deliveries from Redis");
            }
            Ok::<_, lectern_core::Error>(())
        }
        .await;
        delay = match result {
            Ok(()) => Duration::from_secs(1),
            Err(e) => {
                tracing::warn!(error = %e, "job relay failed; backing off");
                // Capped low: once Redis takes writes again, jobs flow within seconds.
                (delay * 2).min(Duration::from_secs(4))
            }
        };
    }
}
