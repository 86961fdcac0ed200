//! New accounts: self-registration, the admin made from the command line, and the job that
//! mails an account's one-time links.

use std::time::Duration;

use serde::Deserialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::audit::audit;
use super::password::{self, Password};
use super::rate_limit;
use super::session::open_session;
use super::store::UserRow;
use super::tokens;
use super::{
    AuthResponse, ClientInfo, RESET_TTL, UserView, VERIFY_TTL, is_unique_violation, parse_email,
    parse_name,
};
use crate::Services;
use crate::auth::{Principal, Role};
use crate::error::{Error, FieldErrors, Result};
use crate::jobs::{self, Job, JobError, NewJob, SendAccountLink, SendEmail};
use crate::mail::EmailTemplate;

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct Registration {
    pub email: String,
    pub password: String,
    pub full_name: String,
    /// `student` (default) or `instructor`; `admin` only when an admin registers the account.
    pub role: Option<String>,
}

/// Creates an account. `caller` is `Some` when an admin creates it (the only way to make an admin
/// through the API). Queues the verification mail after the commit.
pub async fn register(
    services: &Services,
    input: &Registration,
    caller: Option<&Principal>,
    client: &ClientInfo,
) -> Result<AuthResponse> {
    // Each registration costs an argon2id hash and a mail to an address the caller picks: a
    // bound per client address, checked before any of that work. Admins creating accounts
    // are not limited.
    if !caller.is_some_and(Principal::is_admin) {
        let auth = &services.config.auth;
        rate_limit::hit(
            services,
            &format!("register-ip:{}", client.ip_key()),
            auth.register_limit_per_ip,
            Duration::from_secs(3600),
        )
        .await?;
    }
    let mut fields = FieldErrors::new();
    let email = parse_email(&input.email)
        .map_err(|p| fields.add("email", p))
        .ok();
    let name = parse_name(&input.full_name)
        .map_err(|p| fields.add("full_name", p))
        .ok();
    let password = Password::parse(&input.password, email.as_deref().unwrap_or(""))
        .map_err(|p| fields.add("password", p))
        .ok();
    let role = match input.role.as_deref().unwrap_or("student") {
        "student" => Some(Role::Student),
        "instructor" => Some(Role::Instructor),
        "admin" if caller.is_some_and(Principal::is_admin) => Some(Role::Admin),
        "admin" => {
            fields.add("role", "only an admin can create an admin account");
            None
        }
        _ => {
            fields.add("role", "must be student or instructor");
            None
        }
    };
    fields.into_result()?;
    let (Some(email), Some(name), Some(password), Some(role)) = (email, name, password, role)
    else {
        return Err(Error::Internal(
            "validated registration lost a field".into(),
        ));
    };
    let hash = password::hash(&password).await?;
    let actor = caller.and_then(Principal::user_id);

    let mut tx = services.db.begin().await?;
    let id = Uuid::now_v7();
    let inserted = sqlx::query_as::<_, UserRow>(concat!(
        "INSERT INTO users (id, email, password_hash, full_name, role) VALUES ($1, $2, $3, $4, $5)
         RETURNING ",
        user_columns!(),
        ""
    ))
    .bind(id)
    .bind(&email)
    .bind(&hash)
    .bind(&name)
    .bind(role.as_str())
    .fetch_one(&mut *tx)
    .await;
    let user = match inserted {
        Ok(row) => UserView::from(row),
        Err(e) if is_unique_violation(&e, "users_email_key") => {
            return Err(Error::Conflict {
                code: "email_taken",
                message: "an account with this email already exists".into(),
            });
        }
        Err(e) => return Err(e.into()),
    };
    audit(
        &mut tx,
        "register",
        Some(id),
        actor,
        client,
        serde_json::json!({ "role": role.as_str() }),
    )
    .await?;
    let mail = queue_token_mail(services, &mut tx, &user, "verify_email", VERIFY_TTL).await?;
    let (access_token, refresh_token, expires_in) =
        open_session(services, &mut tx, &user, client).await?;
    tx.commit().await?;
    services.jobs.dispatch(&mail).await;
    Ok(
        AuthResponse::new(user, access_token, refresh_token, expires_in)
            .with_device(services, client),
    )
}

