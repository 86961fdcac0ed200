//! One payload type per job kind. Payloads carry ids, not copies of rows: a job reads the
//! current state of its subject when it runs, which keeps it idempotent.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Queue;
use crate::mail::EmailTemplate;

/// Render one of the product's templates and send it to one recipient.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendEmail {
    pub to: String,
    pub template: EmailTemplate,
    /// Values the template refers to.
    #[serde(default)]
    pub vars: serde_json::Map<String, serde_json::Value>,
}

/// Mail a verification or password-reset link. The payload names the one-time token's row, never
/// the token: the worker reads the recipient and mints the link when it renders the mail, so
/// job payloads (which admins can read) hold nothing that opens an account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendAccountLink {
    pub token_id: Uuid,
}

/// Probe an uploaded video and transcode it to an HLS ladder with a poster and a storyboard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TranscodeVideo {
    pub media_id: Uuid,
}

/// Decode an uploaded image and make its thumbnails.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessImage {
    pub media_id: Uuid,
}

/// Remove every stored object of a deleted media (and abort its open multipart upload, if any).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeleteMediaObjects {
    pub media_id: Uuid,
    /// `(object key, upload id)` of a multipart upload still open when the media was deleted.
    #[serde(default)]
    pub multipart: Option<(String, String)>,
}

/// Render (or re-render) the PDF certificate of a completed enrollment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IssueCertificate {
    pub enrollment_id: Uuid,
}

/// Recompute a course's denormalised counters exactly, from the source tables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecomputeCourseStats {
    pub course_id: Uuid,
}

/// Recompute every course's counters: the nightly repair of any drift.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecomputeAllCourseStats {}

/// Mail every user with unread notifications since their last digest a summary: the daily job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendNotificationDigests {}

/// Deliver one event to many users (a course's publication to an instructor's followers), in batches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FanOutNotifications {
    pub event: FanOutEvent,
    /// Resume point: the last recipient already handled, so a retried job does not notify twice.
    #[serde(default)]
    pub after_user_id: Option<Uuid>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FanOutEvent {
    CoursePublished {
        course_id: Uuid,
    },
    /// A student enrolled: tell the course's instructor. `event_id` makes a re-enrollment a new event.
    Enrolled {
        enrollment_id: Uuid,
        event_id: Uuid,
    },
}

/// Build a user's data archive (GDPR export), store it, and mail them a link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportUserData {
    pub user_id: Uuid,
    /// Names the archive, so a retried job overwrites the same object.
    pub export_id: Uuid,
}

/// A diagnostic job that does nothing but (optionally) wait, on the queue of the operator's
/// choosing: a smoke test of the whole pipeline (API, Redis, worker, PostgreSQL) and the unit of
/// the job benchmarks. With `record`, it writes its id to the `job_ledger` table in the same
/// transaction that marks it succeeded, so an operator can check that every job's effect was
/// applied exactly once, through crashes and duplicate deliveries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Noop {
    /// How long the job holds its slot, in milliseconds (at most [`Noop::MAX_SLEEP_MS`]).
    #[serde(default)]
    pub sleep_ms: u32,
    /// Record the job's effect in the ledger.
    #[serde(default)]
    pub record: bool,
    /// The queue it runs on (default: `default`), e.g. `media` to occupy transcode slots.
    #[serde(default = "default_queue")]
    pub queue: Queue,
    /// Fail every attempt this way instead of succeeding: exercises retries and dead letters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail: Option<NoopFailure>,
}

/// How a failing [`Noop`] fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NoopFailure {
    /// Retried with backoff until the kind's attempts run out.
    Retryable,
    /// Failed for good at the first attempt.
    Permanent,
}

fn default_queue() -> Queue {
    Queue::Default
}

impl Noop {
    pub const MAX_SLEEP_MS: u32 = 10 * 60 * 1000;
}

/// Every job the product runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "payload", rename_all = "snake_case")]
pub enum Job {
    SendEmail(SendEmail),
    SendAccountLink(SendAccountLink),
    TranscodeVideo(TranscodeVideo),
    ProcessImage(ProcessImage),
    IssueCertificate(IssueCertificate),
    RecomputeCourseStats(RecomputeCourseStats),
    RecomputeAllCourseStats(RecomputeAllCourseStats),
    FanOutNotifications(FanOutNotifications),
    ExportUserData(ExportUserData),
    Noop(Noop),
    DeleteMediaObjects(DeleteMediaObjects),
    SendNotificationDigests(SendNotificationDigests),
}

/// How a job kind is run: its queue, attempts, and time limit.
#[derive(Debug, Clone, Copy)]
pub struct KindPolicy {
    pub queue: Queue,
    pub max_attempts: i32,
    /// The watchdog cancels an attempt that runs longer.
    pub timeout: Duration,
}

/// Every job kind, by name.
pub const KINDS: [&str; 12] = [
    "send_email",
    "send_account_link",
    "transcode_video",
    "process_image",
    "issue_certificate",
    "recompute_course_stats",
    "recompute_all_course_stats",
    "fan_out_notifications",
    "export_user_data",
    "noop",
    "delete_media_objects",
    "send_notification_digests",
];

