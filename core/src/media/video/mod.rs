//! Video processing with FFmpeg's libraries (ffmpeg-next), in process: probe, then one decode
//! feeding an HLS ladder (H.264 + AAC renditions), a poster frame and a storyboard.
//!
//! Everything here is blocking and CPU-heavy: call it from `spawn_blocking`.
//!
//! The decode runs once. Decoded frames go through one filter graph (rotation, `split`, one
//! `scale` per rung), whose outputs feed one libx264 encoder per rendition; the audio is
//! decoded, resampled and encoded to AAC once, and its packets are muxed into every rendition.
//! Each rendition is written by FFmpeg's `hls` muxer (6-second MPEG-TS segments, VOD playlist);
//! the master playlist is written here, with bandwidths measured from the segments written.
//!
//! By responsibility: [`probe`] (what a file is, under limits), [`ladder`] (renditions and
//! their encoder settings), [`transcode`] (the decode, filter and encode loop), `audio` (the
//! AAC path), `pictures` (poster and storyboard), [`hls`] (playlists and measured bandwidths).

use std::path::PathBuf;

use ff::{Dictionary, filter};
use ffmpeg_next as ff;
use serde::{Deserialize, Serialize};

use super::MediaError;

mod audio;
mod hls;
mod ladder;
mod pictures;
mod probe;
mod transcode;

pub use hls::{master_playlist, parse_media_playlist};
pub use ladder::{
    EncodeSettings, Rung, codecs_string, gop_frames, h264_level, ladder, rotation_filters,
    x264_options,
};
pub use probe::{VideoLimits, VideoProbe, open_input, probe, probe_within, rotation_from_matrix};
pub use transcode::transcode;

/// Target segment length, in seconds.
pub const SEGMENT_SECS: u32 = 6;
/// Keyframe interval, in seconds: segments cut on keyframes, so this divides [`SEGMENT_SECS`].
const GOP_SECS: f64 = 2.0;
/// At most this many storyboard tiles, whatever the length of the video (bounded memory).
pub const MAX_STORYBOARD_TILES: usize = 100;
const STORYBOARD_COLUMNS: usize = 10;
const TILE_WIDTH: u32 = 160;
const POSTER_MAX_SIDE: u32 = 1280;
const AUDIO_BITRATE: usize = 128_000;
const AUDIO_RATE: i32 = 48_000;
/// How far past the duration limit decoded timestamps may go (rounding, audio priming).
const DURATION_SLACK_SECS: f64 = 0.5;

static INIT: std::sync::Once = std::sync::Once::new();

/// Initialises FFmpeg once per process and keeps its log quiet (errors come back as values).
pub fn init() {
    INIT.call_once(|| {
        if let Err(e) = ff::init() {
            tracing::error!(error = %e, "FFmpeg failed to initialise");
        }
        ff::util::log::set_level(ff::util::log::Level::Fatal);
    });
}

/// One rendition as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Rendition {
    /// Its folder under the HLS prefix (`720p`), holding `index.m3u8` and the segments.
    pub name: String,
    pub width: u32,
    pub height: u32,
    /// Peak segment bit rate (video and audio), bits per second, as in the master playlist.
    pub bandwidth: u64,
    pub average_bandwidth: u64,
    pub codecs: String,
    pub segments: usize,
    /// Sum of the segment durations.
    pub duration_secs: f64,
}

