//! The signed-in user's own account: profile, preferences, follows, and one-click unsubscribe.

use serde::Deserialize;
use uuid::Uuid;

use super::audit::audit;
use super::store::UserRow;
use super::store::fetch_user;
use super::tokens;
use super::{ClientInfo, UserView, parse_name};
use crate::Services;
use crate::auth::AuthUser;
use crate::error::{Error, FieldErrors, Result};

pub async fn me(services: &Services, user: &AuthUser) -> Result<UserView> {
    let mut conn = services.db.acquire().await?;
    fetch_user(&mut conn, user.id).await
}

#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfilePatch {
    pub full_name: Option<String>,
    pub bio: Option<String>,
    pub notification_preferences: Option<NotificationPreferencesPatch>,
}

#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NotificationPreferencesPatch {
    pub email: Option<bool>,
    pub in_app: Option<bool>,
}

pub async fn update_me(
    services: &Services,
    user: &AuthUser,
    patch: &ProfilePatch,
) -> Result<UserView> {
    let mut fields = FieldErrors::new();
    let name = patch
        .full_name
        .as_deref()
        .map(parse_name)
        .transpose()
        .map_err(|p| fields.add("full_name", p))
        .ok()
        .flatten();
    if patch.bio.as_ref().is_some_and(|b| b.chars().count() > 2000) {
        fields.add("bio", "must be at most 2000 characters");
    }
    fields.into_result()?;
    let prefs = patch.notification_preferences.clone().unwrap_or_default();
    let row = sqlx::query_as::<_, UserRow>(concat!("UPDATE users SET full_name = COALESCE($2, full_name), bio = COALESCE($3, bio),
                notify_email = COALESCE($4, notify_email), notify_in_app = COALESCE($5, notify_in_app),
                updated_at = now()
          WHERE id = $1 RETURNING ", user_columns!(), ""))
    .bind(user.id)
    .bind(name)
    .bind(patch.bio.as_deref().map(str::trim))
    .bind(prefs.email)
    .bind(prefs.in_app)
    .fetch_one(&services.db)
    .await?;
    Ok(row.into())
}

/// Follows an instructor (idempotent). Only instructors can be followed; others answer 404.
pub async fn follow(services: &Services, user: &AuthUser, instructor_id: Uuid) -> Result<()> {
    let inserted = sqlx::query(
        "INSERT INTO follows (follower_id, instructor_id)
         SELECT $1, id FROM users WHERE id = $2 AND role = 'instructor' AND status = 'active' AND id <> $1
         ON CONFLICT DO NOTHING",
    )
    .bind(user.id)
    .bind(instructor_id)
    .execute(&services.db)
    .await?
    .rows_affected();
    if inserted == 0 {
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM follows WHERE follower_id = $1 AND instructor_id = $2)",
        )
        .bind(user.id)
        .bind(instructor_id)
        .fetch_one(&services.db)
        .await?;
        if !exists {
            return Err(Error::NotFound("instructor"));
        }
    }
    Ok(())
}

pub async fn unfollow(services: &Services, user: &AuthUser, instructor_id: Uuid) -> Result<()> {
    sqlx::query("DELETE FROM follows WHERE follower_id = $1 AND instructor_id = $2")
        .bind(user.id)
        .bind(instructor_id)
        .execute(&services.db)
        .await?;
    Ok(())
}

/// The one-click unsubscribe link of a user's non-essential mail (`List-Unsubscribe`).
pub fn unsubscribe_url(services: &Services, user_id: Uuid) -> String {
    crate::links::unsubscribe(
        &services.config,
        &tokens::signed_id(&services.config, "unsubscribe", user_id),
    )
}

/// Turns off the non-essential mail of the user the token names. Idempotent.
pub async fn unsubscribe(services: &Services, token: &str) -> Result<()> {
    let user_id = tokens::verify_signed_id(&services.config, "unsubscribe", token)
        .ok_or_else(|| Error::invalid("token", "is not a valid unsubscribe link"))?;
    let mut tx = services.db.begin().await?;
    let changed = sqlx::query(
        "UPDATE users SET notify_email = false, updated_at = now() WHERE id = $1 AND notify_email",
    )
    .bind(user_id)
    .execute(&mut *tx)
    .await?;
    if changed.rows_affected() > 0 {
        audit(
            &mut tx,
            "unsubscribe",
            Some(user_id),
            None,
            &ClientInfo::default(),
            serde_json::json!({}),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}
