//! `Idempotency-Key` on creating requests, after the IETF httpapi draft "The Idempotency-Key HTTP
//! Header Field" (draft-ietf-httpapi-idempotency-key-header).
//!
//! A caller sends a key of its choosing with a creating `POST`. The first request with that key
//! [`reserve`]s it (a row in `idempotency_keys`, per caller and key), runs, and [`complete`]s it
//! with its response; for 24 hours the same key with the same request (method, path and body,
//! fingerprinted with SHA-256) replays that response instead of acting again. The same key with
//! another request is refused (422 `idempotency_key_reused`). A request that comes while the
//! first still runs waits for it (up to [`WAIT`]) and replays its answer, or gets 409
//! `idempotency_key_in_flight`. Only successful responses are kept: an error had no effect, so
//! the key is [`release`]d and a retry runs again.

use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::Services;
use crate::auth::Principal;
use crate::error::{Error, Result};

/// How long a completed response is replayed.
pub const RETENTION: Duration = Duration::from_secs(24 * 3600);
/// The longest key accepted, in characters.
pub const MAX_KEY_LEN: usize = 255;
/// How long a second request with a key in use waits for the first before answering 409.
pub const WAIT: Duration = Duration::from_secs(10);
/// How long a claim holds a key without completing: after it the request's process is taken to
/// have died, and a retry takes the key over.
pub const LEASE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(50);

/// A key as the client sent it: an RFC 8941 sf-string (`"..."`) as the draft defines it, or the
/// same characters unquoted, which many clients send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key(String);

