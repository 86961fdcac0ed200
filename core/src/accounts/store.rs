//! The `users` row shared by the account services, and the statement that reads it.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{NotificationPreferences, UserView};
use crate::auth::Role;
use crate::error::{Error, Result};

#[derive(sqlx::FromRow)]
pub(super) struct UserRow {
    id: Uuid,
    email: String,
    full_name: String,
    bio: String,
    role: Role,
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
            role: r.role,
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

pub(super) async fn fetch_user(conn: &mut PgConnection, id: Uuid) -> Result<UserView> {
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
