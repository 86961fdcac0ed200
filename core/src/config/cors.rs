//! The browser origins allowed to call Lectern (`CORS_ALLOWED_ORIGINS`).

use std::fmt;
use std::str::FromStr;

use url::Url;

use super::reader::Reader;

/// One entry of `CORS_ALLOWED_ORIGINS`: an exact origin (`https://app.example.com`) or an origin
/// on any port (`http://localhost:*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPattern {
    /// `scheme://host[:port]`, as a browser writes it in `Origin` (lowercase, default port left out).
    Exact(String),
    /// `scheme://host` on any port, the default one included.
    AnyPort(String),
}

impl OriginPattern {
    pub fn matches(&self, origin: &str) -> bool {
        match self {
            OriginPattern::Exact(exact) => origin.eq_ignore_ascii_case(exact),
            OriginPattern::AnyPort(base) => {
                origin.len() >= base.len()
                    && origin.is_char_boundary(base.len())
                    && origin[..base.len()].eq_ignore_ascii_case(base)
                    && match origin[base.len()..].strip_prefix(':') {
                        None => origin.len() == base.len(),
                        Some(port) => {
                            !port.is_empty()
                                && port.len() <= 5
                                && port.bytes().all(|b| b.is_ascii_digit())
                        }
                    }
            }
        }
    }

    /// The entry as a storage bucket's CORS rule writes it (S3 allows one `*` in an origin).
    pub fn as_rule(&self) -> String {
        match self {
            OriginPattern::Exact(exact) => exact.clone(),
            OriginPattern::AnyPort(base) => format!("{base}:*"),
        }
    }
}

impl fmt::Display for OriginPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_rule())
    }
}

impl FromStr for OriginPattern {
    type Err = String;

    fn from_str(item: &str) -> Result<Self, String> {
        if item == "*" || item == "null" {
            return Err(format!(
                "{item:?} is not accepted: list the origins that may call Lectern"
            ));
        }
        let (raw, any_port) = match item.strip_suffix(":*") {
            Some(base) => (base, true),
            None => (item, false),
        };
        let url = Url::parse(raw).map_err(|e| format!("{item:?} is not an origin: {e}"))?;
        let plain = matches!(url.scheme(), "http" | "https")
            && url.host_str().is_some_and(|h| !h.contains('*'))
            && url.username().is_empty()
            && url.password().is_none()
            && url.path() == "/"
            && url.query().is_none()
            && url.fragment().is_none();
        if !plain || (any_port && url.port().is_some()) {
            return Err(format!(
                "{item:?} is not an origin: expected scheme://host[:port] or scheme://host:* \
                 (http or https, no path)"
            ));
        }
        let origin = url.origin().ascii_serialization();
        Ok(if any_port {
            OriginPattern::AnyPort(origin)
        } else {
            OriginPattern::Exact(origin)
        })
    }
}

/// The browser origins allowed to call the API and to use the storage URLs it signs (CORS).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedOrigins(Vec<OriginPattern>);

impl AllowedOrigins {
    pub fn new(patterns: Vec<OriginPattern>) -> Self {
        AllowedOrigins(patterns)
    }

    /// The loopback origins on any port: local mode's development frontends.
    pub fn loopback() -> Vec<OriginPattern> {
        vec![
            OriginPattern::AnyPort("http://localhost".into()),
            OriginPattern::AnyPort("http://127.0.0.1".into()),
        ]
    }

    /// Whether a request's `Origin` header value is allowed.
    pub fn allows(&self, origin: &str) -> bool {
        self.0.iter().any(|p| p.matches(origin))
    }

