//! Signing in, with throttling an attacker cannot turn against the account's owner.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::audit::audit;
use super::password;
use super::rate_limit;
use super::session::open_session;
use super::store::UserRow;
use super::tokens;
use super::{AuthResponse, ClientInfo, UserView, parse_email};
use crate::Services;
use crate::error::{Error, Result};

pub(super) fn invalid_credentials() -> Error {
    Error::Unauthenticated {
        code: "invalid_credentials",
        message: "the email or password is wrong".into(),
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct LoginRow {
    id: Uuid,
    password_hash: String,
    status: String,
    locked_until: Option<DateTime<Utc>>,
}

/// Signs in, with throttling that an attacker cannot turn against the account's owner (OWASP's
/// authentication cheat sheet, "device cookies"):
///
/// - A client with the account's device cookie (from an earlier sign-in) is throttled on its own
///   failures only: the account being under attack from elsewhere never refuses it.
/// - Other clients share the account's lock (`LOCKOUT_THRESHOLD` consecutive failures lock it
///   for `LOCKOUT_SECS`), but it holds back only clients whose address failed recently; an
///   address with no recent failures still gets its password checked.
/// - A bound per account for clients without its device cookie (`LOGIN_LIMIT_PER_ACCOUNT`
///   failures per 15 minutes), so a botnet cannot guess on and on from fresh addresses.
/// - A bound per client address for every attempt (`LOGIN_LIMIT_PER_IP` a minute).
///
/// A lock that has expired starts the count again: one wrong guess afterwards does not re-lock.
pub async fn login(
    services: &Services,
    email: &str,
    password: &str,
    client: &ClientInfo,
) -> Result<AuthResponse> {
    let auth = &services.config.auth;
    let email = parse_email(email).unwrap_or_else(|_| email.trim().to_lowercase());
    let account = hex::encode(&tokens::digest(&email)[..16]);
    let account_key = format!("login-account:{account}");
    let address_key = format!("login-failed:{account}:{}", client.ip_key());
    let account_window = Duration::from_secs(900);
    let row: Option<LoginRow> = sqlx::query_as(
        "SELECT id, password_hash, status, locked_until FROM users WHERE email = $1",
    )
    .bind(&email)
    .fetch_optional(&services.db)
    .await?;
    // The account's device, unless it has been failing itself (a stolen cookie gets a few
    // guesses, then counts as any other client).
    let device = match row.as_ref().and_then(|r| client.device_of(services, r.id)) {
        Some(d) => {
            let failing = rate_limit::over(
                services,
                &device_key(d),
                u32::try_from(auth.lockout_threshold).unwrap_or(5),
            )
            .await
            .is_err();
            (!failing).then_some(d)
        }
        None => None,
    };
    if device.is_none() {
        if let Some(ip) = &client.ip {
            rate_limit::hit(
                services,
                &format!("login-ip:{ip}"),
                auth.login_limit_per_ip,
                Duration::from_secs(60),
            )
            .await?;
        }
        rate_limit::over(services, &account_key, auth.login_limit_per_account).await?;
        if let Some(until) = row
            .as_ref()
            .and_then(|r| r.locked_until)
            .filter(|u| *u > Utc::now())
            && rate_limit::any_or_unknown(services, &address_key).await
        {
            return Err(Error::RateLimited {
                retry_after: (until - Utc::now())
                    .to_std()
                    .unwrap_or(Duration::from_secs(1)),
            });
        }
    }
    // Always verify (a dummy hash when there is no account): same cost either way.
    let ok = password::verify(password, row.as_ref().map(|r| r.password_hash.as_str())).await?;

    let Some(row) = row else {
        rate_limit::record(services, &account_key, account_window).await;
        rate_limit::record(services, &address_key, auth.lockout_duration).await;
        return Err(invalid_credentials());
    };
    if !ok {
        if let Some(d) = device {
            rate_limit::record(services, &device_key(d), auth.lockout_duration).await;
            let mut conn = services.db.acquire().await?;
            audit(
                &mut conn,
                "login_failed",
                Some(row.id),
                None,
                client,
                serde_json::json!({ "device": d.device_id }),
            )
            .await?;
            return Err(invalid_credentials());
        }
        let mut tx = services.db.begin().await?;
        // A lock that has expired counts from zero again.
        let failed: i32 = sqlx::query_scalar(
            "UPDATE users u SET failed_logins = n.failed,
                    locked_until = CASE WHEN n.failed >= $2 THEN now() + make_interval(secs => $3) END
               FROM (SELECT id, CASE WHEN locked_until <= now() THEN 1 ELSE failed_logins + 1 END AS failed
                       FROM users WHERE id = $1 FOR UPDATE) n
              WHERE u.id = n.id
             RETURNING u.failed_logins",
        )
        .bind(row.id)
        .bind(auth.lockout_threshold)
        .bind(auth.lockout_duration.as_secs_f64())
        .fetch_one(&mut *tx)
        .await?;
        audit(
            &mut tx,
            "login_failed",
            Some(row.id),
            None,
            client,
            serde_json::json!({ "failed_logins": failed }),
        )
        .await?;
        if failed == auth.lockout_threshold {
            audit(
                &mut tx,
                "lockout",
                Some(row.id),
                None,
                client,
                serde_json::json!({}),
            )
            .await?;
        }
        tx.commit().await?;
        rate_limit::record(services, &account_key, account_window).await;
        rate_limit::record(services, &address_key, auth.lockout_duration).await;
        return Err(invalid_credentials());
    }
    if row.status != "active" {
        return Err(Error::Forbidden {
            code: "account_suspended",
            message: "this account is suspended".into(),
        });
    }
    let mut tx = services.db.begin().await?;
    let user: UserView = sqlx::query_as::<_, UserRow>(concat!(
        "UPDATE users SET failed_logins = 0, locked_until = NULL, last_login_at = now(),
                last_login_ip = $2, last_login_user_agent = $3, updated_at = now()
          WHERE id = $1 RETURNING ",
        user_columns!(),
        ""
    ))
    .bind(row.id)
    .bind(client.ip.as_deref())
    .bind(
        client
            .user_agent
            .as_deref()
            .map(|ua| ua.chars().take(512).collect::<String>()),
    )
    .fetch_one(&mut *tx)
    .await?
    .into();
    let (access_token, refresh_token, expires_in) =
        open_session(services, &mut tx, &user, client).await?;
    audit(
        &mut tx,
        "login",
        Some(user.id),
        None,
        client,
        serde_json::json!({}),
    )
    .await?;
    tx.commit().await?;
    // The bound per account is not reset: the owner signing in must not give a guesser more.
    // Nor are the failures of the owner's address when the owner came with a device: a guesser
    // may share that address.
    match device {
        Some(d) => rate_limit::reset(services, &device_key(d)).await,
        None => rate_limit::reset(services, &address_key).await,
    }
    Ok(
        AuthResponse::new(user, access_token, refresh_token, expires_in)
            .with_device(services, client),
    )
}

/// Failures counted against one device cookie.
pub(super) fn device_key(device: tokens::Device) -> String {
    format!("login-device:{}", device.device_id)
}
