//! Which core service runs each job kind. Media jobs that decode or encode (transcode, image
//! processing) run in a `lectern-media` child process ([`crate::media_child`]), so this process
//! never references, and so never loads, FFmpeg.

use lectern_core::jobs::{Job, JobError};
use lectern_core::{Services, accounts, courses, email, learning, media, notifications};

pub async fn handle(services: &Services, job: Job) -> Result<(), JobError> {
    match job {
        Job::SendEmail(mail) => email::deliver(services, &mail).await,
        Job::SendAccountLink(link) => accounts::send_account_link(services, &link).await,
        Job::ExportUserData(export) => accounts::privacy::run_export(services, &export).await,
        job @ (Job::TranscodeVideo(_) | Job::ProcessImage(_)) => {
            crate::media_child::run(services, job).await
        }
        Job::DeleteMediaObjects(job) => media::run_delete_objects(services, &job).await,
        Job::RecomputeCourseStats(job) => courses::stats::run(services, &job).await,
        Job::RecomputeAllCourseStats(_) => courses::stats::run_all(services).await,
        Job::FanOutNotifications(job) => notifications::fan_out(services, &job).await,
        Job::IssueCertificate(job) => learning::certificates::run(services, &job).await,
        Job::SendNotificationDigests(_) => notifications::send_digests(services).await,
        Job::Noop(noop) => lectern_core::jobs::run_noop(services, &noop).await,
    }
}