/// Everything a transcode wrote into its output folder.
#[derive(Debug, Clone)]
pub struct TranscodeOutput {
    pub renditions: Vec<Rendition>,
    /// `master.m3u8` relative to the output folder.
    pub master: PathBuf,
    pub poster: Option<Poster>,
    pub storyboard: Option<Storyboard>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Poster {
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Storyboard {
    pub tiles: usize,
    pub columns: usize,
    pub tile_width: u32,
    pub tile_height: u32,
    pub interval_secs: f64,
}

/// Progress reports: fraction of the source duration encoded so far, 0.0 to 1.0.
pub type Progress<'a> = &'a mut dyn FnMut(f64);

/// What to make besides the ladder (the benchmark turns them off to compare with the CLI).
#[derive(Debug, Clone)]
pub struct TranscodeOptions {
    pub settings: EncodeSettings,
    pub poster: bool,
    pub storyboard: bool,
    /// Enforced while decoding: the transcode fails as soon as the content runs past them.
    pub limits: VideoLimits,
}

impl Default for TranscodeOptions {
    fn default() -> Self {
        TranscodeOptions {
            settings: EncodeSettings::default(),
            poster: true,
            storyboard: true,
            limits: VideoLimits::NONE,
        }
    }
}

pub(super) fn failed(what: &str) -> impl Fn(ff::Error) -> MediaError + '_ {
    move |e| MediaError::Processing(format!("{what}: {e}"))
}

pub(super) fn add_filter(
    graph: &mut filter::Graph,
    kind: &str,
    name: &str,
    args: &str,
) -> Result<(), MediaError> {
    let f = filter::find(kind)
        .ok_or_else(|| MediaError::Processing(format!("FFmpeg has no {kind} filter")))?;
    graph.add(&f, name, args).map_err(failed("filter graph"))?;
    Ok(())
}

pub(super) fn dictionary(pairs: &[(String, String)]) -> Dictionary<'static> {
    let mut d = Dictionary::new();
    for (k, v) in pairs {
        d.set(k, v);
    }
    d
}

#[cfg(test)]
mod tests {
    use super::pictures::vtt_time;
    use super::*;

    #[test]
    fn the_ladder_never_upscales_and_keeps_portrait() {
        let l = ladder(1920, 1080, 30.0);
        let sizes: Vec<_> = l.iter().map(|r| (r.width, r.height)).collect();
        assert_eq!(
            sizes,
            vec![(1920, 1080), (1280, 720), (854, 480), (640, 360)]
        );
        let p = ladder(720, 1280, 30.0);
        let sizes: Vec<_> = p.iter().map(|r| (r.width, r.height)).collect();
        assert_eq!(sizes, vec![(720, 1280), (480, 854), (360, 640)]);
        let small = ladder(320, 240, 30.0);
        assert_eq!(small.len(), 1);
        assert_eq!((small[0].width, small[0].height), (320, 240));
        assert!(
            l.windows(2)
                .all(|w| w[0].max_video_bitrate > w[1].max_video_bitrate)
        );
    }

    #[test]
    fn levels_grow_with_the_picture() {
        let l = ladder(1920, 1080, 30.0);
        assert_eq!(h264_level(&l[0], 30.0), 40);
        assert_eq!(h264_level(&l[1], 30.0), 31);
        assert!(h264_level(&l[3], 30.0) <= 30);
        assert_eq!(codecs_string(&l[0], 30.0, true), "avc1.640028,mp4a.40.2");
    }

    #[test]
    fn display_matrices_give_clockwise_rotation() {
        fn matrix(a: i32, b: i32, c: i32, d: i32) -> Vec<u8> {
            let m = [a, b, 0, c, d, 0, 0, 0, 1 << 30];
            m.iter().flat_map(|v| v.to_le_bytes()).collect()
        }
        let one = 1 << 16;
        assert_eq!(rotation_from_matrix(&matrix(one, 0, 0, one)), Some(0));
        // What `ffmpeg -metadata:s:v rotate=90` writes for a phone held upright.
        assert_eq!(rotation_from_matrix(&matrix(0, one, -one, 0)), Some(90));
        assert_eq!(rotation_from_matrix(&matrix(-one, 0, 0, -one)), Some(180));
        assert_eq!(rotation_from_matrix(&matrix(0, -one, one, 0)), Some(270));
        assert_eq!(rotation_from_matrix(&[0; 8]), None);
    }

