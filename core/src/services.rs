//! The handles every service needs, built once per process from the configuration.

use std::sync::Arc;

use redis::aio::ConnectionManager;
use sqlx::PgPool;

use crate::config::{Config, ExposeSecret};
use crate::jobs::{self, JobQueue};
use crate::learning::progress::Batcher;
use crate::mail::{MailError, Mailer};
use crate::storage::Storage;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("DATABASE_URL: {0}")]
    Database(#[from] sqlx::Error),
    #[error("REDIS_URL: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("mail: {0}")]
    Mail(#[from] MailError),
}

/// Cheap to clone; nothing here connects eagerly, so a process starts (and reports not ready)
/// while PostgreSQL, Redis or storage are down, and recovers when they return.
#[derive(Clone, Debug)]
pub struct Services {
    pub config: Arc<Config>,
    pub db: PgPool,
    pub redis: ConnectionManager,
    pub jobs: JobQueue,
    pub storage: Storage,
    pub mailer: Mailer,
    /// The fast path of the player's heartbeats, applied in batches.
    pub heartbeats: Batcher,
}

impl Services {
    /// Must run inside a Tokio runtime (the SMTP pool and the lazy connections spawn tasks).
    pub fn new(config: Config) -> Result<Self, StartError> {
        let db = crate::db::lazy_pool(&config)?;
        let redis = jobs::redis_connection(config.redis_url.expose_secret())?;
        let jobs = JobQueue::new(db.clone(), redis.clone(), &config.queue_prefix);
        let storage = Storage::new(&config.storage).with_cors(&config.cors_allowed_origins);
        let mailer = Mailer::new(&config.mail)?;
        let heartbeats = Batcher::start(db.clone());
        Ok(Services {
            config: Arc::new(config),
            db,
            redis,
            jobs,
            storage,
            mailer,
            heartbeats,
        })
    }
}
