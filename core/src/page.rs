//! Cursor pagination: `{items, next_cursor}`.
//!
//! A cursor carries a keyset position that goes straight into SQL (cast to the sort key's type,
//! compared with timestamps PostgreSQL must be able to store). Rather than re-validating every
//! field of every position type, cursors are signed: only positions this API gave out come back,
//! so a forged or edited cursor is a 422, never a database error.

use hmac::Mac;
use serde::Serialize;
use sha2::Sha256;

use crate::config::{ExposeSecret, Secret};

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `?cursor=` for the next page; `null` on the last one.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// The one page of a short list that is always answered whole (`next_cursor` is `null`).
    pub fn whole(items: Vec<T>) -> Self {
        Page {
            items,
            next_cursor: None,
        }
    }
}

/// `limit` clamped to 1..=100 (default 20).
pub fn limit(requested: Option<i64>) -> i64 {
    requested.unwrap_or(20).clamp(1, 100)
}

/// Bytes of the HMAC-SHA256 tag kept in a cursor: 128 bits is plenty against forgery and keeps
/// URLs short.
const TAG_LEN: usize = 16;

/// A MAC keyed by a key of its own derived from the JWT secret, so a cursor tag can never stand
/// in for any other signature made with that secret.
fn cursor_mac(secret: &Secret) -> Option<hmac::Hmac<Sha256>> {
    let mut derive =
        hmac::Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes()).ok()?;
    derive.update(b"lectern/page-cursor/v1");
    hmac::Hmac::<Sha256>::new_from_slice(&derive.finalize().into_bytes()).ok()
}

/// An opaque cursor: the keyset position of the last item as hex-encoded JSON, then `.` and its
/// signature.
pub fn encode_cursor<T: Serialize>(secret: &Secret, position: &T) -> String {
    let body = serde_json::to_vec(position).unwrap_or_default();
    let sig = cursor_mac(secret)
        .map(|mut mac| {
            mac.update(&body);
            mac.finalize().into_bytes()[..TAG_LEN].to_vec()
        })
        .unwrap_or_default();
    format!("{}.{}", hex::encode(&body), hex::encode(sig))
}

/// Reads back a cursor this API gave out; anything else (malformed, edited, signed with another
/// key) is a 422 on `cursor`.
pub fn decode_cursor<T: serde::de::DeserializeOwned>(
    secret: &Secret,
    cursor: &str,
) -> crate::Result<T> {
    let bad = || crate::Error::invalid("cursor", "is not a cursor this API gave out");
    let (body, sig) = cursor.split_once('.').ok_or_else(bad)?;
    let body = hex::decode(body).map_err(|_| bad())?;
    let sig = hex::decode(sig).map_err(|_| bad())?;
    if sig.len() != TAG_LEN {
        return Err(bad());
    }
    let mut mac = cursor_mac(secret).ok_or_else(bad)?;
    mac.update(&body);
    // Constant-time comparison of the truncated tag.
    mac.verify_truncated_left(&sig).map_err(|_| bad())?;
    serde_json::from_slice(&body).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_and_an_edited_one_is_refused() {
        let secret = Secret::from("a-secret-long-enough-for-the-tests-0123456789");
        let c = encode_cursor(&secret, &("abc", 7));
        let back: (String, i32) = decode_cursor(&secret, &c).expect("a cursor we made");
        assert_eq!(back, ("abc".to_owned(), 7));
        let (body, sig) = c.split_once('.').expect("a signed cursor");
        let forged = format!("{}.{sig}", hex::encode(br#"["x",7]"#));
        assert!(decode_cursor::<(String, i32)>(&secret, &forged).is_err());
        assert!(decode_cursor::<(String, i32)>(&secret, body).is_err());
        let other = Secret::from("another-secret-long-enough-for-the-tests-01234");
        assert!(decode_cursor::<(String, i32)>(&other, &c).is_err());
    }
}
