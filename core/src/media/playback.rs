//! Playback: short-lived signed URLs, and the HLS playlists rewritten to carry them.

use super::*;
use crate::config::ExposeSecret;

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct PlaybackClaims {
    /// The media.
    sub: Uuid,
    purpose: String,
    exp: i64,
}

pub(super) const PLAYBACK_PURPOSE: &str = "media_playback";

pub(super) fn playback_token(
    services: &Services,
    id: Uuid,
    expires_at: DateTime<Utc>,
) -> Result<String> {
    let claims = PlaybackClaims {
        sub: id,
        purpose: PLAYBACK_PURPOSE.into(),
        exp: expires_at.timestamp(),
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(
            services.config.jwt_secret.expose_secret().as_bytes(),
        ),
    )
    .map_err(Error::internal)
}

pub(super) fn check_playback_token(services: &Services, id: Uuid, token: &str) -> Result<()> {
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.leeway = 5;
    validation.validate_aud = false;
    validation.set_required_spec_claims(&["exp", "sub"]);
    let denied = || Error::NotFound("media");
    let data = jsonwebtoken::decode::<PlaybackClaims>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(
            services.config.jwt_secret.expose_secret().as_bytes(),
        ),
        &validation,
    )
    .map_err(|_| denied())?;
    if data.claims.sub != id || data.claims.purpose != PLAYBACK_PURPOSE {
        return Err(denied());
    }
    Ok(())
}

/// Signed URLs of a picture in two formats.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PictureUrls {
    pub jpeg: String,
    pub webp: String,
}

/// `GET /media/{id}/playback`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Playback {
    /// HLS master playlist (videos). Its variant playlists and segments are signed URLs too.
    pub hls_url: Option<String>,
    pub poster: Option<PictureUrls>,
    /// WebVTT track mapping times to tiles of the storyboard sprite (signed URLs).
    pub storyboard_vtt_url: Option<String>,
    pub thumbnail: Option<PictureUrls>,
    pub preview: Option<PictureUrls>,
    /// The original file (audio and documents).
    pub file_url: Option<String>,
    pub expires_at: DateTime<Utc>,
}

pub(super) async fn pictures(
    services: &Services,
    base: &str,
    ttl: Duration,
) -> Result<PictureUrls> {
    Ok(PictureUrls {
        jpeg: services
            .storage
            .presign_get(&format!("{base}.jpg"), ttl)
            .await?
            .url,
        webp: services
            .storage
            .presign_get(&format!("{base}.webp"), ttl)
            .await?
            .url,
    })
}

pub(super) fn api_url(services: &Services, path: &str) -> String {
    crate::links::api_path(&services.config, path)
}

/// Short-lived signed URLs to play or show a ready media; only for those who may view it.
#[tracing::instrument(skip_all, fields(media_id = %id))]
pub async fn playback(services: &Services, caller: &Principal, id: Uuid) -> Result<Playback> {
    let mut conn = services.db.acquire().await?;
    let row = load(&mut conn, id, false)
        .await?
        .ok_or(Error::NotFound("media"))?;
    drop(conn);
    if !may_view(services, caller, &row).await? {
        return Err(Error::NotFound("media"));
    }
    if row.state != "ready" {
        return Err(Error::Conflict {
            code: "media_not_ready",
            message: format!("the media is {}, not ready to play", row.state),
        });
    }
    signed_playback(services, &row).await
}

/// The signed URLs of a ready media, for a caller already allowed to play it.
pub(super) async fn signed_playback(services: &Services, row: &MediaRow) -> Result<Playback> {
    let id = row.id;
    let ttl = services.config.media.url_ttl;
    let expires_at = Utc::now() + chrono::Duration::from_std(ttl).unwrap_or_default();
    let mut out = Playback {
        hls_url: None,
        poster: None,
        storyboard_vtt_url: None,
        thumbnail: None,
        preview: None,
        file_url: None,
        expires_at,
    };
    match row.kind() {
        Kind::Video => {
            let token = playback_token(services, id, expires_at)?;
            out.hls_url = Some(api_url(
                services,
                &format!("/media/{id}/hls/master.m3u8?token={token}"),
            ));
            if row.poster.is_some() {
                out.poster =
                    Some(pictures(services, &format!("{}poster", video_prefix(id)), ttl).await?);
            }
            if row.storyboard.is_some() {
                out.storyboard_vtt_url = Some(api_url(
                    services,
                    &format!("/media/{id}/storyboard.vtt?token={token}"),
                ));
            }
        }
        Kind::Image => {
            out.thumbnail =
                Some(pictures(services, &format!("{}thumbnail", image_prefix(id)), ttl).await?);
            out.preview =
                Some(pictures(services, &format!("{}preview", image_prefix(id)), ttl).await?);
        }
        Kind::Audio | Kind::Document => {
            let key = row.object_key.clone().unwrap_or_else(|| source_key(id));
            out.file_url = Some(services.storage.presign_get(&key, ttl).await?.url);
        }
    }
    Ok(out)
}

