//! Accounts: registration, login, sessions with rotating refresh tokens, email verification,
//! password reset, profiles, follows, and the security audit log.
//!
//! Rules chosen for unverified accounts: they can sign in, browse, enroll in free courses and
//! author drafts; they cannot publish a course or enroll in a paid one
//! ([`AuthUser::email_verified`] is what those services check).

pub mod password;
pub mod privacy;
pub mod profile;
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
use crate::events::{self, Envelope};
use crate::jobs::{self, Job, JobError, NewJob, SendAccountLink, SendEmail};
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
    /// The client's device cookie ([`tokens::Device`]), as sent; checked where it matters.
    pub device: Option<String>,
}

impl ClientInfo {
    /// The device cookie, if it is genuine and was issued to `user_id`.
    fn device_of(&self, services: &Services, user_id: Uuid) -> Option<tokens::Device> {
        self.device
            .as_deref()
            .and_then(|raw| tokens::Device::verify(&services.config, raw))
            .filter(|d| d.user_id == user_id)
    }

    /// The client address as a rate-limit key part (clients with none share one bucket).
    fn ip_key(&self) -> &str {
        self.ip.as_deref().unwrap_or("unknown")
    }
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
    /// The device cookie to set on the client after a sign-in (see [`tokens::Device`]); the API
    /// sends it as an `HttpOnly` cookie, never in the body.
    #[serde(skip)]
    pub device_cookie: Option<String>,
}

impl AuthResponse {
    fn new(user: UserView, access_token: String, refresh_token: String, expires_in: u64) -> Self {
        AuthResponse {
            user,
            access_token,
            refresh_token,
            expires_in,
            token_type: "Bearer",
            device_cookie: None,
        }
    }

    /// Keeps the client's device cookie when it already names this account, else issues one.
    fn with_device(mut self, services: &Services, client: &ClientInfo) -> Self {
        let cookie = match client.device_of(services, self.user.id) {
            Some(_) => client.device.clone(),
            None => Some(tokens::Device::issue(&services.config, self.user.id).1),
        };
        self.device_cookie = cookie;
        self
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
async fn queue_token_mail(
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
fn device_key(device: tokens::Device) -> String {
    format!("login-device:{}", device.device_id)
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
        close_sockets(services, user_id, Some(session_id)).await;
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
    close_sockets(services, user.id, (!all).then_some(user.session_id)).await;
    Ok(revoked)
}

/// Closes the WebSockets of ended sessions, on every API process: one session's, or all of the
/// user's when `session_id` is `None`. The message travels on the events channel (as
/// `{"type": "session_ended"}`), which each API process turns into a close of its matching
/// sockets. Call it after the commit that ended the sessions; suspending an account must call it
/// too. Best-effort like every event: a socket that misses it is still refused at its next
/// connect, since every connect checks the session.
pub async fn close_sockets(services: &Services, user_id: Uuid, session_id: Option<Uuid>) {
    events::publish(
        services,
        &[Envelope {
            user_id,
            event: serde_json::json!({ "type": SESSION_ENDED, "session_id": session_id }),
        }],
    )
    .await;
}

/// The `type` of the events-channel message that closes sockets ([`close_sockets`]).
pub const SESSION_ENDED: &str = "session_ended";

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
    close_sockets(services, user.id, Some(session_id)).await;
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
async fn void_reset_links(conn: &mut PgConnection, user_id: Uuid) -> Result<()> {
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
            user_agent: Some("lectern-api create-admin".into()),
            ..ClientInfo::default()
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
