//! Who may enroll in a paid course. Payment happens outside Lectern for now, so a paid course is
//! open only to students holding an entitlement: a grant from the course's instructor or an admin
//! (audited) today, a recorded payment once the payments issue lands (`source = 'payment'`). A
//! revoked grant (or, later, a refund) keeps its row with `revoked_at`, so the history stays.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::Services;
use crate::accounts::{self, ClientInfo};
use crate::auth::Principal;
use crate::courses::{self, stats};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct GrantInput {
    /// The student's account id.
    pub user_id: String,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Entitlement {
    pub course_id: Uuid,
    pub user_id: Uuid,
    /// `grant` (by the instructor or an admin) or `payment`.
    pub source: String,
    pub granted_by: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

/// What granting did: a new (or revived) entitlement, or one the student already held.
#[derive(Debug, Clone)]
pub struct Granted {
    pub entitlement: Entitlement,
    pub created: bool,
}

/// Whether `user_id` holds a live entitlement to `course_id`.
pub(crate) async fn holds(conn: &mut PgConnection, course_id: Uuid, user_id: Uuid) -> Result<bool> {
    Ok(sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM course_entitlements
                          WHERE course_id = $1 AND user_id = $2 AND revoked_at IS NULL) AS "held!""#,
        course_id,
        user_id,
    )
    .fetch_one(conn)
    .await?)
}

/// The refusal for a paid course without an entitlement.
pub(crate) fn payment_required() -> Error {
    Error::PaymentRequired {
        message: "this course is paid: enrolling needs a purchase or a grant from its instructor"
            .into(),
    }
}

/// An active account's id from the request, else a 422 on `user_id`.
async fn student(conn: &mut PgConnection, raw: &str) -> Result<Uuid> {
    let id = Uuid::parse_str(raw.trim())
        .map_err(|_| Error::invalid("user_id", "must be an account id"))?;
    let active = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM users WHERE id = $1 AND status = 'active') AS "active!""#,
        id,
    )
    .fetch_one(conn)
    .await?;
    if active {
        Ok(id)
    } else {
        Err(Error::invalid(
            "user_id",
            "there is no active account with this id",
        ))
    }
}

/// Grants a student a course (its instructor or an admin). Granting again is harmless.
pub async fn grant(
    services: &Services,
    caller: &Principal,
    course_id: Uuid,
    input: &GrantInput,
    client: &ClientInfo,
) -> Result<Granted> {
    let mut tx = services.db.begin().await?;
    let course = courses::load_for_edit(&mut tx, caller, course_id).await?;
    let user_id = student(&mut tx, &input.user_id).await?;
    if user_id == course.instructor_id {
        return Err(Error::invalid("user_id", "is the course's own instructor"));
    }
    // A live entitlement is left as it is (a payment stays a payment) and returns no row; a
    // revoked one revives as a grant.
    let row = sqlx::query_scalar!(
        r#"INSERT INTO course_entitlements (course_id, user_id, source, granted_by)
           VALUES ($1, $2, 'grant', $3)
           ON CONFLICT (course_id, user_id) DO UPDATE
              SET source = 'grant', granted_by = EXCLUDED.granted_by, reference = NULL,
                  created_at = now(), revoked_at = NULL
            WHERE course_entitlements.revoked_at IS NOT NULL
           RETURNING true AS "created!""#,
        course_id,
        user_id,
        caller.user_id(),
    )
    .fetch_optional(&mut *tx)
    .await?;
    let created = row.is_some();
    if created {
        accounts::audit(
            &mut tx,
            "course_access_granted",
            Some(user_id),
            caller.user_id(),
            client,
            serde_json::json!({ "course_id": course_id }),
        )
        .await?;
    }
    let entitlement = sqlx::query_as!(
        Entitlement,
        "SELECT course_id, user_id, source, granted_by, created_at FROM course_entitlements
          WHERE course_id = $1 AND user_id = $2",
        course_id,
        user_id,
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Granted {
        entitlement,
        created,
    })
}

/// Revokes a grant (its instructor or an admin). The student loses the course: an active
/// enrollment is dropped (progress kept), and enrolling again needs a new grant or a purchase.
pub async fn revoke(
    services: &Services,
    caller: &Principal,
    course_id: Uuid,
    user_id: &str,
    client: &ClientInfo,
) -> Result<()> {
    let mut tx = services.db.begin().await?;
    courses::load_for_edit(&mut tx, caller, course_id).await?;
    let user_id = Uuid::parse_str(user_id.trim()).map_err(|_| Error::NotFound("grant"))?;
    let revoked = sqlx::query!(
        "UPDATE course_entitlements SET revoked_at = now()
          WHERE course_id = $1 AND user_id = $2 AND source = 'grant' AND revoked_at IS NULL",
        course_id,
        user_id,
    )
    .execute(&mut *tx)
    .await?;
    if revoked.rows_affected() == 0 {
        return Err(Error::NotFound("grant"));
    }
    accounts::audit(
        &mut tx,
        "course_access_revoked",
        Some(user_id),
        caller.user_id(),
        client,
        serde_json::json!({ "course_id": course_id }),
    )
    .await?;
    let dropped = sqlx::query!(
        "UPDATE enrollments SET status = 'dropped', dropped_at = now()
          WHERE course_id = $1 AND user_id = $2 AND status = 'active'",
        course_id,
        user_id,
    )
    .execute(&mut *tx)
    .await?;
    let job = if dropped.rows_affected() > 0 {
        Some(stats::queue_recompute(&mut tx, course_id, caller.user_id()).await?)
    } else {
        None
    };
    tx.commit().await?;
    if let Some(job) = job {
        services.jobs.dispatch(&job).await;
    }
    Ok(())
}
