//! One-time tokens and passwords: email verification, password reset, password change.

use std::time::Duration;

use serde::Deserialize;
use sqlx::PgConnection;
use uuid::Uuid;

use super::audit::audit;
use super::password::{self, Password};
use super::rate_limit;
use super::register::queue_token_mail;
use super::session::close_sockets;
use super::store::UserRow;
use super::store::fetch_user;
use super::tokens;
use super::{ClientInfo, RESET_TTL, UserView, parse_email};
use crate::Services;
use crate::auth::{AuthUser, Role};
use crate::error::{Error, Result};
use crate::jobs::{self, Job, NewJob, SendEmail};
use crate::mail::EmailTemplate;

pub(super) fn invalid_one_time() -> Error {
    Error::invalid("token", "is invalid, already used, or expired")
}

/// Spends a one-time token of `purpose`, returning its user.
pub(super) async fn spend_token(
    conn: &mut PgConnection,
    token: &str,
    purpose: &str,
) -> Result<Uuid> {
    sqlx::query_scalar(
        "UPDATE one_time_tokens SET used_at = now()
          WHERE token_hash = $1 AND purpose = $2 AND used_at IS NULL AND expires_at > now()
         RETURNING user_id",
    )
    .bind(tokens::digest(token))
    .bind(purpose)
    .fetch_optional(conn)
    .await?
    .ok_or_else(invalid_one_time)
}

