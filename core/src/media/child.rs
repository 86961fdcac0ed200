//! Media jobs run in a child process: the worker starts `lectern-media` for each attempt of a
//! transcode or image job, so only that short-lived process maps FFmpeg's libraries (a worker
//! that never references an FFmpeg symbol does not load them, which keeps its memory small), and
//! a crash or runaway decode takes down one attempt, not the worker.
//!
//! The protocol: the worker writes one [`Request`] as a JSON line on the child's standard input
//! and keeps that pipe open; the child runs the job with the attempt's context (progress,
//! working folder names, completion in a transaction) and writes one [`Outcome`] as a JSON line
//! on its standard output; its logs go to standard error. The child exits when its standard
//! input closes, so it never outlives a worker that died; a worker that abandons the attempt
//! (time limit, lost lease, shutdown) kills it.
//!
//! This module's worker side ([`Request`], [`Outcome`], [`record_lost_attempt`]) calls no FFmpeg
//! code; only [`run_requested`], called by `lectern-media` alone, reaches it.

use serde::{Deserialize, Serialize};

use crate::Services;
use crate::jobs::{self, Job, JobContext, JobError};

/// The program's name, looked up next to the worker's executable unless `LECTERN_MEDIA_BIN` names it.
pub const PROGRAM: &str = "lectern-media";

/// The child's exit status when its standard input closed before it finished: the worker is gone.
pub const EXIT_ORPHANED: u8 = 3;

/// What the worker asks the child to run: one attempt of one media job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub context: JobContext,
    pub job: Job,
}

/// Whether `job` runs in the child process (it decodes or encodes with FFmpeg).
pub fn runs_in_child(job: &Job) -> bool {
    matches!(job, Job::TranscodeVideo(_) | Job::ProcessImage(_))
}

/// How the child's attempt ended, the one line it writes on its standard output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// The job succeeded; `completed`: its success is already recorded (in the transaction of
    /// its effect), so the worker must not record it again.
    Ok {
        completed: bool,
    },
    Retryable {
        reason: String,
    },
    Permanent {
        reason: String,
    },
}

impl Outcome {
    pub fn of(result: Result<(), JobError>, completed: bool) -> Outcome {
        match result {
            Ok(()) => Outcome::Ok { completed },
            Err(JobError::Retryable(reason)) => Outcome::Retryable { reason },
            Err(JobError::Permanent(reason)) => Outcome::Permanent { reason },
        }
    }

    /// The handler's result as the worker records it, and whether the success is recorded already.
    pub fn into_result(self) -> (Result<(), JobError>, bool) {
        match self {
            Outcome::Ok { completed } => (Ok(()), completed),
            Outcome::Retryable { reason } => (Err(JobError::Retryable(reason)), false),
            Outcome::Permanent { reason } => (Err(JobError::Permanent(reason)), false),
        }
    }

    /// The outcome line in the child's standard output: the last line that is one.
    pub fn find_in(stdout: &str) -> Option<Outcome> {
        stdout
            .lines()
            .rev()
            .find_map(|line| serde_json::from_str(line.trim()).ok())
    }
}

/// Child side: runs the requested attempt as the worker would have, in process.
pub async fn run_requested(services: &Services, request: Request) -> Outcome {
    let Request { context, job } = request;
    let work = async {
        match &job {
            Job::TranscodeVideo(job) => super::run_transcode(services, job).await,
            Job::ProcessImage(job) => super::run_process_image(services, job).await,
            other => Err(JobError::Permanent(format!(
                "a {} job does not run in the media process",
                other.kind()
            ))),
        }
    };
    let (result, completed) = jobs::CURRENT_JOB
        .scope(
            context,
            jobs::attempt::scope(context.id, context.attempt, work),
        )
        .await;
    Outcome::of(result, completed)
}

/// Worker side, when the child ended without an outcome (killed, crashed): records `error` on
/// the media as its handler would have (failed with the reason on the last attempt, and the
/// owner's `media.failed` event), and returns it. Call it inside the attempt's job context.
pub async fn record_lost_attempt(services: &Services, job: &Job, error: JobError) -> JobError {
    let media_id = match job {
        Job::TranscodeVideo(j) => j.media_id,
        Job::ProcessImage(j) => j.media_id,
        _ => return error,
    };
    match super::load_for_job(services, media_id).await {
        Ok(Some(row)) => super::fail_job(services, &row, error).await,
        Ok(None) => error,
        Err(e) => {
            tracing::warn!(error = %e, "could not load the media to record its failure");
            error
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outcome_survives_its_line_and_is_found_after_other_output() {
        for outcome in [
            Outcome::Ok { completed: true },
            Outcome::Ok { completed: false },
            Outcome::Retryable {
                reason: "storage unavailable".into(),
            },
            Outcome::Permanent {
                reason: "the video is truncated".into(),
            },
        ] {
            let line = serde_json::to_string(&outcome).expect("json");
            assert!(!line.contains('\n'));
            let stdout = format!("noise\n{{\"not\": \"an outcome\"}}\n{line}\n");
            assert_eq!(Outcome::find_in(&stdout), Some(outcome));
        }
        assert_eq!(Outcome::find_in(""), None);
        assert_eq!(Outcome::find_in("{\"outcome\": \"maybe\"}"), None);
    }

    #[test]
    fn an_outcome_maps_back_to_the_handlers_result() {
        let (result, completed) = Outcome::Permanent {
            reason: "corrupt".into(),
        }
        .into_result();
        assert!(matches!(result, Err(JobError::Permanent(r)) if r == "corrupt"));
        assert!(!completed);
        let (result, completed) = Outcome::Ok { completed: true }.into_result();
        assert!(result.is_ok() && completed);
        let (result, _) =
            Outcome::of(Err(JobError::Retryable("later".into())), false).into_result();
        assert!(matches!(result, Err(JobError::Retryable(r)) if r == "later"));
    }

    #[test]
    fn only_the_ffmpeg_jobs_run_in_the_child() {
        let id = uuid::Uuid::now_v7();
        assert!(runs_in_child(&Job::TranscodeVideo(jobs::TranscodeVideo {
            media_id: id
        })));
        assert!(runs_in_child(&Job::ProcessImage(jobs::ProcessImage {
            media_id: id
        })));
        assert!(!runs_in_child(&Job::DeleteMediaObjects(
            jobs::DeleteMediaObjects {
                media_id: id,
                multipart: None
            }
        )));
    }

    #[test]
    fn a_request_survives_its_line() {
        let request = Request {
            context: JobContext {
                id: uuid::Uuid::now_v7(),
                attempt: 2,
                max_attempts: 3,
            },
            job: Job::TranscodeVideo(jobs::TranscodeVideo {
                media_id: uuid::Uuid::now_v7(),
            }),
        };
        let line = serde_json::to_string(&request).expect("json");
        let back: Request = serde_json::from_str(&line).expect("parse");
        assert_eq!(back, request);
    }
}
