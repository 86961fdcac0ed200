//! Mail: templates rendered with minijinja (HTML and plain text), delivered by lettre over SMTP
//! or, as the local default, written as `.eml` files into a folder.

use std::sync::LazyLock;

use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use minijinja::Environment;
use serde::{Deserialize, Serialize};

use crate::config::{ExposeSecret, MailConfig, MailTransport};

/// Every mail the product sends. Each has a subject, a plain-text and an HTML template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EmailTemplate {
    /// An operator's delivery check.
    TestMessage,
    /// The link that confirms a new account's address.
    VerifyEmail,
    /// The link that sets a new password.
    PasswordReset,
    /// The link to a user's data archive.
    DataExport,
    /// An instructor the user follows published a course (non-essential: has an unsubscribe link).
    CoursePublished,
    /// A student enrolled in a course.
    EnrollmentWelcome,
    /// A student completed a course: the certificate's link and code.
    CertificateIssued,
    /// A new account confirmed its address: what to do first.
    Welcome,
    /// A summary of the unread notifications since the last one (non-essential: has an
    /// unsubscribe link).
    NotificationDigest,
}

impl EmailTemplate {
    pub fn name(self) -> &'static str {
        match self {
            EmailTemplate::TestMessage => "test_message",
            EmailTemplate::VerifyEmail => "verify_email",
            EmailTemplate::PasswordReset => "password_reset",
            EmailTemplate::DataExport => "data_export",
            EmailTemplate::CoursePublished => "course_published",
            EmailTemplate::EnrollmentWelcome => "enrollment_welcome",
            EmailTemplate::CertificateIssued => "certificate_issued",
            EmailTemplate::Welcome => "welcome",
            EmailTemplate::NotificationDigest => "notification_digest",
        }
    }

    /// Mail the user may turn off (`notify_email`): it carries a `List-Unsubscribe` link and is
    /// checked against the preference again when it is sent, since throttled bulk mail can
    /// leave long after it was queued.
    pub fn is_optional(self) -> bool {
        matches!(
            self,
            EmailTemplate::CoursePublished | EmailTemplate::NotificationDigest
        )
    }
}

static TEMPLATES: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Lenient);
    macro_rules! template {
        ($name:literal) => {
            (
                $name,
                include_str!(concat!("../../templates/email/", $name)),
            )
        };
    }
    let sources: &[(&str, &str)] = &[
        template!("verify_email.subject.txt"),
        template!("verify_email.txt"),
        template!("verify_email.html"),
        template!("password_reset.subject.txt"),
        template!("password_reset.txt"),
        template!("password_reset.html"),
        template!("data_export.subject.txt"),
        template!("data_export.txt"),
        template!("data_export.html"),
        template!("course_published.subject.txt"),
        template!("course_published.txt"),
        template!("course_published.html"),
        template!("enrollment_welcome.subject.txt"),
        template!("enrollment_welcome.txt"),
        template!("enrollment_welcome.html"),
        template!("certificate_issued.subject.txt"),
        template!("certificate_issued.txt"),
        template!("certificate_issued.html"),
        template!("welcome.subject.txt"),
        template!("welcome.txt"),
        template!("welcome.html"),
        template!("notification_digest.subject.txt"),
        template!("notification_digest.txt"),
        template!("notification_digest.html"),
        (
            "layout.html",
            include_str!("../../templates/email/layout.html"),
        ),
        (
            "test_message.subject.txt",
            include_str!("../../templates/email/test_message.subject.txt"),
        ),
        (
            "test_message.txt",
            include_str!("../../templates/email/test_message.txt"),
        ),
        (
            "test_message.html",
            include_str!("../../templates/email/test_message.html"),
        ),
    ];
    for (name, source) in sources {
        if let Err(e) = env.add_template(name, source) {
            // Templates are compiled in; a broken one fails the unit tests below.
            tracing::error!(template = name, error = %e, "invalid mail template");
        }
    }
    env
});

#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("invalid recipient address {0:?}")]
    InvalidAddress(String),
    #[error("template {template} failed to render: {source}")]
    Render {
        template: &'static str,
        #[source]
        source: minijinja::Error,
    },
    #[error("could not build the message: {0}")]
    Build(String),
    /// 5xx from the server: the address or message is refused for good.
    #[error("mail server refused the message: {0}")]
    Rejected(String),
    /// 4xx, connection or timeout problems: worth retrying.
    #[error("mail server unavailable: {0}")]
    Unavailable(String),
    #[error("could not write the message file: {0}")]
    Folder(String),
}

