//! Cursor pagination: `{items, next_cursor}`.

use serde::Serialize;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `?cursor=` for the next page; `null` on the last one.
    pub next_cursor: Option<String>,
}

/// `limit` clamped to 1..=100 (default 20).
pub fn limit(requested: Option<i64>) -> i64 {
    requested.unwrap_or(20).clamp(1, 100)
}

/// An opaque cursor: the keyset position of the last item, as hex-encoded JSON.
pub fn encode_cursor<T: Serialize>(position: &T) -> String {
    hex::encode(serde_json::to_vec(position).unwrap_or_default())
}

/// Reads back a cursor this API gave out; anything else is a 422 on `cursor`.
pub fn decode_cursor<T: serde::de::DeserializeOwned>(cursor: &str) -> crate::Result<T> {
    hex::decode(cursor)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or_else(|| crate::Error::invalid("cursor", "is not a cursor this API gave out"))
}
