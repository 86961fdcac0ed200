//! Outgoing mail (`SMTP_URL` or `MAIL_DIR`, `MAIL_FROM`, `MAIL_BULK_PER_MINUTE`).

use std::path::PathBuf;

use super::Secret;
use super::reader::Reader;

#[derive(Debug, Clone)]
pub enum MailTransport {
    /// `smtp://host:port` (plain or STARTTLS when offered), `smtps://` (TLS), credentials in the URL.
    Smtp(Secret),
    /// Every message is written as an `.eml` file in this folder.
    Folder(PathBuf),
}

#[derive(Debug, Clone)]
pub struct MailConfig {
    pub transport: MailTransport,
    pub from: String,
    /// Bulk mail (follower announcements) is spread to at most this many messages a minute, so
    /// a provider does not throttle or block the sender. Transactional mail is not limited.
    pub bulk_per_minute: u32,
}

pub(super) fn read_mail<F: Fn(&str) -> Option<String>>(r: &mut Reader<F>) -> MailConfig {
    let transport = match r.raw("SMTP_URL") {
        Some(raw) => {
            r.url("SMTP_URL", &raw, &["smtp", "smtps"]);
            MailTransport::Smtp(Secret::from(raw))
        }
        None => MailTransport::Folder(PathBuf::from(r.string("MAIL_DIR", "./data/mail"))),
    };
    let from = r.string("MAIL_FROM", "Lectern <no-reply@lectern.localhost>");
    if from.parse::<lettre::message::Mailbox>().is_err() {
        r.problem("MAIL_FROM", format!("not a valid mailbox: {from:?}"));
    }
    let bulk_per_minute = r.parse(
        "MAIL_BULK_PER_MINUTE",
        600u32,
        "a number of messages per minute",
    );
    if bulk_per_minute == 0 {
        r.problem("MAIL_BULK_PER_MINUTE", "must be at least 1".to_owned());
    }
    MailConfig {
        transport,
        from,
        bulk_per_minute,
    }
}
