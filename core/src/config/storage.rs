//! Where media objects live (`STORAGE_BACKEND`, `S3_*`, `LOCAL_S3_*`).

use std::path::PathBuf;

use url::Url;

use super::Secret;
use super::reader::Reader;

/// Where media objects live. Both variants speak the S3 protocol through the same client.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// `None` means the provider's default endpoint (AWS).
    pub endpoint: Option<Url>,
    pub bucket: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub force_path_style: bool,
    /// Set when Lectern serves its own S3 endpoint on loopback, backed by this folder.
    pub local: Option<LocalStorage>,
}

#[derive(Debug, Clone)]
pub struct LocalStorage {
    pub dir: PathBuf,
    pub port: u16,
}

pub(super) fn read_storage<F: Fn(&str) -> Option<String>>(r: &mut Reader<F>) -> StorageConfig {
    let backend = r.string("STORAGE_BACKEND", "local");
    let bucket = r.string("S3_BUCKET", "lectern-media");
    if !(3..=63).contains(&bucket.len())
        || !bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
    {
        r.problem(
            "S3_BUCKET",
            "must be 3-63 characters of lowercase letters, digits, '-' and '.'",
        );
    }
    let region = r.string("S3_REGION", "us-east-1");
    match backend.as_str() {
        "local" => {
            let port = r.parse("LOCAL_S3_PORT", 9000u16, "a port number (0-65535)");
            let dir = PathBuf::from(r.string("LOCAL_S3_DIR", "./data/s3"));
            let endpoint = Url::parse(&format!("http://127.0.0.1:{port}")).ok();
            let (access_key_id, secret) = read_local_keys(r);
            StorageConfig {
                endpoint,
                bucket,
                region,
                access_key_id,
                secret_access_key: Secret::from(secret),
                force_path_style: true,
                local: Some(LocalStorage { dir, port }),
            }
        }
        "s3" => {
            let endpoint = r
                .raw("S3_ENDPOINT")
                .and_then(|raw| r.url("S3_ENDPOINT", &raw, &["http", "https"]));
            let access_key_id = r.required("S3_ACCESS_KEY_ID").unwrap_or_default();
            let secret = r.required("S3_SECRET_ACCESS_KEY").unwrap_or_default();
            let force_path_style = r.bool("S3_FORCE_PATH_STYLE", endpoint.is_some());
            StorageConfig {
                endpoint,
                bucket,
                region,
                access_key_id,
                secret_access_key: Secret::from(secret),
                force_path_style,
                local: None,
            }
        }
        other => {
            r.problem(
                "STORAGE_BACKEND",
                format!("expected local or s3, got {other:?}"),
            );
            StorageConfig {
                endpoint: None,
                bucket,
                region,
                access_key_id: String::new(),
                secret_access_key: Secret::from(""),
                force_path_style: false,
                local: None,
            }
        }
    }
}

/// The key pair earlier versions of Lectern accepted by default on the embedded S3 endpoint:
/// published, so anything on the host could read every object with it.
const PUBLISHED_LOCAL_KEYS: [&str; 2] = ["lectern-local", "lectern-local-secret"];

/// The embedded S3 endpoint's key pair: required, not the published one, the secret long enough
/// not to be guessed (`scripts/dev run` writes a random pair into `.env` on first run).
fn read_local_keys<F: Fn(&str) -> Option<String>>(r: &mut Reader<F>) -> (String, String) {
    const HOW: &str = "the embedded S3 endpoint needs a key pair of its own \
                       (scripts/dev run writes a random one into .env)";
    let access_key_id = r.raw("S3_ACCESS_KEY_ID").unwrap_or_default();
    let secret = r.raw("S3_SECRET_ACCESS_KEY").unwrap_or_default();
    if access_key_id.is_empty() || PUBLISHED_LOCAL_KEYS.contains(&access_key_id.as_str()) {
        r.problem(
            "S3_ACCESS_KEY_ID",
            format!("is unset or the published default: {HOW}"),
        );
    }
    if secret.is_empty() || PUBLISHED_LOCAL_KEYS.contains(&secret.as_str()) {
        r.problem(
            "S3_SECRET_ACCESS_KEY",
            format!("is unset or the published default: {HOW}"),
        );
    } else if secret.len() < 16 {
        r.problem(
            "S3_SECRET_ACCESS_KEY",
            format!("must be at least 16 characters: {HOW}"),
        );
    }
    (access_key_id, secret)
}

#[cfg(test)]
mod tests {
    use crate::config::testing::*;

    #[test]
    fn the_embedded_s3_refuses_the_published_or_a_missing_key_pair() {
        for (key, secret) in [
            ("lectern-local", "lectern-local-secret"),
            ("lectern-local", LOCAL_SECRET),
            (LOCAL_KEY, "lectern-local-secret"),
            ("", ""),
            (LOCAL_KEY, "short"),
        ] {
            let err = load(&[
                ("JWT_SECRET", SECRET),
                ("S3_ACCESS_KEY_ID", key),
                ("S3_SECRET_ACCESS_KEY", secret),
            ])
            .expect_err("refused");
            assert!(
                err.problems.contains_key("S3_ACCESS_KEY_ID")
                    || err.problems.contains_key("S3_SECRET_ACCESS_KEY"),
                "{key:?}/{secret:?}: {err}"
            );
        }
        let config = load(&[("JWT_SECRET", SECRET)]).expect("a pair of its own");
        assert_eq!(config.storage.access_key_id, LOCAL_KEY);
    }
}
