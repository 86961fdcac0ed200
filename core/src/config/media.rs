//! Uploads and media processing limits (`MEDIA_*`).

use std::collections::BTreeMap;
use std::time::Duration;

use super::reader::Reader;

/// Uploads and media processing.
#[derive(Debug, Clone)]
pub struct MediaConfig {
    /// Allowed MIME types per kind (`video`, `image`, `audio`, `document`).
    pub allowed_types: BTreeMap<&'static str, Vec<String>>,
    /// Largest accepted file per kind, in bytes.
    pub max_bytes: BTreeMap<&'static str, u64>,
    /// Uploads at least this large are multipart uploads.
    pub multipart_threshold: u64,
    /// Part size of multipart uploads (at least 5 MiB, the S3 minimum).
    pub part_size: u64,
    /// Largest file accepted by the direct `POST /media` upload.
    pub direct_max_bytes: u64,
    /// An upload not completed within this time is removed (row and object).
    pub upload_expiry: Duration,
    /// How often workers look for expired uploads.
    pub sweep_interval: Duration,
    /// Lifetime of presigned upload URLs and of playback URLs.
    pub url_ttl: Duration,
    /// Longest video accepted: checked on the header at probe and again on the decoded
    /// timestamps and frame count while transcoding, since a header can lie.
    pub max_video_duration: Duration,
    /// Largest video picture accepted (displayed size), checked on the stream header before a
    /// frame is decoded: decoding cost grows with the picture, not with the file's bytes.
    pub video_max_width: u32,
    pub video_max_height: u32,
    pub video_max_pixels: u64,
    /// Highest frame rate accepted; it also bounds how many frames a video may hold.
    pub video_max_frame_rate: f64,
    /// Per-user upload quotas, checked when an upload starts: uploads not yet completed, their
    /// declared bytes, and the bytes of every media the user keeps.
    pub quota_pending_uploads: u64,
    pub quota_pending_bytes: u64,
    pub quota_stored_bytes: u64,
    pub image_max_width: u32,
    pub image_max_height: u32,
    pub image_max_pixels: u64,
    /// The `lectern-media` program workers run each media job in (`LECTERN_MEDIA_BIN`); `None`:
    /// the one next to the worker's own executable.
    pub process_bin: Option<std::path::PathBuf>,
}

impl MediaConfig {
    /// The kind a MIME type is allowed as, if any.
    pub fn kind_of(&self, mime: &str) -> Option<&'static str> {
        let mime = mime.trim().to_ascii_lowercase();
        self.allowed_types
            .iter()
            .find(|(_, types)| types.contains(&mime))
            .map(|(kind, _)| *kind)
    }
}

