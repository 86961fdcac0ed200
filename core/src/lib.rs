//! Lectern's core: configuration, domain services, SQL, job payloads, and the storage and mail
//! clients. The API and the worker are thin shells around it.

pub mod accounts;
pub mod analytics;
pub mod auth;
pub mod config;
pub mod courses;
pub mod db;
pub mod email;
pub mod error;
pub mod events;
pub mod health;
pub mod idempotency;
pub mod jobs;
pub mod learning;
pub mod links;
pub mod mail;
pub mod media;
pub mod notifications;
pub mod page;
pub mod services;
pub mod storage;
pub mod telemetry;
pub mod text;

pub use error::{Error, Result};
pub use services::Services;
