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