pub async fn verify_email(
    services: &Services,
    token: &str,
    client: &ClientInfo,
) -> Result<UserView> {
    let mut tx = services.db.begin().await?;
    let user_id = spend_token(&mut tx, token, "verify_email").await?;
    let first_time = sqlx::query("UPDATE users SET email_verified_at = now(), updated_at = now() WHERE id = $1 AND email_verified_at IS NULL")
        .bind(user_id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
        > 0;
    audit(
        &mut tx,
        "email_verified",
        Some(user_id),
        Some(user_id),
        client,
        serde_json::json!({}),
    )
    .await?;
    let user = fetch_user(&mut tx, user_id).await?;
    // The welcome goes out once, when the address is confirmed for the first time.
    let welcome = if first_time {
        Some(queue_welcome(services, &mut tx, &user).await?)
    } else {
        None
    };
    tx.commit().await?;
    if let Some(welcome) = welcome {
        services.jobs.dispatch(&welcome).await;
    }
    Ok(user)
}

/// The welcome mail of a newly confirmed account, in the caller's transaction.
pub(super) async fn queue_welcome(
    services: &Services,
    conn: &mut PgConnection,
    user: &UserView,
) -> Result<NewJob> {
    let instructor = matches!(user.role, Role::Instructor);
    let mut vars = serde_json::Map::new();
    vars.insert("full_name".into(), user.full_name.clone().into());
    vars.insert(
        "role".into(),
        if instructor { "instructor" } else { "student" }.into(),
    );
    vars.insert(
        "link".into(),
        if instructor {
            crate::links::new_course(&services.config)
        } else {
            crate::links::catalogue(&services.config)
        }
        .into(),
    );
    let job = Job::SendEmail(SendEmail {
        to: user.email.clone(),
        template: EmailTemplate::Welcome,
        vars,
    });
    jobs::insert(conn, &job, Some(user.id), None).await
}

/// Mails a reset link when the account exists; answers the same either way (no enumeration).
pub async fn request_password_reset(
    services: &Services,
    email: &str,
    client: &ClientInfo,
) -> Result<()> {
    let email = parse_email(email).map_err(|p| Error::invalid("email", p))?;
    let auth = &services.config.auth;
    let mut tx = services.db.begin().await?;
    let user = sqlx::query_as::<_, UserRow>(concat!(
        "SELECT ",
        user_columns!(),
        " FROM users WHERE email = $1 AND status = 'active'"
    ))
    .bind(&email)
    .fetch_optional(&mut *tx)
    .await?
    .map(UserView::from);
    // Limits per requester, so a stranger's requests never use up the owner's: the account's own
    // device counts on its own; anyone else counts per address and, only against floods, per
    // account over a day.
    let hour = Duration::from_secs(3600);
    match user.as_ref().and_then(|u| client.device_of(services, u.id)) {
        Some(device) => {
            rate_limit::hit(
                services,
                &format!("reset-device:{}", device.device_id),
                auth.reset_limit_per_ip,
                hour,
            )
            .await?;
        }
        None => {
            rate_limit::hit(
                services,
                &format!("reset-ip:{}", client.ip_key()),
                auth.reset_limit_per_ip,
                hour,
            )
            .await?;
            rate_limit::hit(
                services,
                &format!(
                    "reset-address:{}",
                    hex::encode(&tokens::digest(&email)[..16])
                ),
                auth.reset_limit_per_address,
                24 * hour,
            )
            .await?;
        }
    }
    let Some(user) = user else {
        return Ok(());
    };
    let mail = queue_token_mail(services, &mut tx, &user, "password_reset", RESET_TTL).await?;
    audit(
        &mut tx,
        "password_reset_requested",
        Some(user.id),
        None,
        client,
        serde_json::json!({}),
    )
    .await?;
    tx.commit().await?;
    services.jobs.dispatch(&mail).await;
    Ok(())
}

/// Sets a new password from a reset token and revokes every session of the account.
pub async fn confirm_password_reset(
    services: &Services,
    token: &str,
    new_password: &str,
    client: &ClientInfo,
) -> Result<()> {
    let mut tx = services.db.begin().await?;
    let user_id = spend_token(&mut tx, token, "password_reset").await?;
    let email: String = sqlx::query_scalar("SELECT email FROM users WHERE id = $1")
        .bind(user_id)
        .fetch_one(&mut *tx)
        .await?;
    let password =
        Password::parse(new_password, &email).map_err(|p| Error::invalid("password", p))?;
    let hash = password::hash(&password).await?;
    sqlx::query(
        "UPDATE users SET password_hash = $2, failed_logins = 0, locked_until = NULL,
                email_verified_at = COALESCE(email_verified_at, now()), updated_at = now()
          WHERE id = $1",
    )
    .bind(user_id)
    .bind(&hash)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE sessions SET revoked_at = now(), revoked_reason = 'password_reset' WHERE user_id = $1 AND revoked_at IS NULL")
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    void_reset_links(&mut tx, user_id).await?;
    audit(
        &mut tx,
        "password_changed",
        Some(user_id),
        Some(user_id),
        client,
        serde_json::json!({ "via": "reset" }),
    )
    .await?;
    tx.commit().await?;
    close_sockets(services, user_id, None).await;
    Ok(())
}

/// Spends every outstanding reset link of the account: once its password changes, an older link
/// (perhaps sitting in a mailbox someone else reads) must not set another.
pub(super) async fn void_reset_links(conn: &mut PgConnection, user_id: Uuid) -> Result<()> {
    sqlx::query(
        "UPDATE one_time_tokens SET used_at = now()
          WHERE user_id = $1 AND purpose = 'password_reset' AND used_at IS NULL",
    )
    .bind(user_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Checks the signed-in user's current password before a sensitive change, at most
/// `PASSWORD_CHECK_LIMIT` times per 15 minutes per account (a stolen access token must not
/// become a way to guess the password).
pub(crate) async fn check_password(services: &Services, user_id: Uuid, raw: &str) -> Result<()> {
    rate_limit::hit(
        services,
        &format!("password-check:{user_id}"),
        services.config.auth.password_check_limit,
        Duration::from_secs(900),
    )
    .await?;
    let hash: String = sqlx::query_scalar("SELECT password_hash FROM users WHERE id = $1")
        .bind(user_id)
        .fetch_one(&services.db)
        .await?;
    if !password::verify(raw, Some(&hash)).await? {
        return Err(Error::invalid("password", "is not your current password"));
    }
    Ok(())
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct PasswordChange {
    /// The current password, to confirm.
    pub password: String,
    pub new_password: String,
}

/// Changes the caller's password: every other session ends, and every outstanding reset link
/// stops working.
pub async fn change_password(
    services: &Services,
    user: &AuthUser,
    change: &PasswordChange,
    client: &ClientInfo,
) -> Result<()> {
    check_password(services, user.id, &change.password).await?;
    let email: String = sqlx::query_scalar("SELECT email FROM users WHERE id = $1")
        .bind(user.id)
        .fetch_one(&services.db)
        .await?;
    let password = Password::parse(&change.new_password, &email)
        .map_err(|p| Error::invalid("new_password", p))?;
    let hash = password::hash(&password).await?;
    let mut tx = services.db.begin().await?;
    sqlx::query(
        "UPDATE users SET password_hash = $2, failed_logins = 0, locked_until = NULL, updated_at = now()
          WHERE id = $1",
    )
    .bind(user.id)
    .bind(&hash)
    .execute(&mut *tx)
    .await?;
    let ended: Vec<Uuid> = sqlx::query_scalar(
        "UPDATE sessions SET revoked_at = now(), revoked_reason = 'password_changed'
          WHERE user_id = $1 AND id <> $2 AND revoked_at IS NULL RETURNING id",
    )
    .bind(user.id)
    .bind(user.session_id)
    .fetch_all(&mut *tx)
    .await?;
    void_reset_links(&mut tx, user.id).await?;
    audit(
        &mut tx,
        "password_changed",
        Some(user.id),
        Some(user.id),
        client,
        serde_json::json!({ "via": "change", "sessions_ended": ended.len() }),
    )
    .await?;
    tx.commit().await?;
    for session_id in ended {
        close_sockets(services, user.id, Some(session_id)).await;
    }
    Ok(())
}
