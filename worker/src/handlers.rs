//! Which core service runs each job kind.

use lectern_core::jobs::{Job, JobError};
use lectern_core::{Services, email};

pub async fn handle(services: &Services, job: Job) -> Result<(), JobError> {
    match job {
        Job::SendEmail(mail) => email::deliver(services, &mail).await,
        other => Err(JobError::Permanent(format!(
            "this worker version has no handler for {} jobs; upgrade the worker and retry the job",
            other.kind()
        ))),
    }
}