pub(super) async fn ready_video(services: &Services, id: Uuid, token: &str) -> Result<MediaRow> {
    check_playback_token(services, id, token)?;
    let mut conn = services.db.acquire().await?;
    load(&mut conn, id, false)
        .await?
        .filter(|r| r.state == "ready" && r.kind() == Kind::Video)
        .ok_or(Error::NotFound("media"))
}

pub(super) async fn read_text(services: &Services, key: &str) -> Result<String> {
    let body = services.storage.get(key).await?;
    let bytes = body
        .collect()
        .await
        .map_err(|e| Error::Unavailable(crate::error::Dependency::Storage, Box::new(e)))?
        .into_bytes();
    String::from_utf8(bytes.to_vec()).map_err(Error::internal)
}

/// The master playlist, its variant URIs carrying the playback token.
pub async fn hls_master(services: &Services, id: Uuid, token: &str) -> Result<String> {
    ready_video(services, id, token).await?;
    let text = read_text(services, &format!("{}master.m3u8", video_prefix(id))).await?;
    Ok(rewrite_uris(&text, |uri| {
        Some(format!("{uri}?token={token}"))
    }))
}

/// A variant playlist, each segment a presigned storage URL.
pub async fn hls_variant(
    services: &Services,
    id: Uuid,
    rendition: &str,
    token: &str,
) -> Result<String> {
    let row = ready_video(services, id, token).await?;
    let known = row
        .renditions
        .as_array()
        .is_some_and(|all| all.iter().any(|r| r["name"] == rendition));
    if !known {
        return Err(Error::NotFound("rendition"));
    }
    let prefix = format!("{}{rendition}/", video_prefix(id));
    let text = read_text(services, &format!("{prefix}index.m3u8")).await?;
    // Segments stay valid long enough to play the whole video from the start.
    let ttl = services.config.media.url_ttl
        + Duration::from_secs_f64(row.duration_secs.unwrap_or(0.0).clamp(0.0, 86_400.0));
    let mut out = String::with_capacity(text.len() * 4);
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            out.push_str(line);
        } else if is_plain_name(trimmed) {
            let url = services
                .storage
                .presign_get(&format!("{prefix}{trimmed}"), ttl)
                .await?
                .url;
            out.push_str(&url);
        } else {
            return Err(Error::internal(std::io::Error::other(format!(
                "unexpected URI in a stored playlist: {trimmed}"
            ))));
        }
        out.push('\n');
    }
    Ok(out)
}

/// The storyboard track, its image references presigned.
pub async fn storyboard_vtt(services: &Services, id: Uuid, token: &str) -> Result<String> {
    let row = ready_video(services, id, token).await?;
    if row.storyboard.is_none() {
        return Err(Error::NotFound("storyboard"));
    }
    let prefix = video_prefix(id);
    let text = read_text(services, &format!("{prefix}storyboard.vtt")).await?;
    let ttl = services.config.media.url_ttl;
    let sprite = services
        .storage
        .presign_get(&format!("{prefix}storyboard.jpg"), ttl)
        .await?
        .url;
    Ok(text.replace("storyboard.jpg#", &format!("{sprite}#")))
}

pub(super) fn is_plain_name(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Rewrites every URI line of a playlist (lines that are neither empty nor tags).
pub(super) fn rewrite_uris(text: &str, mut f: impl FnMut(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    for line in text.lines() {
        let trimmed = line.trim();
        if !trimmed.is_empty() && !trimmed.starts_with('#') {
            match f(trimmed) {
                Some(new) => out.push_str(&new),
                None => out.push_str(line),
            }
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}