impl MailError {
    pub fn is_transient(&self) -> bool {
        matches!(self, MailError::Unavailable(_) | MailError::Folder(_))
    }
}

/// Renders a template with the shared variables (`product_name`, `frontend_url` where people go,
/// `public_url` the API's own address) and the job's own.
pub fn render(
    template: EmailTemplate,
    frontend_url: &str,
    public_url: &str,
    vars: &serde_json::Map<String, serde_json::Value>,
) -> Result<Rendered, MailError> {
    let mut ctx = vars.clone();
    ctx.insert("product_name".into(), "Lectern".into());
    ctx.insert(
        "frontend_url".into(),
        frontend_url.trim_end_matches('/').into(),
    );
    ctx.insert("public_url".into(), public_url.trim_end_matches('/').into());
    let name = template.name();
    let render_one = |suffix: &str| -> Result<String, MailError> {
        TEMPLATES
            .get_template(&format!("{name}.{suffix}"))
            .and_then(|t| t.render(&ctx))
            .map_err(|source| MailError::Render {
                template: name,
                source,
            })
    };
    Ok(Rendered {
        subject: render_one("subject.txt")?.trim().to_owned(),
        text: render_one("txt")?,
        html: render_one("html")?,
    })
}

enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    Folder(AsyncFileTransport<Tokio1Executor>, std::path::PathBuf),
}

/// Sends rendered mail; cheap to clone (SMTP connections are pooled).
#[derive(Clone)]
pub struct Mailer {
    transport: std::sync::Arc<Transport>,
    from: Mailbox,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer")
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

impl Mailer {
    pub fn new(config: &MailConfig) -> Result<Self, MailError> {
        let from: Mailbox = config
            .from
            .parse()
            .map_err(|_| MailError::InvalidAddress(config.from.clone()))?;
        let transport = match &config.transport {
            MailTransport::Smtp(url) => Transport::Smtp(
                AsyncSmtpTransport::<Tokio1Executor>::from_url(url.expose_secret())
                    .map_err(|e| MailError::Build(format!("SMTP_URL: {e}")))?
                    .timeout(Some(std::time::Duration::from_secs(20)))
                    .build(),
            ),
            MailTransport::Folder(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| MailError::Folder(format!("{}: {e}", dir.display())))?;
                Transport::Folder(AsyncFileTransport::<Tokio1Executor>::new(dir), dir.clone())
            }
        };
        Ok(Mailer {
            transport: std::sync::Arc::new(transport),
            from,
        })
    }

    /// Builds and delivers one message with a plain-text and an HTML alternative.
    pub async fn send(
        &self,
        to: &str,
        rendered: &Rendered,
        list_unsubscribe: Option<&str>,
    ) -> Result<(), MailError> {
        let to: Mailbox = to
            .parse()
            .map_err(|_| MailError::InvalidAddress(to.to_owned()))?;
        let mut builder = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(rendered.subject.clone())
            .message_id(None);
        if let Some(url) = list_unsubscribe {
            // RFC 8058: mail clients unsubscribe with one POST to this URL, served by the API.
            builder = builder
                .header(ListUnsubscribe(format!("<{url}>")))
                .header(ListUnsubscribePost);
        }
        let message = builder
            .multipart(MultiPart::alternative_plain_html(
                rendered.text.clone(),
                rendered.html.clone(),
            ))
            .map_err(|e| MailError::Build(e.to_string()))?;
        match self.transport.as_ref() {
            Transport::Smtp(smtp) => smtp.send(message).await.map(|_| ()).map_err(|e| {
                if e.is_permanent() {
                    MailError::Rejected(e.to_string())
                } else {
                    MailError::Unavailable(e.to_string())
                }
            }),
            Transport::Folder(folder, dir) => folder
                .send(message)
                .await
                .map(|_| ())
                .map_err(|e| MailError::Folder(format!("{}: {e}", dir.display()))),
        }
    }

    /// Readiness of the SMTP server (a NOOP on a pooled connection); a folder is always ready.
    pub async fn ready(&self) -> Result<(), MailError> {
        match self.transport.as_ref() {
            Transport::Smtp(smtp) => match smtp.test_connection().await {
                Ok(true) => Ok(()),
                Ok(false) => Err(MailError::Unavailable("connection test failed".into())),
                Err(e) => Err(MailError::Unavailable(e.to_string())),
            },
            Transport::Folder(..) => Ok(()),
        }
    }
}

