//! Wake-ups: the API publishes on a queue's channel after each push; this listener turns those
//! messages into a stream per queue that wakes that queue's idle worker at once, instead of it
//! finding the job at its next poll.

use std::pin::Pin;
use std::time::Duration;

use super::{Queue, wake_channel};
use futures::{Stream, StreamExt};
use tokio::sync::watch;

pub type WakeStream = Pin<Box<dyn Stream<Item = ()> + Send + Sync>>;

/// One sender per queue; each queue worker turns a receiver into a stream.
pub struct Wakers {
    senders: Vec<(String, Queue, watch::Sender<u64>)>,
}

impl Wakers {
    pub fn new(prefix: &str) -> Self {
        Wakers {
            senders: Queue::ALL
                .into_iter()
                .map(|q| (wake_channel(prefix, q), q, watch::channel(0).0))
                .collect(),
        }
    }

    pub fn stream(&self, queue: Queue) -> WakeStream {
        let rx = self
            .senders
            .iter()
            .find(|(_, q, _)| *q == queue)
            .map(|(_, _, tx)| tx.subscribe());
        match rx {
            Some(rx) => Box::pin(futures::stream::unfold(rx, |mut rx| async move {
                rx.changed().await.ok()?;
                Some(((), rx))
            })),
            None => Box::pin(futures::stream::pending()),
        }
    }

    /// Subscribes to every queue's channel and forwards messages, reconnecting after Redis trouble.
    pub async fn listen(&self, redis_url: String) {
        let mut delay = Duration::from_millis(200);
        loop {
            match self.listen_once(&redis_url).await {
                Ok(()) => delay = Duration::from_millis(200),
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "wake-up channel lost; polling until it is back");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn listen_once(&self, redis_url: &str) -> redis::RedisResult<()> {
        let client = super::redis_client(redis_url)?;
        let mut pubsub = client.get_async_pubsub().await?;
        for (channel, _, _) in &self.senders {
            pubsub.subscribe(channel).await?;
        }
        let mut messages = pubsub.into_on_message();
        while let Some(msg) = messages.next().await {
            let channel = msg.get_channel_name();
            if let Some((_, _, tx)) = self.senders.iter().find(|(c, _, _)| c == channel) {
                tx.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
        Err(redis::RedisError::from(std::io::Error::other(
            "pub/sub connection closed",
        )))
    }
}