pub(super) fn read_media<F: Fn(&str) -> Option<String>>(r: &mut Reader<F>) -> MediaConfig {
    const MIB: u64 = 1024 * 1024;
    let defaults: [(&'static str, &'static str, &'static str, &str, u64); 4] = [
        (
            "video",
            "MEDIA_VIDEO_TYPES",
            "MEDIA_VIDEO_MAX_BYTES",
            "video/mp4,video/quicktime,video/webm,video/x-matroska,video/x-msvideo,video/mp2t",
            5 * 1024 * MIB,
        ),
        (
            "image",
            "MEDIA_IMAGE_TYPES",
            "MEDIA_IMAGE_MAX_BYTES",
            "image/jpeg,image/png,image/webp,image/gif",
            30 * MIB,
        ),
        (
            "audio",
            "MEDIA_AUDIO_TYPES",
            "MEDIA_AUDIO_MAX_BYTES",
            "audio/mpeg,audio/mp4,audio/wav,audio/ogg,audio/flac",
            500 * MIB,
        ),
        (
            "document",
            "MEDIA_DOCUMENT_TYPES",
            "MEDIA_DOCUMENT_MAX_BYTES",
            "application/pdf",
            100 * MIB,
        ),
    ];
    let mut allowed_types = BTreeMap::new();
    let mut max_bytes = BTreeMap::new();
    for (kind, types_var, max_var, default_types, default_max) in defaults {
        let types: Vec<String> = r
            .string(types_var, default_types)
            .split(',')
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect();
        if let Some(bad) = types.iter().find(|t| {
            t.split_once('/')
                .is_none_or(|(a, b)| a.is_empty() || b.is_empty() || b.contains('/'))
        }) {
            r.problem(types_var, format!("{bad:?} is not a MIME type"));
        }
        allowed_types.insert(kind, types);
        let max = r.parse(max_var, default_max, "a number of bytes");
        if max == 0 {
            r.problem(max_var, "must be at least 1");
        }
        max_bytes.insert(kind, max);
    }
    let part_size = r.parse("MEDIA_PART_BYTES", 16 * MIB, "a number of bytes");
    if !(5 * MIB..=5 * 1024 * MIB).contains(&part_size) {
        r.problem(
            "MEDIA_PART_BYTES",
            "must be between 5 MiB and 5 GiB (S3 part limits)",
        );
    }
    let multipart_threshold = r.parse(
        "MEDIA_MULTIPART_THRESHOLD_BYTES",
        64 * MIB,
        "a number of bytes",
    );
    if multipart_threshold < part_size {
        r.problem(
            "MEDIA_MULTIPART_THRESHOLD_BYTES",
            "must be at least MEDIA_PART_BYTES",
        );
    }
    let secs = |r: &mut Reader<F>, name: &'static str, default: u64| {
        let v: u64 = r.parse(name, default, "a number of seconds");
        if v == 0 {
            r.problem(name, "must be at least 1");
        }
        Duration::from_secs(v.max(1))
    };
    MediaConfig {
        allowed_types,
        max_bytes,
        multipart_threshold,
        part_size,
        direct_max_bytes: r.parse("MEDIA_DIRECT_MAX_BYTES", 25 * MIB, "a number of bytes"),
        upload_expiry: secs(r, "MEDIA_UPLOAD_EXPIRY_SECS", 24 * 3600),
        sweep_interval: secs(r, "MEDIA_SWEEP_INTERVAL_SECS", 60),
        url_ttl: secs(r, "MEDIA_URL_TTL_SECS", 900),
        max_video_duration: secs(r, "MEDIA_VIDEO_MAX_DURATION_SECS", 6 * 3600),
        video_max_width: u32::try_from(r.positive("MEDIA_VIDEO_MAX_WIDTH", 4096)).unwrap_or(4096),
        video_max_height: u32::try_from(r.positive("MEDIA_VIDEO_MAX_HEIGHT", 4096)).unwrap_or(4096),
        video_max_pixels: r.parse(
            "MEDIA_VIDEO_MAX_PIXELS",
            4096 * 2304u64,
            "a number of pixels",
        ),
        video_max_frame_rate: {
            let fps: f64 = r.parse("MEDIA_VIDEO_MAX_FRAME_RATE", 120.0, "frames per second");
            if !(fps.is_finite() && fps >= 1.0) {
                r.problem("MEDIA_VIDEO_MAX_FRAME_RATE", "must be at least 1");
            }
            fps.max(1.0)
        },
        quota_pending_uploads: r.positive("MEDIA_QUOTA_PENDING_UPLOADS", 10) as u64,
        quota_pending_bytes: r.parse(
            "MEDIA_QUOTA_PENDING_BYTES",
            20 * 1024 * MIB,
            "a number of bytes",
        ),
        quota_stored_bytes: r.parse(
            "MEDIA_QUOTA_STORED_BYTES",
            200 * 1024 * MIB,
            "a number of bytes",
        ),
        image_max_width: u32::try_from(r.positive("MEDIA_IMAGE_MAX_WIDTH", 16_384))
            .unwrap_or(16_384),
        image_max_height: u32::try_from(r.positive("MEDIA_IMAGE_MAX_HEIGHT", 16_384))
            .unwrap_or(16_384),
        image_max_pixels: r.parse(
            "MEDIA_IMAGE_MAX_PIXELS",
            50_000_000u64,
            "a number of pixels",
        ),
        process_bin: r.raw("LECTERN_MEDIA_BIN").and_then(|raw| {
            let path = std::path::PathBuf::from(&raw);
            if !path.is_absolute() {
                r.problem(
                    "LECTERN_MEDIA_BIN",
                    format!("must be an absolute path, got {raw:?}"),
                );
                None
            } else if !path.is_file() {
                r.problem("LECTERN_MEDIA_BIN", format!("{raw} is not a file"));
                None
            } else {
                Some(path)
            }
        }),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::*;

    #[test]
    fn the_media_program_must_be_an_existing_absolute_path() {
        let config = load(&[("JWT_SECRET", SECRET)]).expect("valid");
        assert_eq!(config.media.process_bin, None);
        let here = std::env::current_exe().expect("current exe");
        let here = here.to_str().expect("utf-8 path");
        let config = load(&[("JWT_SECRET", SECRET), ("LECTERN_MEDIA_BIN", here)]).expect("valid");
        assert_eq!(
            config.media.process_bin,
            Some(std::path::PathBuf::from(here))
        );
        for bad in ["lectern-media", "/nonexistent/lectern-media", "/"] {
            let err = load(&[("JWT_SECRET", SECRET), ("LECTERN_MEDIA_BIN", bad)]).expect_err(bad);
            assert!(err.problems.contains_key("LECTERN_MEDIA_BIN"), "{bad}");
        }
    }
}
