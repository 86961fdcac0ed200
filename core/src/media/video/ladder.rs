//! The renditions a source gets, and the encoder settings of each.

use serde::{Deserialize, Serialize};

use super::GOP_SECS;

/// One rung of the ladder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rung {
    pub width: u32,
    pub height: u32,
    /// The short side: "720" for 1280 × 720 and for 720 × 1280.
    pub lines: u32,
    /// Peak bit rate of the video (the VBV cap of the capped-CRF encode), bits per second.
    pub max_video_bitrate: u64,
}

pub(super) fn even(x: f64) -> u32 {
    ((x / 2.0).round() as u32).max(1) * 2
}

/// The renditions for a source of this displayed size: the source resolution and the standard
/// rungs (1080, 720, 480, 360 lines) below it; never upscaled. Highest first.
pub fn ladder(width: u32, height: u32, frame_rate: f64) -> Vec<Rung> {
    let short = width.min(height);
    let long = width.max(height);
    let portrait = height > width;
    let mut lines = vec![short];
    lines.extend([1080, 720, 480, 360].into_iter().filter(|l| *l < short));
    let fps = if frame_rate.is_finite() {
        frame_rate.clamp(24.0, 60.0)
    } else {
        30.0
    };
    lines
        .into_iter()
        .map(|l| {
            let (s, g) = if l == short {
                (even(f64::from(short)), even(f64::from(long)))
            } else {
                (
                    even(f64::from(l)),
                    even(f64::from(long) * f64::from(l) / f64::from(short)),
                )
            };
            let (w, h) = if portrait { (s, g) } else { (g, s) };
            let pixels = f64::from(w) * f64::from(h);
            let max_video_bitrate = ((pixels * fps * 0.1) as u64).max(300_000);
            Rung {
                width: w,
                height: h,
                lines: l,
                max_video_bitrate,
            }
        })
        .collect()
}

/// The lowest H.264 level whose limits fit a rung (frame size, macroblock rate, bit rate).
pub fn h264_level(rung: &Rung, frame_rate: f64) -> u8 {
    // (level_idc, max macroblocks/s, max frame size in macroblocks, max kbit/s for High)
    const LEVELS: [(u8, f64, f64, f64); 12] = [
        (21, 19_800.0, 792.0, 5_000.0),
        (22, 20_250.0, 1_620.0, 5_000.0),
        (30, 40_500.0, 1_620.0, 12_500.0),
        (31, 108_000.0, 3_600.0, 17_500.0),
        (32, 216_000.0, 5_120.0, 25_000.0),
        (40, 245_760.0, 8_192.0, 25_000.0),
        (41, 245_760.0, 8_192.0, 62_500.0),
        (42, 522_240.0, 8_704.0, 62_500.0),
        (50, 589_824.0, 22_080.0, 168_750.0),
        (51, 983_040.0, 36_864.0, 300_000.0),
        (52, 2_073_600.0, 36_864.0, 300_000.0),
        (62, 16_711_680.0, 139_264.0, 800_000.0),
    ];
    let mbs = f64::from(rung.width.div_ceil(16)) * f64::from(rung.height.div_ceil(16));
    let fps = if frame_rate.is_finite() && frame_rate > 0.0 {
        frame_rate
    } else {
        30.0
    };
    let kbps = rung.max_video_bitrate as f64 / 1000.0;
    LEVELS
        .iter()
        .find(|(_, mbps, fs, br)| mbs <= *fs && mbs * fps <= *mbps && kbps <= *br)
        .map_or(62, |l| l.0)
}

/// Encoder settings shared by the pipeline and the benchmark's command line.
#[derive(Debug, Clone)]
pub struct EncodeSettings {
    pub preset: String,
    pub crf: u8,
}

impl Default for EncodeSettings {
    fn default() -> Self {
        EncodeSettings {
            preset: "veryfast".into(),
            crf: 23,
        }
    }
}

/// Frames per keyframe interval for a frame rate.
pub fn gop_frames(frame_rate: f64) -> u32 {
    let fps = if frame_rate.is_finite() && frame_rate > 0.0 {
        frame_rate
    } else {
        30.0
    };
    ((fps * GOP_SECS).round() as u32).max(1)
}

/// The x264 options of one rung, as `key=value` pairs (also what the benchmark passes to the CLI).
pub fn x264_options(
    rung: &Rung,
    frame_rate: f64,
    settings: &EncodeSettings,
) -> Vec<(String, String)> {
    let gop = gop_frames(frame_rate);
    let level = h264_level(rung, frame_rate);
    vec![
        ("preset".into(), settings.preset.clone()),
        ("crf".into(), settings.crf.to_string()),
        ("profile".into(), "high".into()),
        ("level".into(), format!("{}.{}", level / 10, level % 10)),
        ("maxrate".into(), rung.max_video_bitrate.to_string()),
        ("bufsize".into(), (rung.max_video_bitrate * 2).to_string()),
        (
            "x264-params".into(),
            format!("keyint={gop}:min-keyint={gop}:scenecut=0"),
        ),
    ]
}

/// The RFC 6381 codec string of a rung (High profile, the level it is encoded at), with AAC-LC.
pub fn codecs_string(rung: &Rung, frame_rate: f64, audio: bool) -> String {
    let video = format!("avc1.6400{:02x}", h264_level(rung, frame_rate));
    if audio {
        format!("{video},mp4a.40.2")
    } else {
        video
    }
}

/// The filters that turn a stream upright, for a clockwise display rotation.
pub fn rotation_filters(rotation: u32) -> &'static str {
    match rotation {
        90 => "transpose=clock,",
        180 => "hflip,vflip,",
        270 => "transpose=cclock,",
        _ => "",
    }
}
