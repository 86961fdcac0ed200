//! Real-time events for users (new notifications, media processing progress), published on one
//! Redis pub/sub channel. Every API process subscribes and forwards each event to the WebSockets
//! of its user that it holds, so it does not matter which process a user is connected to.
//! Delivery is best-effort: what matters is stored (notifications), and a reconnecting client
//! fetches what it missed from `GET /notifications`.

use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Services;

pub fn channel(prefix: &str) -> String {
    format!("{prefix}-events")
}

/// One event for one user, as it travels through Redis.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    pub user_id: Uuid,
    pub event: serde_json::Value,
}

/// Publishes events; a Redis failure is logged, never raised (the caller's work is committed).
pub async fn publish(services: &Services, envelopes: &[Envelope]) {
    if envelopes.is_empty() {
        return;
    }
    let channel = channel(&services.config.queue_prefix);
    let mut pipe = redis::pipe();
    for e in envelopes {
        match serde_json::to_string(e) {
            Ok(json) => {
                pipe.publish(&channel, json).ignore();
            }
            Err(err) => tracing::warn!(error = %err, "event not serialisable"),
        }
    }
    let mut conn = services.redis.clone();
    if let Err(e) = pipe.query_async::<()>(&mut conn).await {
        tracing::warn!(error = %e, events = envelopes.len(), "could not publish real-time events");
    }
}

/// Subscribes to the events channel and hands each envelope to `deliver`, reconnecting after
/// Redis trouble. Runs until the process ends.
pub async fn subscribe<F>(redis_url: String, prefix: String, deliver: F)
where
    F: Fn(Envelope) + Send + Sync + 'static,
{
    let mut delay = Duration::from_millis(200);
    loop {
        let result: redis::RedisResult<()> = async {
            let client = redis::Client::open(redis_url.as_str())?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(channel(&prefix)).await?;
            delay = Duration::from_millis(200);
            let mut messages = pubsub.into_on_message();
            while let Some(msg) = messages.next().await {
                let payload: String = match msg.get_payload() {
                    Ok(p) => p,
                    Err(_) => continue,
                };
                match serde_json::from_str::<Envelope>(&payload) {
                    Ok(envelope) => deliver(envelope),
                    Err(e) => tracing::warn!(error = %e, "malformed event on the events channel"),
                }
            }
            Err(redis::RedisError::from(std::io::Error::other(
                "pub/sub connection closed",
            )))
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "events channel lost; reconnecting");
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
