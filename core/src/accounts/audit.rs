//! The security audit log: what is recorded, and the admin's view of it.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{ClientInfo, Page};
use crate::Services;
use crate::auth::Principal;
use crate::error::{Error, Result};

/// Records a security event.
pub async fn audit(
    conn: &mut PgConnection,
    event: &str,
    user_id: Option<Uuid>,
    actor_id: Option<Uuid>,
    client: &ClientInfo,
    data: serde_json::Value,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_log (event, user_id, actor_id, ip, user_agent, data) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(event)
    .bind(user_id)
    .bind(actor_id)
    .bind(client.ip.as_deref())
    .bind(client.user_agent.as_deref().map(|ua| ua.chars().take(512).collect::<String>()))
    .bind(data)
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub event: String,
    pub user_id: Option<Uuid>,
    pub actor_id: Option<Uuid>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub data: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

/// The audit log, newest first, for admins. The cursor is the last id seen.
pub async fn audit_log(
    services: &Services,
    caller: &Principal,
    user_id: Option<Uuid>,
    limit: Option<i64>,
    cursor: Option<&str>,
) -> Result<Page<AuditEntry>> {
    caller.require_admin()?;
    let limit = crate::page::limit(limit);
    let before: Option<i64> = match cursor {
        Some(c) => Some(
            c.parse()
                .map_err(|_| Error::invalid("cursor", "is not a cursor this API gave out"))?,
        ),
        None => None,
    };
    let items: Vec<AuditEntry> = sqlx::query_as(
        "SELECT id, event, user_id, actor_id, ip, user_agent, data, created_at FROM audit_log
          WHERE ($1::uuid IS NULL OR user_id = $1) AND ($2::bigint IS NULL OR id < $2)
          ORDER BY id DESC LIMIT $3",
    )
    .bind(user_id)
    .bind(before)
    .bind(limit)
    .fetch_all(&services.db)
    .await?;
    let next_cursor = (items.len() as i64 == limit)
        .then(|| items.last().map(|e| e.id.to_string()))
        .flatten();
    Ok(Page { items, next_cursor })
}
