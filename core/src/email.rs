//! Sending the product's mail: requests enqueue a `SendEmail` job; the worker renders and delivers it.

use crate::Services;
use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::jobs::{self, Job, JobError, JobReference, SendEmail};
use crate::mail::{self, EmailTemplate};
use serde_json::Map;

/// An email address, checked once at the boundary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailAddress(String);

impl EmailAddress {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let trimmed = raw.trim();
        if let Some(c) = crate::text::forbidden_char(trimmed) {
            return Err(crate::text::problem(c));
        }
        if trimmed.len() > 254 {
            return Err("must be at most 254 characters".into());
        }
        let address: lettre::Address = trimmed
            .parse()
            .map_err(|_| "is not a valid email address".to_owned())?;
        if !address.domain().contains('.') && address.domain() != "localhost" {
            return Err("must have a domain with a dot".into());
        }
        // The domain part is case-insensitive; the local part is kept as given.
        Ok(EmailAddress(format!(
            "{}@{}",
            address.user(),
            address.domain().to_ascii_lowercase()
        )))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Queues an operator's delivery test to `to`; the mail goes out from a worker.
pub async fn queue_test_message(
    services: &Services,
    to: &str,
    note: Option<&str>,
    caller: &Principal,
) -> Result<JobReference> {
    caller.require_admin()?;
    let to = EmailAddress::parse(to).map_err(|problem| Error::invalid("to", problem))?;
    if note.is_some_and(|n| n.chars().count() > 500) {
        return Err(Error::invalid("note", "must be at most 500 characters"));
    }
    let mut vars = Map::new();
    if let Some(note) = note {
        vars.insert("note".into(), note.into());
    }
    let job = Job::SendEmail(SendEmail {
        to: to.as_str().to_owned(),
        template: EmailTemplate::TestMessage,
        vars,
    });
    let mut tx = services.db.begin().await?;
    let queued = jobs::insert(&mut tx, &job, caller.user_id(), None).await?;
    tx.commit().await?;
    services.jobs.dispatch(&queued).await;
    Ok(queued.reference())
}

/// Whether the owner of `address` still wants optional mail: an active account with
/// `notify_email` on. An address no account has any more gets none.
async fn still_wanted(services: &Services, address: &str) -> Result<bool> {
    let wanted = sqlx::query_scalar!(
        r#"SELECT notify_email AND status = 'active' AS "wanted!" FROM users WHERE email = lower($1)"#,
        address,
    )
    .fetch_optional(&services.db)
    .await?;
    Ok(wanted.unwrap_or(false))
}

/// The `SendEmail` job: render the template and deliver it. Optional mail (announcements,
/// digests) is checked against the recipient's preference now, not only when it was queued:
/// throttled bulk mail can leave long after its recipient unsubscribed.
pub async fn deliver(services: &Services, job: &SendEmail) -> Result<(), JobError> {
    if job.template.is_optional() && !still_wanted(services, &job.to).await? {
        tracing::info!(
            template = job.template.name(),
            "recipient turned optional mail off since it was queued; not sent"
        );
        return Ok(());
    }
    let mut vars = job.vars.clone();
    vars.entry("sent_at").or_insert_with(|| {
        chrono::Utc::now()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            .into()
    });
    let rendered = mail::render(
        job.template,
        services.config.frontend_url.as_str(),
        services.config.public_url.as_str(),
        &vars,
    )
    .map_err(|e| JobError::Permanent(e.to_string()))?;
    services
        .mailer
        .send(
            &job.to,
            &rendered,
            vars.get("unsubscribe_url").and_then(|v| v.as_str()),
        )
        .await
        .map_err(|e| {
            if e.is_transient() {
                JobError::Retryable(e.to_string())
            } else {
                JobError::Permanent(e.to_string())
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_parsed_once() {
        assert_eq!(
            EmailAddress::parse(" Ada@Example.COM ").map(|a| a.0),
            Ok("Ada@example.com".to_owned())
        );
        assert!(EmailAddress::parse("no-at-sign").is_err());
        assert!(EmailAddress::parse("a@nodot").is_err());
        assert!(EmailAddress::parse(&format!("{}@example.com", "a".repeat(260))).is_err());
    }
}
