//! Running one delivery of a job: claim it in PostgreSQL, run its handler under the kind's time
//! limit while heart-beating its lease, and record the outcome (success, a retry after a
//! backoff, or a dead letter). Redis deliveries are at-least-once; the claim makes a duplicate
//! delivery a no-op.

use std::time::Duration;

use apalis::prelude::{BoxDynError, Data};
use lectern_core::Services;
use lectern_core::jobs::{self, Claimed, Job, JobError, JobRef};
use tracing::Instrument;

/// A running attempt owns its job this long without a heartbeat; a crashed worker's job is
/// handed to a live worker once it lapses.
const LEASE: Duration = jobs::LEASE;
const HEARTBEAT: Duration = Duration::from_secs(10);
const RETRY_BASE: Duration = Duration::from_secs(5);
const RETRY_MAX: Duration = Duration::from_secs(30 * 60);

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

/// The apalis handler. Errors returned here only concern the transport (PostgreSQL unreachable
/// while claiming); the job's own failures are recorded in its row.
pub async fn run_job(job_ref: JobRef, services: Data<Services>) -> Result<(), BoxDynError> {
    let Some(claimed) = jobs::claim(&services.db, job_ref.id, LEASE).await? else {
        tracing::debug!(job_id = %job_ref.id, "delivery ignored: job already done, not due, or held by another worker");
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
    let outcome = execute(&services, claimed).instrument(span).await;
    track(id, None);
    outcome
}

async fn execute(services: &Services, claimed: Claimed) -> Result<(), BoxDynError> {
    let job = match Job::from_parts(&claimed.kind, claimed.payload.clone()) {
        Ok(job) => job,
        Err(e) => {
            tracing::error!(error = %e, "undecodable job payload; failing it without running");
            let reason = format!("the job's payload cannot be read: {e}");
            jobs::reject(&services.db, claimed.id, claimed.attempt, &reason).await?;
            return Ok(());
        }
    };
    let policy = job.policy();
    let time_limit = services
        .config
        .job_timeouts
        .get(job.kind())
        .copied()
        .unwrap_or(policy.timeout);
    tracing::info!("job started");
    let started = std::time::Instant::now();

    let context = jobs::JobContext {
        id: claimed.id,
        attempt: claimed.attempt,
        max_attempts: claimed.max_attempts,
    };
    let work = jobs::CURRENT_JOB.scope(context, crate::handlers::handle(services, job));
    let outcome = tokio::select! {
        result = tokio::time::timeout(time_limit, work) => match result {
            Ok(result) => result,
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
            jobs::succeed(&services.db, claimed.id, claimed.attempt).await?;
            tracing::info!(elapsed_ms, "job succeeded");
        }
        Err(JobError::Retryable(reason)) if claimed.attempt < claimed.max_attempts => {
            let delay = jobs::backoff(claimed.attempt, RETRY_BASE, RETRY_MAX);
            let retry_at = chrono::Utc::now() + delay;
            tracing::warn!(elapsed_ms, error = %reason, retry_in_ms = delay.as_millis() as u64, "job failed; will retry");
            if jobs::fail(
                &services.db,
                claimed.id,
                claimed.attempt,
                &reason,
                Some(retry_at),
            )
            .await?
            {
                // Best effort: if this push is lost, the relay pushes the job when it is due.
                if services
                    .jobs
                    .push(claimed.id, policy.queue, delay)
                    .await
                    .is_ok()
                {
                    jobs::mark_dispatched(&services.db, claimed.id).await?;
                }
            }
        }
        Err(JobError::Retryable(reason) | JobError::Permanent(reason)) => {
            tracing::error!(elapsed_ms, error = %reason, "job failed for good");
            jobs::fail(&services.db, claimed.id, claimed.attempt, &reason, None).await?;
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
    let mut last_sweep = std::time::Instant::now();
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
            let pushed = jobs::relay_due(&services.db, &services.jobs, 500).await?;
            if pushed > 0 {
                tracing::info!(pushed, "relayed due jobs to Redis");
            }
            if last_sweep.elapsed() >= services.config.media.sweep_interval {
                last_sweep = std::time::Instant::now();
                lectern_core::media::sweep_abandoned(&services).await?;
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
                (delay * 2).min(Duration::from_secs(15))
            }
        };
    }
}