    /// Sets the display matrix of the first track of an MP4 (as phones write it) to a clockwise
    /// rotation of 90°: FFmpeg 5.1's command line cannot write one.
    fn rotate_first_track_90(mp4: &mut [u8]) {
        let at = mp4
            .windows(4)
            .position(|w| w == b"tkhd")
            .expect("a tkhd box");
        let version = mp4[at + 4];
        // type(4) version+flags(4) times(8 or 16) track id(4) reserved(4) duration(4 or 8)
        // reserved(8) layer, group, volume, reserved(8): then the matrix.
        let matrix = at
            + 4
            + 4
            + if version == 1 {
                16 + 4 + 4 + 8
            } else {
                8 + 4 + 4 + 4
            }
            + 8
            + 8;
        let one: i32 = 1 << 16;
        let values = [0, one, 0, -one, 0, 0, 0, 0, 1 << 30];
        for (i, v) in values.iter().enumerate() {
            mp4[matrix + i * 4..matrix + i * 4 + 4].copy_from_slice(&v.to_be_bytes());
        }
    }

    fn generated(name: &str, args: &[&str]) -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("lectern-video-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join(name);
        let status = std::process::Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-y"])
            .args(args)
            .arg(&path)
            .status()
            .expect("the ffmpeg command line");
        assert!(status.success());
        (dir, path)
    }

    #[test]
    fn a_short_clip_becomes_a_ladder_with_poster_and_storyboard() {
        let (dir, path) = generated(
            "clip.mp4",
            &[
                "-f",
                "lavfi",
                "-i",
                "testsrc2=size=640x480:rate=30:duration=3",
                "-f",
                "lavfi",
                "-i",
                "sine=duration=3",
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-pix_fmt",
                "yuv420p",
                "-c:a",
                "aac",
                "-shortest",
            ],
        );
        let mut bytes = std::fs::read(&path).expect("read");
        rotate_first_track_90(&mut bytes);
        std::fs::write(&path, bytes).expect("write");
        let probe = probe(&path).expect("probe");
        assert_eq!((probe.width, probe.height, probe.rotation), (480, 640, 90));
        assert!(probe.has_audio);
        assert!((probe.duration_secs - 3.0).abs() < 0.2, "{probe:?}");
        let out = dir.join("out");
        std::fs::create_dir_all(&out).expect("out");
        let mut seen = Vec::new();
        let cancel = std::sync::atomic::AtomicBool::new(false);
        let result = transcode(
            &path,
            &probe,
            &out,
            &TranscodeOptions::default(),
            &mut |f| seen.push(f),
            &cancel,
        )
        .expect("transcode");
        let sizes: Vec<_> = result
            .renditions
            .iter()
            .map(|r| (r.width, r.height))
            .collect();
        assert_eq!(sizes, vec![(480, 640), (360, 480)]);
        assert!(
            seen.windows(2).all(|w| w[0] <= w[1]) && seen.last() == Some(&1.0),
            "{seen:?}"
        );
        let master = std::fs::read_to_string(out.join("master.m3u8")).expect("master");
        assert!(master.contains("RESOLUTION=480x640"), "{master}");
        for r in &result.renditions {
            let playlist =
                std::fs::read_to_string(out.join(&r.name).join("index.m3u8")).expect("playlist");
            let total: f64 = parse_media_playlist(&playlist).iter().map(|(d, _)| d).sum();
            assert!((total - 3.0).abs() < 0.2, "{playlist}");
            assert!(r.bandwidth >= r.average_bandwidth && r.average_bandwidth > 0);
        }
        let poster = ::image::open(out.join("poster.jpg")).expect("poster");
        assert_eq!((poster.width(), poster.height()), (480, 640));
        assert_eq!(result.storyboard.as_ref().map(|s| s.tiles), Some(3));
        let vtt = std::fs::read_to_string(out.join("storyboard.vtt")).expect("vtt");
        assert_eq!(vtt.matches("#xywh=").count(), 3);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn media_playlists_parse() {
        let text = "#EXTM3U\n#EXT-X-TARGETDURATION:6\n#EXTINF:6.000000,\nseg_00000.ts\n#EXTINF:2.5,\nseg_00001.ts\n#EXT-X-ENDLIST\n";
        assert_eq!(
            parse_media_playlist(text),
            vec![(6.0, "seg_00000.ts".into()), (2.5, "seg_00001.ts".into())]
        );
        assert_eq!(vtt_time(3661.5), "01:01:01.500");
    }
}