/// How a kind of job runs: queue, attempts, time limit. `None` for an unknown kind.
pub fn policy_of(kind: &str) -> Option<KindPolicy> {
    let (queue, max_attempts, secs) = match kind {
        "send_email" => (Queue::Email, 8, 60),
        "send_account_link" => (Queue::Email, 8, 60),
        "transcode_video" => (Queue::Media, 3, 2 * 60 * 60),
        "process_image" => (Queue::Media, 5, 5 * 60),
        "issue_certificate" => (Queue::Default, 5, 5 * 60),
        "recompute_course_stats" => (Queue::Default, 5, 5 * 60),
        "recompute_all_course_stats" => (Queue::Default, 3, 30 * 60),
        "fan_out_notifications" => (Queue::Default, 10, 30 * 60),
        "export_user_data" => (Queue::Default, 5, 10 * 60),
        // The queue is the payload's ([`Job::policy`]); this is the fallback.
        "noop" => (Queue::Default, 3, 15 * 60),
        "delete_media_objects" => (Queue::Media, 10, 10 * 60),
        "send_notification_digests" => (Queue::Default, 5, 30 * 60),
        _ => return None,
    };
    Some(KindPolicy {
        queue,
        max_attempts,
        timeout: Duration::from_secs(secs),
    })
}

impl Job {
    pub fn kind(&self) -> &'static str {
        match self {
            Job::SendEmail(_) => "send_email",
            Job::SendAccountLink(_) => "send_account_link",
            Job::TranscodeVideo(_) => "transcode_video",
            Job::ProcessImage(_) => "process_image",
            Job::IssueCertificate(_) => "issue_certificate",
            Job::RecomputeCourseStats(_) => "recompute_course_stats",
            Job::RecomputeAllCourseStats(_) => "recompute_all_course_stats",
            Job::FanOutNotifications(_) => "fan_out_notifications",
            Job::ExportUserData(_) => "export_user_data",
            Job::Noop(_) => "noop",
            Job::DeleteMediaObjects(_) => "delete_media_objects",
            Job::SendNotificationDigests(_) => "send_notification_digests",
        }
    }

    pub fn policy(&self) -> KindPolicy {
        let policy = policy_of(self.kind()).unwrap_or(KindPolicy {
            queue: Queue::Default,
            max_attempts: 5,
            timeout: Duration::from_secs(300),
        });
        match self {
            Job::Noop(noop) => KindPolicy {
                queue: noop.queue,
                ..policy
            },
            _ => policy,
        }
    }

    /// Jobs with a key coalesce: while one with the same kind and key is queued, enqueuing
    /// another adds nothing. Used where running once for a burst of triggers is the point.
    pub fn dedupe_key(&self) -> Option<String> {
        match self {
            Job::RecomputeCourseStats(j) => Some(j.course_id.to_string()),
            _ => None,
        }
    }

    /// How long a coalescing job waits before it runs, so a burst of triggers folds into one run.
    pub fn debounce(&self) -> std::time::Duration {
        match self {
            Job::RecomputeCourseStats(_) => std::time::Duration::from_secs(2),
            _ => std::time::Duration::ZERO,
        }
    }

    /// The payload alone (without the kind tag), as stored in the `jobs.payload` column.
    pub fn payload_json(&self) -> serde_json::Value {
        serde_json::to_value(self)
            .ok()
            .and_then(|mut v| v.get_mut("payload").map(serde_json::Value::take))
            .unwrap_or(serde_json::Value::Null)
    }

    /// Rebuilds a job from its stored kind and payload.
    pub fn from_parts(kind: &str, payload: serde_json::Value) -> Result<Job, serde_json::Error> {
        serde_json::from_value(serde_json::json!({ "kind": kind, "payload": payload }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_survives_its_round_trip_through_the_table() {
        let job = Job::FanOutNotifications(FanOutNotifications {
            event: FanOutEvent::CoursePublished {
                course_id: Uuid::now_v7(),
            },
            after_user_id: None,
        });
        let back = Job::from_parts(job.kind(), job.payload_json()).expect("round trip");
        assert_eq!(back, job);
    }

    #[test]
    fn every_kind_has_a_policy() {
        for kind in KINDS {
            assert!(policy_of(kind).is_some(), "{kind}");
        }
        assert!(policy_of("nope").is_none());
    }

    #[test]
    fn an_unknown_kind_is_an_error_not_a_panic() {
        assert!(Job::from_parts("mine_bitcoin", serde_json::json!({})).is_err());
        assert!(Job::from_parts("send_email", serde_json::json!({"to": 3})).is_err());
    }

    #[test]
    fn a_noop_runs_on_the_queue_it_names() {
        let noop: Job =
            Job::from_parts("noop", serde_json::json!({"queue": "media"})).expect("noop");
        assert_eq!(noop.policy().queue, Queue::Media);
        assert_eq!(
            noop,
            Job::Noop(Noop {
                sleep_ms: 0,
                record: false,
                queue: Queue::Media,
                fail: None,
            })
        );
        let plain = Job::from_parts("noop", serde_json::json!({})).expect("noop");
        assert_eq!(plain.policy().queue, Queue::Default);
    }

    #[test]
    fn mail_never_shares_a_queue_with_media() {
        let mail = Job::SendEmail(SendEmail {
            to: "a@example.com".into(),
            template: EmailTemplate::TestMessage,
            vars: Default::default(),
        });
        let video = Job::TranscodeVideo(TranscodeVideo {
            media_id: Uuid::now_v7(),
        });
        assert_ne!(mail.policy().queue, video.policy().queue);
    }
}
