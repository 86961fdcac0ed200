//! Accounts: registration, login, sessions with rotating refresh tokens, email verification,
//! password reset, profiles, follows, and the security audit log.
//!
//! Rules chosen for unverified accounts: they can sign in, browse, enroll in free courses and
//! author drafts; they cannot publish a course or enroll in a paid one
//! ([`crate::auth::AuthUser::email_verified`] is what those services check).

pub mod password;
pub mod privacy;
pub mod profile;
pub mod rate_limit;
pub mod tokens;

#[macro_use]
mod store;
mod audit;
mod login;
mod me;
mod register;
mod session;
mod verify;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Services;
use crate::auth::Role;
use crate::email::EmailAddress;
pub use crate::page::Page;

pub use audit::{AuditEntry, audit, audit_log};
pub use login::login;
pub use me::{
    NotificationPreferencesPatch, ProfilePatch, follow, me, unfollow, unsubscribe, unsubscribe_url,
    update_me,
};
pub use register::{Registration, create_admin, register, send_account_link};
pub use session::{
    SESSION_ENDED, SessionView, authenticate, close_sockets, list_sessions, logout, refresh,
    require_live_session, revoke_session, session_ended, verify_signature,
};
pub(crate) use verify::check_password;
pub use verify::{
    PasswordChange, change_password, confirm_password_reset, request_password_reset, verify_email,
};

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