/// Writes a one-time token and the job that mails its link, in the caller's transaction. The job
/// names the token's row only; [`send_account_link`] derives the token when it sends the mail.
pub(super) async fn queue_token_mail(
    services: &Services,
    conn: &mut PgConnection,
    user: &UserView,
    purpose: &str,
    ttl: Duration,
) -> Result<NewJob> {
    let token_id = Uuid::now_v7();
    let hash = tokens::digest(&tokens::one_time_secret(&services.config, token_id));
    sqlx::query("INSERT INTO one_time_tokens (id, token_hash, user_id, purpose, expires_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(token_id)
        .bind(&hash)
        .bind(user.id)
        .bind(purpose)
        .bind(tokens::expires_at(ttl))
        .execute(&mut *conn)
        .await?;
    let job = Job::SendAccountLink(SendAccountLink { token_id });
    jobs::insert(conn, &job, Some(user.id), None).await
}

/// The `SendAccountLink` job: mails the verification or reset link of a one-time token. The
/// token is derived from its row id with the current signing secret and its stored hash updated
/// to match, so every retry mails the same working link, and a secret rotated since the job was
/// queued still gives one. A token already used, voided by a newer reset, or expired has no
/// link worth sending: the job ends without mail.
pub async fn send_account_link(services: &Services, job: &SendAccountLink) -> Result<(), JobError> {
    let token = tokens::one_time_secret(&services.config, job.token_id);
    let row: Option<(String, String, String)> = sqlx::query_as(
        "UPDATE one_time_tokens t SET token_hash = $2 FROM users u
          WHERE t.id = $1 AND u.id = t.user_id AND t.used_at IS NULL AND t.expires_at > now()
            AND u.status = 'active'
         RETURNING t.purpose, u.email, u.full_name",
    )
    .bind(job.token_id)
    .bind(tokens::digest(&token))
    .fetch_optional(&services.db)
    .await
    .map_err(|e| JobError::from(Error::from(e)))?;
    let Some((purpose, to, full_name)) = row else {
        tracing::info!(token_id = %job.token_id, "the link's token is used, voided or expired; no mail");
        return Ok(());
    };
    let (template, link, ttl) = match purpose.as_str() {
        "verify_email" => (
            EmailTemplate::VerifyEmail,
            crate::links::verify_email(&services.config, &token),
            VERIFY_TTL,
        ),
        "password_reset" => (
            EmailTemplate::PasswordReset,
            crate::links::reset_password(&services.config, &token),
            RESET_TTL,
        ),
        other => {
            return Err(JobError::Permanent(format!(
                "a one-time token with an unknown purpose {other:?}"
            )));
        }
    };
    let mut vars = serde_json::Map::new();
    vars.insert("full_name".into(), full_name.into());
    vars.insert("link".into(), link.into());
    vars.insert("expires_in_hours".into(), (ttl.as_secs() / 3600).into());
    crate::email::deliver(services, &SendEmail { to, template, vars }).await
}

/// The first admin: `lectern-api create-admin --email E` (password from standard input).
pub async fn create_admin(
    pool: &PgPool,
    email: &str,
    password: &str,
    full_name: &str,
) -> Result<UserView> {
    let mut fields = FieldErrors::new();
    let email = parse_email(email).map_err(|p| fields.add("email", p)).ok();
    let name = parse_name(full_name)
        .map_err(|p| fields.add("full_name", p))
        .ok();
    let password = Password::parse(password, email.as_deref().unwrap_or(""))
        .map_err(|p| fields.add("password", p))
        .ok();
    fields.into_result()?;
    let (Some(email), Some(name), Some(password)) = (email, name, password) else {
        return Err(Error::Internal("validated input lost a field".into()));
    };
    let hash = password::hash(&password).await?;
    let mut tx = pool.begin().await?;
    let row = sqlx::query_as::<_, UserRow>(concat!("INSERT INTO users (id, email, password_hash, full_name, role, email_verified_at)
         VALUES ($1, $2, $3, $4, 'admin', now())
         ON CONFLICT (email) DO UPDATE SET role = 'admin', password_hash = EXCLUDED.password_hash, updated_at = now()
         RETURNING ", user_columns!(), ""))
    .bind(Uuid::now_v7())
    .bind(&email)
    .bind(&hash)
    .bind(&name)
    .fetch_one(&mut *tx)
    .await?;
    let user = UserView::from(row);
    audit(
        &mut tx,
        "role_changed",
        Some(user.id),
        None,
        &ClientInfo {
            user_agent: Some("lectern-api create-admin".into()),
            ..ClientInfo::default()
        },
        serde_json::json!({ "role": "admin" }),
    )
    .await?;
    tx.commit().await?;
    Ok(user)
}
