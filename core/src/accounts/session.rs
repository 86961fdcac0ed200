//! Sessions: opening one, rotating its refresh token, checking it on every request, ending it.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

use super::audit::audit;
use super::store::fetch_user;
use super::tokens;
use super::{AuthResponse, ClientInfo, UserView};
use crate::Services;
use crate::auth::{AuthUser, Role, SignedUser};
use crate::error::{Error, Result};
use crate::events::{self, Envelope};

/// Creates a session and its first refresh token; returns (access, refresh, expires_in).
pub(super) async fn open_session(
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

pub(super) async fn new_refresh_token(conn: &mut PgConnection, session_id: Uuid) -> Result<String> {
    let (token, hash) = tokens::opaque();
    sqlx::query("INSERT INTO refresh_tokens (token_hash, session_id) VALUES ($1, $2)")
        .bind(&hash)
        .bind(session_id)
        .execute(conn)
        .await?;
    Ok(token)
}

pub(super) fn invalid_refresh() -> Error {
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
        role,
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
pub(super) async fn live_session(
    services: &Services,
    session_id: Uuid,
    user_id: Uuid,
) -> Result<Option<(Role, bool)>> {
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
