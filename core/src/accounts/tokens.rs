//! Access tokens (short-lived JWTs, HS256, with a `kid` so the signing secret can rotate) and
//! opaque one-time or refresh tokens (random, stored only as SHA-256 hashes).

use std::time::Duration;

use chrono::Utc;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::auth::Role;
use crate::config::{Config, ExposeSecret, Secret};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: Uuid,
    pub role: Role,
    /// The session the token belongs to.
    pub sid: Uuid,
    pub iat: i64,
    pub exp: i64,
    pub jti: Uuid,
    pub iss: String,
}

const ISSUER: &str = "lectern";

/// A key id derived from the secret, so tokens say which key signed them without revealing it.
fn kid(secret: &Secret) -> String {
    hex::encode(&Sha256::digest(secret.expose_secret().as_bytes())[..8])
}

pub fn issue_access(
    config: &Config,
    user: Uuid,
    role: Role,
    session: Uuid,
) -> Result<(String, u64)> {
    let ttl = config.auth.access_token_ttl;
    let now = Utc::now().timestamp();
    let claims = Claims {
        sub: user,
        role,
        sid: session,
        iat: now,
        exp: now + i64::try_from(ttl.as_secs()).unwrap_or(900),
        jti: Uuid::new_v4(),
        iss: ISSUER.into(),
    };
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(kid(&config.jwt_secret));
    let token = jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_secret(config.jwt_secret.expose_secret().as_bytes()),
    )
    .map_err(|e| Error::Internal(Box::new(e)))?;
    Ok((token, ttl.as_secs()))
}

fn invalid(message: &str) -> Error {
    Error::Unauthenticated {
        code: "invalid_token",
        message: message.into(),
    }
}

/// Checks signature (current or a previous key, chosen by `kid`), algorithm, issuer and expiry.
pub fn verify_access(config: &Config, token: &str) -> Result<Claims> {
    let header =
        jsonwebtoken::decode_header(token).map_err(|_| invalid("the access token is malformed"))?;
    if header.alg != Algorithm::HS256 {
        return Err(invalid("the access token uses an unsupported algorithm"));
    }
    let wanted = header
        .kid
        .ok_or_else(|| invalid("the access token has no key id"))?;
    let secret = std::iter::once(&config.jwt_secret)
        .chain(config.auth.previous_jwt_secrets.iter())
        .find(|s| kid(s) == wanted)
        .ok_or_else(|| invalid("the access token was signed with an unknown key"))?;
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 5;
    validation.set_issuer(&[ISSUER]);
    validation.set_required_spec_claims(&["exp", "iat", "sub", "iss"]);
    jsonwebtoken::decode::<Claims>(
        token,
        &DecodingKey::from_secret(secret.expose_secret().as_bytes()),
        &validation,
    )
    .map(|data| data.claims)
    .map_err(|e| match e.kind() {
        jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
            invalid("the access token has expired")
        }
        _ => invalid("the access token is invalid"),
    })
}

/// A random token for the client; only its hash is stored.
pub fn opaque() -> (String, Vec<u8>) {
    let bytes: [u8; 32] = rand::random();
    let token = hex::encode(bytes);
    let hash = digest(&token);
    (token, hash)
}

pub fn digest(token: &str) -> Vec<u8> {
    Sha256::digest(token.trim().as_bytes()).to_vec()
}

pub fn expires_at(ttl: Duration) -> chrono::DateTime<Utc> {
    Utc::now() + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::days(30))
}
/// A link token that names one user for one purpose (`unsubscribe`), signed with HMAC-SHA256 so
/// it needs no table and cannot be forged; it stays valid while the signing secret (current or
/// previous) does.
pub fn signed_id(config: &Config, purpose: &str, id: Uuid) -> String {
    format!("{id}.{}", hex::encode(mac(&config.jwt_secret, purpose, id)))
}

/// The user a [`signed_id`] token names, if its signature holds.
pub fn verify_signed_id(config: &Config, purpose: &str, token: &str) -> Option<Uuid> {
    let (id, sig) = token.split_once('.')?;
    let id = Uuid::parse_str(id).ok()?;
    let sig = hex::decode(sig).ok()?;
    std::iter::once(&config.jwt_secret)
        .chain(config.auth.previous_jwt_secrets.iter())
        .any(|secret| {
            let expected = mac(secret, purpose, id);
            same_bytes(&expected, &sig)
        })
        .then_some(id)
}

fn mac(secret: &Secret, purpose: &str, id: Uuid) -> Vec<u8> {
    use hmac::Mac;
    let Ok(mut mac) = hmac::Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes())
    else {
        return Vec::new();
    };
    mac.update(purpose.as_bytes());
    mac.update(b":");
    mac.update(id.as_bytes());
    mac.finalize().into_bytes()[..16].to_vec()
}

