//! Accounts and authentication settings: token lifetimes, rate limits, lockout, trusted proxies.

use std::time::Duration;

use super::network::{IpNet, parse_block};
use super::reader::Reader;
use super::{ExposeSecret, MIN_SECRET_LEN, Secret};

/// Accounts and authentication settings.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Earlier signing secrets, still accepted for tokens they signed (key rotation).
    pub previous_jwt_secrets: Vec<Secret>,
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// `RATE_LIMITS=off` disables every rate limit (behind a gateway that limits already).
    pub rate_limits: bool,
    /// Login attempts per client IP per minute.
    pub login_limit_per_ip: u32,
    /// Failed logins per account (email) per 15 minutes.
    pub login_limit_per_account: u32,
    /// Consecutive failed logins that lock an account, and for how long. The lock holds back
    /// clients that have been failing; a device that signed in before, or an address with no
    /// recent failures, still gets its password checked.
    pub lockout_threshold: i32,
    pub lockout_duration: Duration,
    /// Accounts created per client IP per hour.
    pub register_limit_per_ip: u32,
    /// Password-reset requests per client IP per hour (the account's own device counts apart).
    pub reset_limit_per_ip: u32,
    /// Password-reset mails per address per day, whoever asks: only against floods.
    pub reset_limit_per_address: u32,
    /// Password checks per account per 15 minutes (confirming an account deletion).
    pub password_check_limit: u32,
}

pub(super) fn read_auth<F: Fn(&str) -> Option<String>>(r: &mut Reader<F>) -> AuthConfig {
    let previous_jwt_secrets: Vec<Secret> = r
        .raw("JWT_PREVIOUS_SECRETS")
        .map(|raw| {
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(Secret::from)
                .collect()
        })
        .unwrap_or_default();
    if previous_jwt_secrets
        .iter()
        .any(|s| s.expose_secret().len() < MIN_SECRET_LEN)
    {
        r.problem(
            "JWT_PREVIOUS_SECRETS",
            format!("each secret must be at least {MIN_SECRET_LEN} characters"),
        );
    }
    let access_secs: u64 = r.parse("ACCESS_TOKEN_TTL_SECS", 900, "a number of seconds");
    if !(30..=3600).contains(&access_secs) {
        r.problem(
            "ACCESS_TOKEN_TTL_SECS",
            "must be between 30 and 3600 seconds (access tokens are short-lived)",
        );
    }
    let refresh_days: u64 = r.parse("REFRESH_TOKEN_TTL_DAYS", 30, "a number of days");
    let mut trusted_proxies = Vec::new();
    if let Some(raw) = r.raw("TRUSTED_PROXIES") {
        for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match parse_block(item) {
                Some(block) => trusted_proxies.push(block),
                None => r.problem(
                    "TRUSTED_PROXIES",
                    format!("{item:?} is not an IP address or CIDR block"),
                ),
            }
        }
    }
    let rate_limits = match r.string("RATE_LIMITS", "on").as_str() {
        "on" => true,
        "off" => false,
        other => {
            r.problem("RATE_LIMITS", format!("expected on or off, got {other:?}"));
            true
        }
    };
    AuthConfig {
        previous_jwt_secrets,
        access_token_ttl: Duration::from_secs(access_secs),
        refresh_token_ttl: Duration::from_secs(refresh_days * 24 * 3600),
        trusted_proxies,
        rate_limits,
        login_limit_per_ip: u32::try_from(r.positive("LOGIN_LIMIT_PER_IP", 30)).unwrap_or(30),
        login_limit_per_account: u32::try_from(r.positive("LOGIN_LIMIT_PER_ACCOUNT", 10))
            .unwrap_or(10),
        lockout_threshold: i32::try_from(r.positive("LOCKOUT_THRESHOLD", 5)).unwrap_or(5),
        lockout_duration: Duration::from_secs(r.parse(
            "LOCKOUT_SECS",
            900u64,
            "a number of seconds",
        )),
        register_limit_per_ip: u32::try_from(r.positive("REGISTER_LIMIT_PER_IP", 20)).unwrap_or(20),
        reset_limit_per_ip: u32::try_from(r.positive("RESET_LIMIT_PER_IP", 5)).unwrap_or(5),
        reset_limit_per_address: u32::try_from(r.positive("RESET_LIMIT_PER_ADDRESS", 20))
            .unwrap_or(20),
        password_check_limit: u32::try_from(r.positive("PASSWORD_CHECK_LIMIT", 5)).unwrap_or(5),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::any_contains;
    use crate::config::testing::*;

    #[test]
    fn trusted_proxies_are_cidr_blocks() {
        let config = load(&[
            ("JWT_SECRET", SECRET),
            ("TRUSTED_PROXIES", "10.0.0.0/8, ::1"),
        ])
        .expect("valid");
        let proxies = &config.auth.trusted_proxies;
        let holds = |i: usize, ip: &str| any_contains(&proxies[i..=i], ip.parse().expect("ip"));
        assert!(holds(0, "10.1.2.3"));
        assert!(!holds(0, "11.1.2.3"));
        assert!(holds(0, "::ffff:10.9.9.9"));
        assert!(holds(1, "::1"));
        assert!(!holds(1, "127.0.0.1"));
        let err =
            load(&[("JWT_SECRET", SECRET), ("TRUSTED_PROXIES", "10.0.0.0/33")]).expect_err("bad");
        assert!(err.problems.contains_key("TRUSTED_PROXIES"));
    }
}
