//! GDPR: a user exports their data (a job builds a JSON archive in storage and mails a link) and
//! deletes their account (personal data erased; rows other people rely on, such as course
//! history, keep an anonymous user id).

use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use serde_json::json;
use uuid::Uuid;

use super::{ClientInfo, audit};
use crate::Services;
use crate::auth::AuthUser;
use crate::error::{Error, Result};
use crate::jobs::{self, ExportUserData, Job, JobError, JobReference, SendEmail};
use crate::mail::EmailTemplate;

/// Presigned S3 URLs live at most 7 days.
const LINK_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

pub async fn request_export(
    services: &Services,
    user: &AuthUser,
    client: &ClientInfo,
) -> Result<JobReference> {
    super::rate_limit::hit(
        services,
        &format!("export:{}", user.id),
        3,
        Duration::from_secs(24 * 3600),
    )
    .await?;
    let job = Job::ExportUserData(ExportUserData {
        user_id: user.id,
        export_id: Uuid::now_v7(),
    });
    let mut tx = services.db.begin().await?;
    let queued = jobs::insert(&mut tx, &job, Some(user.id), None).await?;
    audit(
        &mut tx,
        "data_export_requested",
        Some(user.id),
        Some(user.id),
        client,
        json!({ "job_id": queued.id }),
    )
    .await?;
    tx.commit().await?;
    services.jobs.dispatch(&queued).await;
    Ok(queued.reference())
}

/// Every row about the user, as one JSON document. One query per table, whatever the sizes.
async fn archive(services: &Services, user_id: Uuid) -> Result<serde_json::Value> {
    let profile: Option<serde_json::Value> = sqlx::query_scalar(
        "SELECT to_jsonb(u) - 'password_hash' - 'failed_logins' - 'locked_until' FROM users u WHERE id = $1 AND status <> 'deleted'",
    )
    .bind(user_id)
    .fetch_optional(&services.db)
    .await?;
    let Some(profile) = profile else {
        return Err(Error::NotFound("user"));
    };
    let section = |sql: &'static str| {
        let db = services.db.clone();
        async move {
            sqlx::query_scalar::<_, serde_json::Value>(sql)
                .bind(user_id)
                .fetch_one(&db)
                .await
        }
    };
    let (sessions, follows, security_events, jobs) = tokio::try_join!(
        section(
            "SELECT COALESCE(jsonb_agg(to_jsonb(s) ORDER BY s.created_at), '[]') FROM (SELECT id, user_agent, ip, created_at, last_used_at, expires_at, revoked_at, revoked_reason FROM sessions WHERE user_id = $1) s"
        ),
        section(
            "SELECT COALESCE(jsonb_agg(jsonb_build_object('instructor_id', f.instructor_id, 'instructor_name', u.full_name, 'since', f.created_at)), '[]') FROM follows f JOIN users u ON u.id = f.instructor_id WHERE f.follower_id = $1"
        ),
        section(
            "SELECT COALESCE(jsonb_agg(to_jsonb(a) ORDER BY a.created_at), '[]') FROM (SELECT event, ip, user_agent, data, created_at FROM audit_log WHERE user_id = $1 ORDER BY id) a"
        ),
        section(
            "SELECT COALESCE(jsonb_agg(to_jsonb(j) ORDER BY j.created_at), '[]') FROM (SELECT id, kind, state, created_at, finished_at FROM jobs WHERE created_by = $1) j"
        ),
    )?;
    Ok(json!({
        "format": "lectern-export-v1",
        "generated_at": chrono::Utc::now(),
        "profile": profile,
        "sessions": sessions,
        "follows": follows,
        "security_events": security_events,
        "jobs": jobs,
    }))
}

/// The `ExportUserData` job. Running it twice writes the same object and mails a fresh link.
pub async fn run_export(services: &Services, job: &ExportUserData) -> Result<(), JobError> {
    let archive = match archive(services, job.user_id).await {
        Err(Error::NotFound(_)) => {
            return Err(JobError::Permanent("the account no longer exists".into()));
        }
        other => other?,
    };
    let (email, full_name): (String, String) =
        sqlx::query_as("SELECT email, full_name FROM users WHERE id = $1")
            .bind(job.user_id)
            .fetch_one(&services.db)
            .await
            .map_err(|e| JobError::from(Error::from(e)))?;
    let key = format!("exports/{}/{}.json", job.user_id, job.export_id);
    let body =
        serde_json::to_vec_pretty(&archive).map_err(|e| JobError::Permanent(e.to_string()))?;
    let to_job_error = |e: crate::storage::StorageError| {
        if e.is_transient() {
            JobError::Retryable(e.to_string())
        } else {
            JobError::Permanent(e.to_string())
        }
    };
    services
        .storage
        .put(&key, ByteStream::from(body), "application/json")
        .await
        .map_err(to_job_error)?;
    let link = services
        .storage
        .presign_get(&key, LINK_TTL)
        .await
        .map_err(to_job_error)?;
    let mut vars = serde_json::Map::new();
    vars.insert("full_name".into(), full_name.into());
    vars.insert("link".into(), link.url.into());
    vars.insert(
        "expires_in_days".into(),
        (LINK_TTL.as_secs() / 86400).into(),
    );
    crate::email::deliver(
        services,
        &SendEmail {
            to: email,
            template: EmailTemplate::DataExport,
            vars,
        },
    )
    .await
}

/// Deletes the caller's account after checking their password: personal data is erased, sessions
/// and tokens go, and the row stays as an anonymous tombstone for the history others rely on.
pub async fn delete_account(
    services: &Services,
    user: &AuthUser,
    password_check: &str,
) -> Result<()> {
    super::check_password(services, user.id, password_check).await?;
    let mut tx = services.db.begin().await?;
    sqlx::query(
        "UPDATE users SET email = 'deleted-' || id || '@deleted.invalid', full_name = 'Deleted user', bio = '',
                password_hash = '!', status = 'deleted', email_verified_at = NULL,
                notify_email = false, notify_in_app = false,
                last_login_ip = NULL, last_login_user_agent = NULL, updated_at = now()
          WHERE id = $1",
    )
    .bind(user.id)
    .execute(&mut *tx)
    .await?;
    for sql in [
        "DELETE FROM sessions WHERE user_id = $1",
        "DELETE FROM one_time_tokens WHERE user_id = $1",
        "DELETE FROM follows WHERE follower_id = $1 OR instructor_id = $1",
        "UPDATE audit_log SET ip = NULL, user_agent = NULL WHERE user_id = $1",
    ] {
        sqlx::query(sql).bind(user.id).execute(&mut *tx).await?;
    }
    // No IP or user agent: the record of the deletion must not keep what was erased.
    audit(
        &mut tx,
        "account_deleted",
        Some(user.id),
        Some(user.id),
        &ClientInfo::default(),
        json!({}),
    )
    .await?;
    tx.commit().await?;
    super::close_sockets(services, user.id, None).await;
    Ok(())
}
