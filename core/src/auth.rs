//! Who is calling, as established by the API from a credential. Permission checks use it here,
//! in core, never in handlers.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result};

/// `users.role` (`text` with a CHECK): decoded straight from rows, so an unknown value is a
/// decode error, never a default.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum Role {
    Student,
    Instructor,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Student => "student",
            Role::Instructor => "instructor",
            Role::Admin => "admin",
        }
    }
}

/// A user's access token whose signature, issuer and expiry are checked, but not yet its session.
/// The hottest route (the player's heartbeat) takes this and checks the session (live, account
/// active) inside its one statement, which saves it a round trip to PostgreSQL; every other route
/// takes a [`Principal`], checked before the handler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignedUser {
    pub id: Uuid,
    pub session_id: Uuid,
}

/// A signed-in user, as checked on this request (token valid, session live, account active).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthUser {
    pub id: Uuid,
    pub role: Role,
    pub session_id: Uuid,
    pub email_verified: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The operator, authenticated with `ADMIN_TOKEN`: an admin that is not a user account.
    Operator,
    User(AuthUser),
}

impl Principal {
    /// The user account behind the call, if any (jobs a user starts are recorded against it).
    pub fn user_id(&self) -> Option<Uuid> {
        match self {
            Principal::Operator => None,
            Principal::User(u) => Some(u.id),
        }
    }

    pub fn user(&self) -> Option<&AuthUser> {
        match self {
            Principal::Operator => None,
            Principal::User(u) => Some(u),
        }
    }

    pub fn is_admin(&self) -> bool {
        match self {
            Principal::Operator => true,
            Principal::User(u) => u.role == Role::Admin,
        }
    }

    pub fn require_admin(&self) -> Result<()> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(Error::forbidden())
        }
    }

    /// The signed-in user, or 401 for the operator token (which is not an account).
    pub fn require_user(&self) -> Result<&AuthUser> {
        self.user().ok_or_else(user_required)
    }
}

/// The answer to the operator token on a route that needs a user's account.
pub fn user_required() -> Error {
    Error::Unauthenticated {
        code: "user_required",
        message: "this route needs a user's access token".into(),
    }
}
