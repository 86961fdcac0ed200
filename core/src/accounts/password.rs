//! Password policy (length and a common-password list, no composition rules, as NIST 800-63B
//! advises) and argon2id hashing off the async threads.

use std::collections::HashSet;
use std::sync::LazyLock;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

use crate::error::{Error, Result};

pub const MIN_LEN: usize = 8;
pub const MAX_LEN: usize = 128;

static COMMON: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    include_str!("../../data/common-passwords.txt")
        .lines()
        .collect()
});

/// A password that meets the policy. It never prints itself.
pub struct Password(String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(***)")
    }
}

impl Password {
    /// Checks a new password; the error is the sentence shown for the field.
    pub fn parse(raw: &str, email: &str) -> Result<Password, String> {
        let chars = raw.chars().count();
        if chars < MIN_LEN {
            return Err(format!("must be at least {MIN_LEN} characters"));
        }
        if chars > MAX_LEN {
            return Err(format!("must be at most {MAX_LEN} characters"));
        }
        let lower = raw.to_lowercase();
        if COMMON.contains(lower.as_str()) {
            return Err("is one of the most common passwords; choose another".into());
        }
        if let Some(local) = email.split('@').next()
            && local.len() >= 4
            && lower.contains(&local.to_lowercase())
        {
            return Err("must not contain your email address".into());
        }
        Ok(Password(raw.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// OWASP's argon2id recommendation: 19 MiB, 2 iterations, 1 lane.
fn hasher() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

type Task = Box<dyn FnOnce() + Send>;

/// A fixed pool of hashing threads, one per core. Each argon2id hash touches 19 MiB; on tokio's
/// blocking pool (up to 512 threads, each with its own malloc arena) a login burst left hundreds
/// of MiB resident. A few long-lived threads keep it to a few blocks, and queue the rest.
static HASHERS: LazyLock<std::sync::Mutex<std::sync::mpsc::Sender<Task>>> = LazyLock::new(|| {
    let (tx, rx) = std::sync::mpsc::channel::<Task>();
    let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    for i in 0..threads {
        let rx = rx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("argon2-{i}"))
            .spawn(move || {
                loop {
                    let task = match rx.lock() {
                        Ok(guard) => guard.recv(),
                        Err(_) => return,
                    };
                    match task {
                        Ok(task) => task(),
                        Err(_) => return,
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a password hashing thread");
        }
    }
    std::sync::Mutex::new(tx)
});

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let (done, result) = tokio::sync::oneshot::channel();
    let task: Task = Box::new(move || {
        let _ = done.send(f());
    });
    HASHERS
        .lock()
        .map_err(|_| Error::Internal("password hashing pool poisoned".into()))?
        .send(task)
        .map_err(|_| Error::Internal("password hashing pool stopped".into()))?;
    result
        .await
        .map_err(|_| Error::Internal("password hashing task lost".into()))
}

pub async fn hash(password: &Password) -> Result<String> {
    let raw = password.0.clone();
    blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        hasher()
            .hash_password(raw.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| Error::Internal(e.to_string().into()))
    })
    .await?
}

/// A hash of a random password, verified against when the account does not exist, so that a
/// wrong email costs as much time as a wrong password (no enumeration by timing).
static DUMMY_HASH: LazyLock<String> = LazyLock::new(|| {
    let salt = SaltString::generate(&mut OsRng);
    let random: [u8; 16] = rand::random();
    hasher()
        .hash_password(&random, &salt)
        .map(|h| h.to_string())
        .unwrap_or_default()
});

/// Verifies `raw` against `stored`, or against a dummy hash when there is no account.
pub async fn verify(raw: &str, stored: Option<&str>) -> Result<bool> {
    let raw = raw.to_owned();
    let stored = stored.map(str::to_owned);
    blocking(move || {
        let real = stored.is_some();
        let hash = stored.unwrap_or_else(|| DUMMY_HASH.clone());
        let ok = PasswordHash::new(&hash)
            .map(|parsed| hasher().verify_password(raw.as_bytes(), &parsed).is_ok())
            .unwrap_or(false);
        ok && real
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_is_length_and_common_passwords() {
        assert!(Password::parse("short", "a@x.io").is_err());
        assert!(Password::parse(&"x".repeat(129), "a@x.io").is_err());
        assert!(Password::parse("password1", "a@x.io").is_err(), "common");
        assert!(
            Password::parse("PASSWORD1", "a@x.io").is_err(),
            "common, any case"
        );
        assert!(
            Password::parse("grace-hopper-77", "grace@x.io").is_err(),
            "contains the email"
        );
        assert!(Password::parse("correct horse battery", "a@x.io").is_ok());
        assert!(
            Password::parse("ünïcödé-päss", "a@x.io").is_ok(),
            "no composition rules"
        );
    }

    #[tokio::test]
    async fn hashes_are_argon2id_with_owasp_parameters() {
        let pw = Password::parse("correct horse battery", "a@x.io").expect("valid");
        let h = hash(&pw).await.expect("hash");
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(
            verify("correct horse battery", Some(&h))
                .await
                .expect("verify")
        );
        assert!(
            !verify("wrong horse battery", Some(&h))
                .await
                .expect("verify")
        );
        assert!(!verify("correct horse battery", None).await.expect("verify"));
    }
}