/// HMAC-SHA256 of `purpose` and `parts` (each length-prefixed, so parts cannot run together).
fn mac_parts(secret: &Secret, purpose: &str, parts: &[&[u8]]) -> Vec<u8> {
    use hmac::Mac;
    let Ok(mut mac) = hmac::Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes())
    else {
        return Vec::new();
    };
    mac.update(purpose.as_bytes());
    for part in parts {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

/// Compares in constant time (a length mismatch answers at once: lengths are not secret).
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// The secret of the one-time token whose row is `token_id`, derived from the signing secret.
/// Mail jobs carry only the row id; the worker derives the token when it renders the mail, so
/// the token is in no stored payload, and every retry of the job mails the same working link.
pub fn one_time_secret(config: &Config, token_id: Uuid) -> String {
    hex::encode(mac_parts(
        &config.jwt_secret,
        "one-time-token",
        &[token_id.as_bytes()],
    ))
}

/// A device cookie (OWASP's "device cookies"): proof that this client signed in to the account
/// before. It names the account and a random device id, signed so it cannot be forged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Device {
    pub user_id: Uuid,
    pub device_id: Uuid,
}

impl Device {
    /// A new device for `user_id`, and the cookie value that names it.
    pub fn issue(config: &Config, user_id: Uuid) -> (Device, String) {
        let device = Device {
            user_id,
            device_id: Uuid::new_v4(),
        };
        let mac = mac_parts(
            &config.jwt_secret,
            "device",
            &[user_id.as_bytes(), device.device_id.as_bytes()],
        );
        let value = format!("{user_id}.{}.{}", device.device_id, hex::encode(mac));
        (device, value)
    }

    /// The device a cookie value names, if its signature holds (current or previous secret).
    pub fn verify(config: &Config, value: &str) -> Option<Device> {
        let mut parts = value.trim().splitn(3, '.');
        let user_id = Uuid::parse_str(parts.next()?).ok()?;
        let device_id = Uuid::parse_str(parts.next()?).ok()?;
        let sig = hex::decode(parts.next()?).ok()?;
        std::iter::once(&config.jwt_secret)
            .chain(config.auth.previous_jwt_secrets.iter())
            .any(|secret| {
                let expected = mac_parts(
                    secret,
                    "device",
                    &[user_id.as_bytes(), device_id.as_bytes()],
                );
                same_bytes(&expected, &sig)
            })
            .then_some(Device { user_id, device_id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(secret: &str, previous: &str) -> Config {
        let vars = [
            ("JWT_SECRET", secret),
            ("JWT_PREVIOUS_SECRETS", previous),
            ("S3_ACCESS_KEY_ID", "unit-test-key"),
            ("S3_SECRET_ACCESS_KEY", "unit-test-secret-0123456789"),
        ];
        Config::from_source(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
        .expect("valid config")
    }

    const A: &str = "first-secret-0123456789abcdef0123456789abcdef";
    const B: &str = "second-secret-0123456789abcdef0123456789abcde";

    #[test]
    fn a_one_time_token_is_the_same_on_every_retry_and_secret_to_others() {
        let id = Uuid::now_v7();
        let a = config(A, "");
        let token = one_time_secret(&a, id);
        assert_eq!(token.len(), 64);
        assert_eq!(
            token,
            one_time_secret(&a, id),
            "a retry mails the same link"
        );
        assert_ne!(token, one_time_secret(&a, Uuid::now_v7()));
        assert_ne!(
            token,
            one_time_secret(&config(B, ""), id),
            "keyed by the secret"
        );
    }

    #[test]
    fn device_cookies_cannot_be_forged_and_survive_a_key_rotation() {
        let a = config(A, "");
        let user = Uuid::now_v7();
        let (device, value) = Device::issue(&a, user);
        assert_eq!(Device::verify(&a, &value), Some(device));
        assert_eq!(device.user_id, user);
        // Another user's id with the same signature, a changed signature, garbage: refused.
        let other = value.replacen(&user.to_string(), &Uuid::now_v7().to_string(), 1);
        assert_eq!(Device::verify(&a, &other), None);
        let mut tampered = value.clone();
        tampered.pop();
        tampered.push('0');
        if tampered != value {
            assert_eq!(Device::verify(&a, &tampered), None);
        }
        assert_eq!(Device::verify(&a, "not.a.cookie"), None);
        assert_eq!(Device::verify(&config(B, ""), &value), None);
        assert_eq!(Device::verify(&config(B, A), &value), Some(device));
    }
}