    pub fn patterns(&self) -> &[OriginPattern] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `CORS_ALLOWED_ORIGINS`: comma-separated origins (`https://app.example.com`, `http://localhost:*`
/// for any port), or `none`. Unset: the `FRONTEND_URL` origin, plus the loopback origins on any
/// port in local mode (`STORAGE_BACKEND=local`).
pub(super) fn read_cors<F: Fn(&str) -> Option<String>>(
    r: &mut Reader<F>,
    frontend_url: Option<&Url>,
    local: bool,
) -> AllowedOrigins {
    const NAME: &str = "CORS_ALLOWED_ORIGINS";
    let Some(raw) = r.raw(NAME) else {
        let mut patterns: Vec<OriginPattern> = frontend_url
            .map(|url| OriginPattern::Exact(url.origin().ascii_serialization()))
            .into_iter()
            .collect();
        if local {
            patterns.extend(AllowedOrigins::loopback());
        }
        return AllowedOrigins::new(patterns);
    };
    if raw.eq_ignore_ascii_case("none") {
        return AllowedOrigins::default();
    }
    let mut patterns = Vec::new();
    for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match item.parse::<OriginPattern>() {
            Ok(pattern) if !patterns.contains(&pattern) => patterns.push(pattern),
            Ok(_) => {}
            Err(problem) => {
                r.problem(NAME, problem);
                break;
            }
        }
    }
    AllowedOrigins::new(patterns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::*;

    #[test]
    fn cors_defaults_to_the_frontend_and_loopback_in_local_mode() {
        let config = load(&[
            ("JWT_SECRET", SECRET),
            ("PUBLIC_URL", "https://api.example.com/"),
            ("FRONTEND_URL", "https://www.example.com/app"),
        ])
        .expect("valid");
        assert_eq!(config.frontend_url.as_str(), "https://www.example.com/app");
        let cors = &config.cors_allowed_origins;
        assert!(cors.allows("https://www.example.com"));
        assert!(cors.allows("http://localhost:5173"));
        assert!(cors.allows("http://127.0.0.1:3000"));
        assert!(cors.allows("http://localhost"));
        assert!(!cors.allows("https://api.example.com"), "not the frontend");
        assert!(!cors.allows("http://www.example.com"), "scheme differs");
        assert!(!cors.allows("https://www.example.com.evil.test"));
        assert!(!cors.allows("http://localhost.evil.test:80"));
        assert!(!cors.allows("http://localhost:80x"));
        assert!(!cors.allows("null"));

        // FRONTEND_URL defaults to PUBLIC_URL; outside local mode loopback is not allowed.
        let config = load(&[
            ("JWT_SECRET", SECRET),
            ("PUBLIC_URL", "https://api.example.com"),
            ("STORAGE_BACKEND", "s3"),
            ("S3_ACCESS_KEY_ID", "k"),
            ("S3_SECRET_ACCESS_KEY", "s"),
        ])
        .expect("valid");
        assert_eq!(config.frontend_url.as_str(), "https://api.example.com/");
        let cors = &config.cors_allowed_origins;
        assert!(cors.allows("https://api.example.com"));
        assert!(!cors.allows("http://localhost:5173"));
    }

    #[test]
    fn cors_origins_are_exact_origins_or_any_port() {
        let config = load(&[
            ("JWT_SECRET", SECRET),
            (
                "CORS_ALLOWED_ORIGINS",
                " https://App.Example.com:443/ , http://10.0.0.5:*,http://[::1]:8080",
            ),
        ])
        .expect("valid");
        let cors = &config.cors_allowed_origins;
        assert!(cors.allows("https://app.example.com"));
        assert!(!cors.allows("https://app.example.com:8443"));
        assert!(cors.allows("http://10.0.0.5:1234"));
        assert!(cors.allows("http://[::1]:8080"));
        assert!(
            !cors.allows("http://localhost:5173"),
            "the list replaces the default"
        );
        let rules: Vec<String> = cors.patterns().iter().map(OriginPattern::as_rule).collect();
        assert_eq!(
            rules,
            [
                "https://app.example.com",
                "http://10.0.0.5:*",
                "http://[::1]:8080"
            ]
        );

        let none =
            load(&[("JWT_SECRET", SECRET), ("CORS_ALLOWED_ORIGINS", "none")]).expect("valid");
        assert!(none.cors_allowed_origins.is_empty());

        for bad in [
            "*",
            "null",
            "app.example.com",
            "https://app.example.com/path",
            "https://app.example.com?x=1",
            "ftp://files.example.com",
            "https://user@app.example.com",
            "https://app.example.com:8443:*",
            "https://ok.example.com, https://*.example.com",
        ] {
            let err =
                load(&[("JWT_SECRET", SECRET), ("CORS_ALLOWED_ORIGINS", bad)]).expect_err(bad);
            assert!(
                err.problems.contains_key("CORS_ALLOWED_ORIGINS"),
                "{bad}: {err}"
            );
        }
        let err = load(&[("JWT_SECRET", SECRET), ("FRONTEND_URL", "mailto:x@y.z")])
            .expect_err("not a web URL");
        assert!(err.problems.contains_key("FRONTEND_URL"));
    }
}