/// `List-Unsubscribe: <url>` (RFC 2369), for the mail a user can opt out of.
#[derive(Debug, Clone)]
struct ListUnsubscribe(String);

impl lettre::message::header::Header for ListUnsubscribe {
    fn name() -> lettre::message::header::HeaderName {
        lettre::message::header::HeaderName::new_from_ascii_str("List-Unsubscribe")
    }

    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(ListUnsubscribe(s.to_owned()))
    }

    fn display(&self) -> lettre::message::header::HeaderValue {
        lettre::message::header::HeaderValue::new(Self::name(), self.0.clone())
    }
}

/// `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058): the link takes a POST.
#[derive(Debug, Clone)]
struct ListUnsubscribePost;

impl lettre::message::header::Header for ListUnsubscribePost {
    fn name() -> lettre::message::header::HeaderName {
        lettre::message::header::HeaderName::new_from_ascii_str("List-Unsubscribe-Post")
    }

    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(ListUnsubscribePost)
    }

    fn display(&self) -> lettre::message::header::HeaderValue {
        lettre::message::header::HeaderValue::new(
            Self::name(),
            "List-Unsubscribe=One-Click".to_owned(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_message_renders_both_parts_and_escapes_html() {
        let mut vars = serde_json::Map::new();
        vars.insert("sent_at".into(), "2026-11-25T10:00:00Z".into());
        vars.insert("note".into(), "<script>alert(1)</script>".into());
        let r = render(
            EmailTemplate::TestMessage,
            "https://lectern.example/",
            "https://api.lectern.example/",
            &vars,
        )
        .expect("renders");
        assert_eq!(r.subject, "Lectern mail delivery test");
        assert!(r.text.contains("sent at 2026-11-25T10:00:00Z"));
        assert!(r.text.contains("<script>"), "plain text is not escaped");
        assert!(
            r.html.contains("&lt;script&gt;"),
            "HTML is escaped: {}",
            r.html
        );
        assert!(r.html.contains("lectern.example"));
        assert!(!r.html.contains("<script>"));
    }

    #[test]
    fn a_digest_lists_its_items_counts_the_rest_and_links_the_unsubscribe() {
        let vars = serde_json::json!({
            "full_name": "Ada",
            "total": 7,
            "since": "November 24, 2026",
            "items": [
                {"title": "New student in Rust", "message": "Bob enrolled <b>today</b>"},
                {"title": "New course by Grace", "message": "COBOL is now available"},
            ],
            "link": "https://lectern.example/notifications",
            "unsubscribe_url": "https://lectern.example/api/v1/unsubscribe?token=abc",
        });
        let serde_json::Value::Object(vars) = vars else {
            panic!("an object")
        };
        let r = render(
            EmailTemplate::NotificationDigest,
            "https://lectern.example",
            "https://api.lectern.example",
            &vars,
        )
        .expect("renders");
        assert_eq!(r.subject, "7 new notifications on Lectern");
        for part in [&r.text, &r.html] {
            assert!(part.contains("New student in Rust"), "{part}");
            assert!(part.contains("COBOL is now available"), "{part}");
            assert!(part.contains("5 more"), "{part}");
            assert!(part.contains("unsubscribe?token=abc"), "{part}");
        }
        assert!(r.html.contains("&lt;b&gt;today"), "{}", r.html);
        assert!(EmailTemplate::NotificationDigest.is_optional());
        assert!(!EmailTemplate::Welcome.is_optional());
    }

    #[test]
    fn the_welcome_speaks_to_students_and_instructors() {
        let mut vars = serde_json::Map::new();
        vars.insert("full_name".into(), "Ada".into());
        vars.insert("link".into(), "https://lectern.example/courses".into());
        vars.insert("role".into(), "student".into());
        let student = render(
            EmailTemplate::Welcome,
            "https://lectern.example",
            "https://api.lectern.example",
            &vars,
        )
        .expect("renders");
        assert_eq!(student.subject, "Welcome to Lectern, Ada");
        assert!(student.text.contains("catalogue"));
        vars.insert("role".into(), "instructor".into());
        let teacher = render(
            EmailTemplate::Welcome,
            "https://lectern.example",
            "https://api.lectern.example",
            &vars,
        )
        .expect("renders");
        assert!(teacher.html.contains("Create a course"));
        assert!(!teacher.text.contains("catalogue"));
    }
}
