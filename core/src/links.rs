//! Every link Lectern puts in front of people (mail, notifications, certificates), in one place.
//!
//! Pages a person opens go to the web frontend (`FRONTEND_URL`, by default `PUBLIC_URL`); the
//! frontend serves them and calls the API with what the link carries. These shapes are the
//! contract with frontends, documented in the README ("Links in mail"). Links the API serves
//! itself (the one-click unsubscribe, signed media and PDF URLs) stay on `PUBLIC_URL`.

use uuid::Uuid;

use crate::config::Config;

fn frontend(config: &Config) -> &str {
    config.frontend_url.as_str().trim_end_matches('/')
}

fn api(config: &Config) -> &str {
    config.public_url.as_str().trim_end_matches('/')
}

/// The frontend's address, as shown in the footer of every mail.
pub fn home(config: &Config) -> String {
    frontend(config).to_owned()
}

/// `FRONTEND_URL/verify-email?token=…`: the page posts the token to
/// `POST /api/v1/auth/verify-email`.
pub fn verify_email(config: &Config, token: &str) -> String {
    format!("{}/verify-email?token={token}", frontend(config))
}

/// `FRONTEND_URL/reset-password?token=…`: the page asks for a new password and posts both to
/// `POST /api/v1/auth/password-reset/confirm`.
pub fn reset_password(config: &Config, token: &str) -> String {
    format!("{}/reset-password?token={token}", frontend(config))
}

/// `FRONTEND_URL/courses/{slug}`: a course's page (`GET /api/v1/courses/{slug}`).
pub fn course(config: &Config, slug: &str) -> String {
    format!("{}/courses/{slug}", frontend(config))
}

/// `FRONTEND_URL/courses`: the catalogue (`GET /api/v1/courses`).
pub fn catalogue(config: &Config) -> String {
    format!("{}/courses", frontend(config))
}

/// `FRONTEND_URL/instructor/courses/new`: where an instructor creates a course
/// (`POST /api/v1/courses`).
pub fn new_course(config: &Config) -> String {
    format!("{}/instructor/courses/new", frontend(config))
}

/// `FRONTEND_URL/notifications`: the caller's notifications (`GET /api/v1/notifications`).
pub fn notifications(config: &Config) -> String {
    format!("{}/notifications", frontend(config))
}

/// `FRONTEND_URL/certificates/{id}`: a certificate's public verification page
/// (`GET /api/v1/certificates/{id}`); also printed on the PDF and in its QR code.
pub fn certificate(config: &Config, id: Uuid) -> String {
    format!("{}/certificates/{id}", frontend(config))
}

/// `PUBLIC_URL/api/v1/unsubscribe?token=…`: served by the API itself, so a mail client's
/// RFC 8058 one-click POST (`List-Unsubscribe-Post`) needs no frontend.
pub fn unsubscribe(config: &Config, token: &str) -> String {
    format!("{}/api/v1/unsubscribe?token={token}", api(config))
}

/// `PUBLIC_URL/api/v1{path}`: a resource the API serves itself.
pub fn api_path(config: &Config, path: &str) -> String {
    format!("{}/api/v1{path}", api(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(frontend: &str) -> Config {
        let vars = [
            ("JWT_SECRET", "0123456789abcdef0123456789abcdef"),
            ("S3_ACCESS_KEY_ID", "test-local-key"),
            ("S3_SECRET_ACCESS_KEY", "test-local-secret-0123456789"),
            ("PUBLIC_URL", "https://api.example/"),
            ("FRONTEND_URL", frontend),
        ];
        Config::from_source(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
        .expect("valid")
    }

    #[test]
    fn people_go_to_the_frontend_and_mail_clients_to_the_api() {
        let c = config("https://app.example/learn/");
        let id = Uuid::nil();
        assert_eq!(
            verify_email(&c, "abc"),
            "https://app.example/learn/verify-email?token=abc"
        );
        assert_eq!(
            reset_password(&c, "abc"),
            "https://app.example/learn/reset-password?token=abc"
        );
        assert_eq!(course(&c, "rust"), "https://app.example/learn/courses/rust");
        assert_eq!(notifications(&c), "https://app.example/learn/notifications");
        assert_eq!(
            certificate(&c, id),
            format!("https://app.example/learn/certificates/{id}")
        );
        assert_eq!(
            unsubscribe(&c, "t"),
            "https://api.example/api/v1/unsubscribe?token=t"
        );
        assert_eq!(home(&c), "https://app.example/learn");
    }
}
