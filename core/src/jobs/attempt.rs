//! The attempt a worker is running, visible to its handler. A handler whose effect is a write to
//! PostgreSQL can commit that write and the job's completion in one transaction
//! ([`complete_in`]): then a crash, a lease take-over or a duplicate delivery can never apply the
//! effect twice, and a committed effect never leaves the job to run again.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::{Error, Result};

tokio::task_local! {
    static CURRENT: Attempt;
}

#[derive(Debug)]
struct Attempt {
    id: Uuid,
    attempt: i32,
    completed: AtomicBool,
}

/// Runs `work` (a job's handler) as attempt `attempt` of job `id`. Returns its output and whether
/// the handler recorded the job's success itself with [`complete_in`].
pub async fn scope<F: Future>(id: Uuid, attempt: i32, work: F) -> (F::Output, bool) {
    let current = Attempt {
        id,
        attempt,
        completed: AtomicBool::new(false),
    };
    CURRENT
        .scope(current, async move {
            let output = work.await;
            let completed = CURRENT
                .try_with(|a| a.completed.load(Ordering::Acquire))
                .unwrap_or(false);
            (output, completed)
        })
        .await
}

/// The job id and attempt number of the attempt this task runs, if any.
pub fn current() -> Option<(Uuid, i32)> {
    CURRENT.try_with(|a| (a.id, a.attempt)).ok()
}

/// Records the current attempt's success inside the caller's transaction, so the handler's writes
/// and the job's completion commit (or roll back) together. Returns `false` when this attempt no
/// longer owns the job (its lease lapsed and another worker took it over): the caller must roll
/// back and give up. The worker does not record the success again after the handler returns.
pub async fn complete_in(conn: &mut PgConnection) -> Result<bool> {
    let (id, attempt) = current()
        .ok_or_else(|| Error::Internal("complete_in called outside a job attempt".into()))?;
    let done = super::store::succeed_in(conn, id, attempt).await?;
    if done {
        let _ = CURRENT.try_with(|a| a.completed.store(true, Ordering::Release));
    }
    Ok(done)
}

/// Records that the current attempt's success was committed on its behalf by another process
/// (the `lectern-media` child, with [`complete_in`] there), so the worker does not record it again.
pub fn note_completed_elsewhere() {
    let _ = CURRENT.try_with(|a| a.completed.store(true, Ordering::Release));
}

/// Names this worker process in records it leaves (`host-pid`).
pub fn worker_identity() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".to_owned());
    format!("{host}-{}", std::process::id())
}
