//! Diagnostic no-op jobs ([`Noop`]): operators enqueue them to check that the workers of a queue
//! are alive and how fast jobs flow; the benchmarks and the crash tests use them as their unit.

use std::time::Duration;

use uuid::Uuid;

use super::{Job, JobError, Noop, attempt, insert_many};
use crate::Services;
use crate::auth::Principal;
use crate::error::{Error, Result};

/// At most this many no-op jobs per request.
pub const MAX_NOOPS_PER_REQUEST: u32 = 10_000;

/// Operators: enqueues `count` copies of `noop` (one `INSERT`, one Redis round trip per queue).
/// Returns their ids.
pub async fn admin_enqueue_noops(
    services: &Services,
    caller: &Principal,
    count: u32,
    noop: Noop,
) -> Result<Vec<Uuid>> {
    caller.require_admin()?;
    if count == 0 || count > MAX_NOOPS_PER_REQUEST {
        return Err(Error::invalid(
            "count",
            format!("must be between 1 and {MAX_NOOPS_PER_REQUEST}"),
        ));
    }
    if noop.sleep_ms > Noop::MAX_SLEEP_MS {
        return Err(Error::invalid(
            "sleep_ms",
            format!("must be at most {} (10 minutes)", Noop::MAX_SLEEP_MS),
        ));
    }
    let jobs = vec![Job::Noop(noop); count as usize];
    let mut tx = services.db.begin().await?;
    let queued = insert_many(&mut tx, &jobs, caller.user_id()).await?;
    tx.commit().await?;
    services.jobs.dispatch_many(&queued).await;
    Ok(queued.iter().map(|j| j.id).collect())
}

/// The `Noop` job: hold the slot for `sleep_ms`, then fail if asked to (`fail`), or, with
/// `record`, write the job's id to the ledger in the transaction that marks the job succeeded.
pub async fn run_noop(services: &Services, job: &Noop) -> Result<(), JobError> {
    if job.sleep_ms > 0 {
        let ms = job.sleep_ms.min(Noop::MAX_SLEEP_MS);
        tokio::time::sleep(Duration::from_millis(u64::from(ms))).await;
    }
    match job.fail {
        Some(super::NoopFailure::Retryable) => {
            return Err(JobError::Retryable(
                "the no-op was asked to fail (retryable)".into(),
            ));
        }
        Some(super::NoopFailure::Permanent) => {
            return Err(JobError::Permanent(
                "the no-op was asked to fail (permanent)".into(),
            ));
        }
        None => {}
    }
    if !job.record {
        return Ok(());
    }
    let (id, attempt) = attempt::current()
        .ok_or_else(|| JobError::Permanent("a recorded no-op only runs as a job attempt".into()))?;
    let mut tx = services.db.begin().await.map_err(Error::from)?;
    // A second application of this job's effect would bump `effects` (and be visible) rather
    // than fail; the transaction below is what keeps it at one.
    sqlx::query(
        "INSERT INTO job_ledger (job_id, attempt, worker) VALUES ($1, $2, $3)
         ON CONFLICT (job_id) DO UPDATE
            SET effects = job_ledger.effects + 1, attempt = EXCLUDED.attempt,
                worker = EXCLUDED.worker, recorded_at = now()",
    )
    .bind(id)
    .bind(attempt)
    .bind(attempt::worker_identity())
    .execute(&mut *tx)
    .await
    .map_err(Error::from)?;
    if !attempt::complete_in(&mut tx).await? {
        // Dropping the transaction rolls the ledger row back.
        return Err(JobError::Retryable(
            "lost ownership of the job (lease taken over) before recording its effect".into(),
        ));
    }
    tx.commit().await.map_err(Error::from)?;
    tracing::debug!("no-op effect recorded");
    Ok(())
}
