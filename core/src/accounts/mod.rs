//! Accounts: registration, login, sessions with rotating refresh tokens, email verification,
//! password reset, profiles, follows, and the security audit log.
//!
//! Rules chosen for unverified accounts: they can sign in, browse, enroll in free courses and
//! author drafts; they cannot publish a course or enroll in a paid one
//! ([`AuthUser::email_verified`] is what those services check).

pub mod password;
pub mod privacy;
pub mod rate_limit;
pub mod tokens;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::Services;
use crate::auth::{AuthUser, Principal, Role, SignedUser};
use crate::email::EmailAddress;
use crate::error::{Error, FieldErrors, Result};
use crate::jobs::{self, Job, NewJob, SendEmail};
use crate::mail::EmailTemplate;
pub use crate::page::Page;
use password::Password;

const VERIFY_TTL: Duration = Duration::from_secs(48 * 3600);
const RESET_TTL: Duration = Duration::from_secs(3600);

/// Where a request came from, as the API established it (trusted proxies honoured).
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UserView {
    pub id: Uuid,
    pub email: String,
    pub full_name: String,
    pub bio: String,
    pub role: Role,
    pub email_verified: bool,
    pub notification_preferences: NotificationPreferences,
    pub created_at: DateTime<Utc>,
    pub last_login_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NotificationPreferences {
    pub email: bool,
    pub in_app: bool,
}

#[derive(sqlx::FromRow)]
struct UserRow {
    id: Uuid,
    email: String,
    full_name: String,
    bio: String,
    role: String,
    email_verified_at: Option<DateTime<Utc>>,
    notify_email: bool,
    notify_in_app: bool,
    created_at: DateTime<Utc>,
    last_login_at: Option<DateTime<Utc>>,
}

/// The columns of [`UserRow`], for `concat!` into static SQL.
macro_rules! user_columns {
    () => {
        "id, email, full_name, bio, role, email_verified_at, notify_email, notify_in_app, created_at, last_login_at"
    };
}

impl From<UserRow> for UserView {
    fn from(r: UserRow) -> Self {
        UserView {
            id: r.id,
            email: r.email,
            full_name: r.full_name,
            bio: r.bio,
            role: Role::parse(&r.role).unwrap_or(Role::Student),
            email_verified: r.email_verified_at.is_some(),
            notification_preferences: NotificationPreferences {
                email: r.notify_email,
                in_app: r.notify_in_app,
            },
            created_at: r.created_at,
            last_login_at: r.last_login_at,
        }
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AuthResponse {
    pub user: UserView,
    pub access_token: String,
    pub refresh_token: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    pub token_type: &'static str,
}

impl AuthResponse {
    fn new(user: UserView, access_token: String, refresh_token: String, expires_in: u64) -> Self {
        AuthResponse {
            user,
            access_token,
            refresh_token,
            expires_in,
            token_type: "Bearer",
        }
    }
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct Registration {
    pub email: String,
    pub password: String,
    pub full_name: String,
    /// `student` (default) or `instructor`; `admin` only when an admin registers the account.
    pub role: Option<String>,
}

fn parse_email(raw: &str) -> Result<String, String> {
    EmailAddress::parse(raw).map(|e| e.as_str().to_lowercase())
}

fn parse_name(raw: &str) -> Result<String, String> {
    let name = raw.trim();
    let len = name.chars().count();
    if len == 0 {
        return Err("is required".into());
    }
    if len > 100 {
        return Err("must be at most 100 characters".into());
    }
    if name.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(name.to_owned())
}

fn is_unique_violation(e: &sqlx::Error, constraint: &str) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.constraint() == Some(constraint))
}

/// Records a security event.
pub async fn audit(
    conn: &mut PgConnection,
    event: &str,
    user_id: Option<Uuid>,
    actor_id: Option<Uuid>,
    client: &ClientInfo,
    data: serde_json::Value,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_log (event, user_id, actor_id, ip, user_agent, data) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(event)
    .bind(user_id)
    .bind(actor_id)
    .bind(client.ip.as_deref())
    .bind(client.user_agent.as_deref().map(|ua| ua.chars().take(512).collect::<String>()))
    .bind(data)
    .execute(conn)
    .await?;
    Ok(())
}

/// Creates an account. `caller` is `Some` when an admin creates it (the only way to make an admin
/// through the API). Queues the verification mail after the commit.
pub async fn register(
    services: &Services,
    input: &Registration,
    caller: Option<&Principal>,
    client: &ClientInfo,
) -> Result<AuthResponse> {
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
    Ok(AuthResponse::new(
        user,
        access_token,
        refresh_token,
        expires_in,
    ))
}

/// Writes a hashed one-time token and the mail job that carries it, in the caller's transaction.
async fn queue_token_mail(
    services: &Services,
    conn: &mut PgConnection,
    user: &UserView,
    purpose: &str,
    ttl: Duration,
) -> Result<NewJob> {
    let (token, hash) = tokens::opaque();
    sqlx::query("INSERT INTO one_time_tokens (token_hash, user_id, purpose, expires_at) VALUES ($1, $2, $3, $4)")
        .bind(&hash)
        .bind(user.id)
        .bind(purpose)
        .bind(tokens::expires_at(ttl))
        .execute(&mut *conn)
        .await?;
    let base = services.config.public_url.as_str().trim_end_matches('/');
    let (template, path) = match purpose {
        "verify_email" => (EmailTemplate::VerifyEmail, "verify-email"),
        _ => (EmailTemplate::PasswordReset, "reset-password"),
    };
    let mut vars = serde_json::Map::new();
    vars.insert("full_name".into(), user.full_name.clone().into());
    vars.insert("link".into(), format!("{base}/{path}?token={token}").into());
    vars.insert("expires_in_hours".into(), (ttl.as_secs() / 3600).into());
    let job = Job::SendEmail(SendEmail {
        to: user.email.clone(),
        template,
        vars,
    });
    jobs::insert(conn, &job, Some(user.id), None).await
}

/// Creates a session and its first refresh token; returns (access, refresh, expires_in).
async fn open_session(
    services: &Services,
    conn: &mut PgConnection,
    user: &UserView,
    client: &ClientInfo,
) -> Result<(String, String, u64)> {
    let session_id = Uuid::now_v7();
    sqlx::query("INSERT INTO sessions (id, user_id, user_agent, ip, expires_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(session_id)
        .bind(user.id)
        .bind(client.user_agent.as_deref().map(|ua| ua.chars().take(512).collect::<String>()))
        .bind(client.ip.as_deref())
        .bind(tokens::expires_at(services.config.auth.refresh_token_ttl))
        .execute(&mut *conn)
        .await?;
    let refresh = new_refresh_token(conn, session_id).await?;
    let (access, expires_in) =
        tokens::issue_access(&services.config, user.id, user.role, session_id)?;
    Ok((access, refresh, expires_in))
}

async fn new_refresh_token(conn: &mut PgConnection, session_id: Uuid) -> Result<String> {
    let (token, hash) = tokens::opaque();
    sqlx::query("INSERT INTO refresh_tokens (token_hash, session_id) VALUES ($1, $2)")
        .bind(&hash)
        .bind(session_id)
        .execute(conn)
        .await?;
    Ok(token)
}

fn invalid_credentials() -> Error {
    Error::Unauthenticated {
        code: "invalid_credentials",
        message: "the email or password is wrong".into(),
    }
}

#[derive(sqlx::FromRow)]
struct LoginRow {
    id: Uuid,
    password_hash: String,
    status: String,
    locked_until: Option<DateTime<Utc>>,
}

pub async fn login(
    services: &Services,
    email: &str,
    password: &str,
    client: &ClientInfo,
) -> Result<AuthResponse> {
    let auth = &services.config.auth;
    let email = parse_email(email).unwrap_or_else(|_| email.trim().to_lowercase());
    if let Some(ip) = &client.ip {
        rate_limit::hit(
            services,
            &format!("login-ip:{ip}"),
            auth.login_limit_per_ip,
            Duration::from_secs(60),
        )
        .await?;
    }
    let account_key = format!(
        "login-account:{}",
        hex::encode(&tokens::digest(&email)[..16])
    );
    let row: Option<LoginRow> = sqlx::query_as(
        "SELECT id, password_hash, status, locked_until FROM users WHERE email = $1",
    )
    .bind(&email)
    .fetch_optional(&services.db)
    .await?;
    // Always verify (a dummy hash when there is no account): same cost either way.
    let ok = password::verify(password, row.as_ref().map(|r| r.password_hash.as_str())).await?;

    let Some(row) = row else {
        rate_limit::hit(
            services,
            &account_key,
            auth.login_limit_per_account,
            Duration::from_secs(900),
        )
        .await?;
        return Err(invalid_credentials());
    };
    if let Some(until) = row.locked_until.filter(|u| *u > Utc::now()) {
        return Err(Error::RateLimited {
            retry_after: (until - Utc::now())
                .to_std()
                .unwrap_or(Duration::from_secs(1)),
        });
    }
    if !ok {
        let mut tx = services.db.begin().await?;
        let (failed, locked): (i32, bool) = sqlx::query_as(
            "UPDATE users SET failed_logins = failed_logins + 1,
                    locked_until = CASE WHEN failed_logins + 1 >= $2 THEN now() + make_interval(secs => $3) END
              WHERE id = $1
             RETURNING failed_logins, locked_until IS NOT NULL",
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
        if locked {
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
        rate_limit::hit(
            services,
            &account_key,
            auth.login_limit_per_account,
            Duration::from_secs(900),
        )
        .await?;
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
    rate_limit::reset(services, &account_key).await;
    Ok(AuthResponse::new(
        user,
        access_token,
        refresh_token,
        expires_in,
    ))
}

fn invalid_refresh() -> Error {
    Error::Unauthenticated {
        code: "invalid_refresh_token",
        message: "the refresh token is invalid or expired; sign in again".into(),
    }
}

/// Rotates a refresh token: the presented one is spent, a new pair is issued. Presenting a spent
/// token again means it was stolen (or replayed): the whole session is revoked.
pub async fn refresh(
    services: &Services,
    refresh_token: &str,
    client: &ClientInfo,
) -> Result<AuthResponse> {
    let hash = tokens::digest(refresh_token);
    let mut tx = services.db.begin().await?;
    let found: Option<(Uuid, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT session_id, used_at FROM refresh_tokens WHERE token_hash = $1 FOR UPDATE",
    )
    .bind(&hash)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((session_id, used_at)) = found else {
        return Err(invalid_refresh());
    };
    let session: Option<(Uuid, bool)> = sqlx::query_as(
        "SELECT s.user_id, (s.revoked_at IS NULL AND s.expires_at > now() AND u.status = 'active')
           FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id = $1 FOR UPDATE OF s",
    )
    .bind(session_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((user_id, live)) = session else {
        return Err(invalid_refresh());
    };
    if used_at.is_some() {
        sqlx::query(
            "UPDATE sessions SET revoked_at = COALESCE(revoked_at, now()), revoked_reason = COALESCE(revoked_reason, 'refresh_token_reuse') WHERE id = $1",
        )
        .bind(session_id)
        .execute(&mut *tx)
        .await?;
        audit(
            &mut tx,
            "refresh_token_reuse",
            Some(user_id),
            None,
            client,
            serde_json::json!({ "session_id": session_id }),
        )
        .await?;
        tx.commit().await?;
        return Err(Error::Unauthenticated {
            code: "refresh_token_reused",
            message:
                "this refresh token was already used; the session has been revoked, sign in again"
                    .into(),
        });
    }
    if !live {
        return Err(invalid_refresh());
    }
    sqlx::query("UPDATE refresh_tokens SET used_at = now() WHERE token_hash = $1")
        .bind(&hash)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE sessions SET last_used_at = now(), ip = COALESCE($2, ip) WHERE id = $1")
        .bind(session_id)
        .bind(client.ip.as_deref())
        .execute(&mut *tx)
        .await?;
    let user = fetch_user(&mut tx, user_id).await?;
    let refresh_token = new_refresh_token(&mut tx, session_id).await?;
    let (access_token, expires_in) =
        tokens::issue_access(&services.config, user.id, user.role, session_id)?;
    tx.commit().await?;
    Ok(AuthResponse::new(
        user,
        access_token,
        refresh_token,
        expires_in,
    ))
}

async fn fetch_user(conn: &mut PgConnection, id: Uuid) -> Result<UserView> {
    sqlx::query_as::<_, UserRow>(concat!(
        "SELECT ",
        user_columns!(),
        " FROM users WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await?
    .map(Into::into)
    .ok_or(Error::NotFound("user"))
}

/// Turns a bearer access token into the signed-in user. The session is checked on every request,
/// so logging out or revoking a session takes effect at once.
/// The answer for a token whose session was revoked or expired, or whose account is not active.
pub fn session_ended() -> Error {
    Error::Unauthenticated {
        code: "session_revoked",
        message: "this session has ended; sign in again".into(),
    }
}

/// Checks an access token's signature and expiry only; the caller must check its session (see
/// [`SignedUser`]).
pub fn verify_signature(services: &Services, token: &str) -> Result<SignedUser> {
    let claims = tokens::verify_access(&services.config, token)?;
    Ok(SignedUser {
        id: claims.sub,
        session_id: claims.sid,
    })
}

pub async fn authenticate(services: &Services, token: &str) -> Result<AuthUser> {
    let claims = tokens::verify_access(&services.config, token)?;
    let (role, email_verified) = live_session(services, claims.sid, claims.sub)
        .await?
        .ok_or_else(session_ended)?;
    Ok(AuthUser {
        id: claims.sub,
        role: Role::parse(&role).unwrap_or(Role::Student),
        session_id: claims.sid,
        email_verified,
    })
}

/// 401 unless the signed token's session is live and its account active.
pub async fn require_live_session(services: &Services, user: &SignedUser) -> Result<()> {
    live_session(services, user.session_id, user.id)
        .await?
        .map(|_| ())
        .ok_or_else(session_ended)
}

/// The account's role and whether its email is verified, if the session is live (not revoked,
/// not expired) and the account active.
async fn live_session(
    services: &Services,
    session_id: Uuid,
    user_id: Uuid,
) -> Result<Option<(String, bool)>> {
    Ok(sqlx::query_as(
        "SELECT u.role, u.email_verified_at IS NOT NULL
           FROM sessions s JOIN users u ON u.id = s.user_id
          WHERE s.id = $1 AND s.user_id = $2 AND s.revoked_at IS NULL AND s.expires_at > now()
            AND u.status = 'active'",
    )
    .bind(session_id)
    .bind(user_id)
    .fetch_optional(&services.db)
    .await?)
}

/// Ends the caller's session, or all of their sessions.
pub async fn logout(
    services: &Services,
    user: &AuthUser,
    all: bool,
    client: &ClientInfo,
) -> Result<u64> {
    let mut tx = services.db.begin().await?;
    let revoked = sqlx::query(
        "UPDATE sessions SET revoked_at = now(), revoked_reason = 'logout'
          WHERE user_id = $1 AND revoked_at IS NULL AND ($2 OR id = $3)",
    )
    .bind(user.id)
    .bind(all)
    .bind(user.session_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    audit(
        &mut tx,
        if all { "logout_all" } else { "logout" },
        Some(user.id),
        Some(user.id),
        client,
        serde_json::json!({ "sessions": revoked }),
    )
    .await?;
    tx.commit().await?;
    Ok(revoked)
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct SessionView {
    pub id: Uuid,
    /// The device, as its browser or app describes itself.
    pub user_agent: Option<String>,
    pub ip: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    #[sqlx(skip)]
    pub current: bool,
}

pub async fn list_sessions(services: &Services, user: &AuthUser) -> Result<Vec<SessionView>> {
    let mut sessions: Vec<SessionView> = sqlx::query_as(
        "SELECT id, user_agent, ip, created_at, last_used_at, expires_at FROM sessions
          WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > now()
          ORDER BY last_used_at DESC LIMIT 100",
    )
    .bind(user.id)
    .fetch_all(&services.db)
    .await?;
    for s in &mut sessions {
        s.current = s.id == user.session_id;
    }
    Ok(sessions)
}

/// Revokes one of the caller's sessions; another user's session answers 404.
pub async fn revoke_session(
    services: &Services,
    user: &AuthUser,
    session_id: Uuid,
    client: &ClientInfo,
) -> Result<()> {
    let mut tx = services.db.begin().await?;
    let done = sqlx::query(
        "UPDATE sessions SET revoked_at = now(), revoked_reason = 'revoked_by_user'
          WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL",
    )
    .bind(session_id)
    .bind(user.id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if done == 0 {
        return Err(Error::NotFound("session"));
    }
    audit(
        &mut tx,
        "session_revoked",
        Some(user.id),
        Some(user.id),
        client,
        serde_json::json!({ "session_id": session_id }),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

fn invalid_one_time() -> Error {
    Error::invalid("token", "is invalid, already used, or expired")
}

/// Spends a one-time token of `purpose`, returning its user.
async fn spend_token(conn: &mut PgConnection, token: &str, purpose: &str) -> Result<Uuid> {
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
async fn queue_welcome(
    services: &Services,
    conn: &mut PgConnection,
    user: &UserView,
) -> Result<NewJob> {
    let base = services.config.public_url.as_str().trim_end_matches('/');
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
            format!("{base}/instructor/courses/new")
        } else {
            format!("{base}/courses")
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
    rate_limit::hit(
        services,
        &format!("reset:{}", hex::encode(&tokens::digest(&email)[..16])),
        3,
        Duration::from_secs(3600),
    )
    .await?;
    let mut tx = services.db.begin().await?;
    let user = sqlx::query_as::<_, UserRow>(concat!(
        "SELECT ",
        user_columns!(),
        " FROM users WHERE email = $1 AND status = 'active'"
    ))
    .bind(&email)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(user) = user.map(UserView::from) else {
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
    Ok(())
}

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
            ip: None,
            user_agent: Some("lectern-api create-admin".into()),
        },
        serde_json::json!({ "role": "admin" }),
    )
    .await?;
    tx.commit().await?;
    Ok(user)
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub event: String,
    pub user_id: Option<Uuid>,
    pub actor_id: Option<Uuid>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub data: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

/// The audit log, newest first, for admins. The cursor is the last id seen.
pub async fn audit_log(
    services: &Services,
    caller: &Principal,
    user_id: Option<Uuid>,
    limit: Option<i64>,
    cursor: Option<&str>,
) -> Result<Page<AuditEntry>> {
    caller.require_admin()?;
    let limit = crate::page::limit(limit);
    let before: Option<i64> = match cursor {
        Some(c) => Some(
            c.parse()
                .map_err(|_| Error::invalid("cursor", "is not a cursor this API gave out"))?,
        ),
        None => None,
    };
    let items: Vec<AuditEntry> = sqlx::query_as(
        "SELECT id, event, user_id, actor_id, ip, user_agent, data, created_at FROM audit_log
          WHERE ($1::uuid IS NULL OR user_id = $1) AND ($2::bigint IS NULL OR id < $2)
          ORDER BY id DESC LIMIT $3",
    )
    .bind(user_id)
    .bind(before)
    .bind(limit)
    .fetch_all(&services.db)
    .await?;
    let next_cursor = (items.len() as i64 == limit)
        .then(|| items.last().map(|e| e.id.to_string()))
        .flatten();
    Ok(Page { items, next_cursor })
}

/// The one-click unsubscribe link of a user's non-essential mail (`List-Unsubscribe`).
pub fn unsubscribe_url(services: &Services, user_id: Uuid) -> String {
    let base = services.config.public_url.as_str().trim_end_matches('/');
    format!(
        "{base}/api/v1/unsubscribe?token={}",
        tokens::signed_id(&services.config, "unsubscribe", user_id)
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
