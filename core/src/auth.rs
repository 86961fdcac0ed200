//! Who is calling, as established by the API from a credential. Permission checks use it here,
//! in core, never in handlers.

use uuid::Uuid;

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The operator, authenticated with `ADMIN_TOKEN`: an admin that is not a user account.
    Operator,
}

impl Principal {
    /// The user account behind the call, if any (jobs a user starts are recorded against it).
    pub fn user_id(&self) -> Option<Uuid> {
        match self {
            Principal::Operator => None,
        }
    }

    pub fn is_admin(&self) -> bool {
        matches!(self, Principal::Operator)
    }

    pub fn require_admin(&self) -> Result<()> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(Error::Forbidden)
        }
    }
}