impl Key {
    pub fn parse(raw: &[u8]) -> Result<Key> {
        let invalid = |problem: &str| Error::invalid("Idempotency-Key", problem);
        let raw = std::str::from_utf8(raw)
            .map_err(|_| invalid("must be printable ASCII"))?
            .trim();
        let value = match raw.strip_prefix('"') {
            Some(rest) => {
                let inner = rest
                    .strip_suffix('"')
                    .ok_or_else(|| invalid("is a quoted string without its closing quote"))?;
                let mut out = String::with_capacity(inner.len());
                let mut chars = inner.chars();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => match chars.next() {
                            Some(e @ ('"' | '\\')) => out.push(e),
                            _ => return Err(invalid("has an invalid escape")),
                        },
                        '"' => return Err(invalid("has an unescaped quote")),
                        c => out.push(c),
                    }
                }
                out
            }
            None => raw.to_owned(),
        };
        if value.is_empty() || value.len() > MAX_KEY_LEN {
            return Err(invalid(&format!("must be 1 to {MAX_KEY_LEN} characters")));
        }
        if !value.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
            return Err(invalid("must be printable ASCII"));
        }
        Ok(Key(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whose keys these are: a user's, or the operator's.
fn owner(caller: &Principal) -> String {
    match caller {
        Principal::Operator => "operator".to_owned(),
        Principal::User(u) => format!("user:{}", u.id),
    }
}

/// What identifies a request: its method, path (with query) and body.
pub fn fingerprint(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(method.as_bytes());
    h.update([0]);
    h.update(path.as_bytes());
    h.update([0]);
    h.update(Sha256::digest(body));
    h.finalize().to_vec()
}

/// A response as kept for replay: its status, the headers that matter, and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The right to run the request that holds a key, until [`complete`] or [`release`].
#[derive(Debug, Clone)]
pub struct Claim {
    owner: String,
    key: String,
    claim: Uuid,
}

#[derive(Debug)]
pub enum Reservation {
    /// The key is this request's: run it, then complete or release the claim.
    Proceed(Claim),
    /// The key answered this request before: send this again.
    Replay(StoredResponse),
}

struct Existing {
    fingerprint: Vec<u8>,
    status: Option<i16>,
    headers: Option<sqlx::types::Json<Vec<(String, String)>>>,
    body: Option<Vec<u8>>,
}

/// Takes the key for this request, or finds the response to replay. A key in use by a request
/// still running is waited for (up to [`WAIT`]); one used with another request is refused.
pub async fn reserve(
    services: &Services,
    caller: &Principal,
    key: &Key,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<Reservation> {
    let owner = owner(caller);
    let print = fingerprint(method, path, body);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let claim = Uuid::new_v4();
        // A row past its retention, or whose request died holding it, is taken over.
        let taken = sqlx::query_scalar!(
            "INSERT INTO idempotency_keys (owner, idem_key, fingerprint, method, path, claim, locked_until)
             VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7::float8))
             ON CONFLICT (owner, idem_key) DO UPDATE
                SET fingerprint = EXCLUDED.fingerprint, method = EXCLUDED.method, path = EXCLUDED.path,
                    claim = EXCLUDED.claim, locked_until = EXCLUDED.locked_until, status = NULL,
                    headers = NULL, body = NULL, created_at = now(), completed_at = NULL
              WHERE idempotency_keys.created_at < now() - make_interval(secs => $8::float8)
                 OR (idempotency_keys.status IS NULL AND idempotency_keys.locked_until < now())
             RETURNING claim",
            owner,
            key.as_str(),
            print,
            method,
            path,
            claim,
            LEASE.as_secs_f64(),
            RETENTION.as_secs_f64(),
        )
        .fetch_optional(&services.db)
        .await?;
        if taken.is_some() {
            return Ok(Reservation::Proceed(Claim {
                owner,
                key: key.as_str().to_owned(),
                claim,
            }));
        }
        let existing = sqlx::query_as!(
            Existing,
            r#"SELECT fingerprint, status, headers AS "headers: sqlx::types::Json<Vec<(String, String)>>", body
                 FROM idempotency_keys WHERE owner = $1 AND idem_key = $2"#,
            owner,
            key.as_str(),
        )
        .fetch_optional(&services.db)
        .await?;
        // Released between the two statements: try to take it again.
        let Some(existing) = existing else { continue };
        if existing.fingerprint != print {
            return Err(Error::Unprocessable {
                code: "idempotency_key_reused",
                message: "this Idempotency-Key was used with another request (method, path or \
                          body); use a new key for a new request"
                    .into(),
            });
        }
        if let Some(status) = existing.status {
            return Ok(Reservation::Replay(StoredResponse {
                status: u16::try_from(status).unwrap_or(200),
                headers: existing.headers.map(|h| h.0).unwrap_or_default(),
                body: existing.body.unwrap_or_default(),
            }));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Conflict {
                code: "idempotency_key_in_flight",
                message: "a request with this Idempotency-Key is still being processed; \
                          retry later to get its response"
                    .into(),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Keeps the response of the request that holds the claim, for replay.
pub async fn complete(db: &PgPool, claim: &Claim, response: &StoredResponse) -> Result<()> {
    sqlx::query!(
        "UPDATE idempotency_keys SET status = $4, headers = $5, body = $6, completed_at = now()
          WHERE owner = $1 AND idem_key = $2 AND claim = $3",
        claim.owner,
        claim.key,
        claim.claim,
        i16::try_from(response.status).unwrap_or(200),
        sqlx::types::Json(&response.headers) as _,
        response.body,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Gives the key up (the request failed and had no effect): the next request with it runs.
pub async fn release(db: &PgPool, claim: &Claim) -> Result<()> {
    sqlx::query!(
        "DELETE FROM idempotency_keys WHERE owner = $1 AND idem_key = $2 AND claim = $3 AND status IS NULL",
        claim.owner,
        claim.key,
        claim.claim,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Removes keys past their retention, a batch at a time. Returns how many.
pub async fn sweep_expired(services: &Services) -> Result<u64> {
    let done = sqlx::query!(
        "DELETE FROM idempotency_keys WHERE (owner, idem_key) IN (
             SELECT owner, idem_key FROM idempotency_keys
              WHERE created_at < now() - make_interval(secs => $1::float8)
              ORDER BY created_at LIMIT 1000 FOR UPDATE SKIP LOCKED)",
        RETENTION.as_secs_f64(),
    )
    .execute(&services.db)
    .await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_sf_strings_or_bare_and_bounded() {
        assert_eq!(
            Key::parse(b"abc-123").map(|k| k.0).ok(),
            Some("abc-123".into())
        );
        assert_eq!(
            Key::parse(br#""8e03978e-40d5-43e8""#).map(|k| k.0).ok(),
            Some("8e03978e-40d5-43e8".into())
        );
        assert_eq!(
            Key::parse(br#""a \"b\" \\c""#).map(|k| k.0).ok(),
            Some(r#"a "b" \c"#.into())
        );
        assert!(Key::parse(&[b'k'; 255]).is_ok());
        for bad in [
            &b""[..],
            b"\"\"",
            b"\"open",
            b"\"bad \\n escape\"",
            b"caf\xc3\xa9",
            b"tab\there",
            &[b'k'; 256],
        ] {
            assert!(
                Key::parse(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn the_fingerprint_covers_method_path_and_body() {
        let a = fingerprint("POST", "/api/v1/courses", b"{}");
        assert_eq!(a, fingerprint("POST", "/api/v1/courses", b"{}"));
        assert_ne!(a, fingerprint("POST", "/api/v1/courses", b"{ }"));
        assert_ne!(a, fingerprint("POST", "/api/v1/courses/x", b"{}"));
        assert_ne!(a, fingerprint("PUT", "/api/v1/courses", b"{}"));
    }
}
