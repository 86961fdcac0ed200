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

use std::path::{Path, PathBuf};

use ff::{Dictionary, Packet, Rational, codec, filter, format, frame, media};
use ffmpeg_next as ff;
use serde::{Deserialize, Serialize};

use super::{Kind, MediaError, sniff};

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

/// What a video file is, read from its headers and its first decodable frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VideoProbe {
    pub duration_secs: f64,
    /// Displayed size: after rotation (a portrait phone video is taller than wide).
    pub width: u32,
    pub height: u32,
    /// Clockwise rotation applied on display, one of 0, 90, 180, 270.
    pub rotation: u32,
    pub frame_rate: f64,
    pub video_codec: String,
    pub audio_codec: Option<String>,
    /// Bits per second of the whole file (0 when the container does not say).
    pub bit_rate: i64,
    pub has_audio: bool,
    pub container: String,
    #[serde(skip)]
    coded_width: u32,
    #[serde(skip)]
    coded_height: u32,
}

/// Opens a local file for FFmpeg as the type its first bytes show, and only that: its demuxer is
/// the one allowed (`format_whitelist`), so content that probes as anything else (an HLS playlist,
/// a concat script, an image pattern) is refused instead of followed; the only protocol is
/// `file`, for the file itself (a demuxer that nests, like `hls`, could not reach `http` anyway),
/// and QuickTime data references to other files stay off. Nothing a file says decides what else
/// is read.
pub fn open_input(path: &Path, kind: Kind) -> Result<format::context::Input, MediaError> {
    init();
    let mut head = Vec::with_capacity(sniff::SNIFF_LEN);
    std::fs::File::open(path)
        .and_then(|f| {
            use std::io::Read;
            f.take(sniff::SNIFF_LEN as u64).read_to_end(&mut head)
        })
        .map_err(MediaError::io)?;
    let sniffed = sniff::sniff(&head)
        .filter(|s| s.kind == kind)
        .ok_or_else(|| {
            MediaError::Invalid(format!(
                "the file's content is not a {} Lectern reads",
                kind.as_str()
            ))
        })?;
    let demuxer = sniffed.demuxer().ok_or_else(|| {
        MediaError::Invalid(format!(
            "a {} is not read as a {}",
            sniffed.label,
            kind.as_str()
        ))
    })?;
    let mut options = Dictionary::new();
    options.set("format_whitelist", demuxer);
    options.set("protocol_whitelist", "file");
    options.set("enable_drefs", "0");
    let not_as_sniffed = |e: ff::Error| {
        MediaError::Invalid(format!(
            "the file's first bytes say {}, but it cannot be read as one \
             (it may be truncated, or another format in disguise): {e}",
            sniffed.label
        ))
    };
    let ictx = format::input_with_dictionary(&path, options).map_err(not_as_sniffed)?;
    if !ictx.format().name().split(',').any(|n| n == demuxer) {
        return Err(not_as_sniffed(ff::Error::InvalidData));
    }
    Ok(ictx)
}

/// Bounds on the work one video may cost. The picture size and frame rate are checked on the
/// stream header before a frame is decoded (the decoder also refuses any later frame larger than
/// `max_pixels`); the duration is enforced on what is decoded, since a header can lie about it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VideoLimits {
    /// Displayed size (after rotation).
    pub max_width: u32,
    pub max_height: u32,
    pub max_pixels: u64,
    pub max_frame_rate: f64,
    pub max_duration_secs: f64,
}

impl VideoLimits {
    /// No bound (tools and benchmarks on trusted files).
    pub const NONE: VideoLimits = VideoLimits {
        max_width: u32::MAX,
        max_height: u32::MAX,
        max_pixels: i32::MAX as u64,
        max_frame_rate: f64::INFINITY,
        max_duration_secs: f64::INFINITY,
    };

    /// Most frames a video within these limits can hold: a bound on decoding that holds even
    /// when the timestamps say nothing useful.
    fn max_frames(&self) -> u64 {
        let frames = (self.max_duration_secs * self.max_frame_rate).ceil();
        if frames.is_finite() && frames < u64::MAX as f64 {
            frames as u64 + 1
        } else {
            u64::MAX
        }
    }

    /// The decoder option that makes libavcodec refuse larger pictures before allocating them
    /// (an `int` in FFmpeg: a larger value is refused as out of range).
    fn decoder_options(&self) -> Dictionary<'static> {
        let mut options = Dictionary::new();
        options.set(
            "max_pixels",
            &self.max_pixels.min(i32::MAX as u64).to_string(),
        );
        options
    }

    fn check_picture(&self, width: u32, height: u32) -> Result<(), MediaError> {
        let pixels = u64::from(width) * u64::from(height);
        if width > self.max_width || height > self.max_height || pixels > self.max_pixels {
            return Err(MediaError::Invalid(format!(
                "the video is {width} × {height} pixels; the largest accepted is {} × {} and {} pixels in all",
                self.max_width, self.max_height, self.max_pixels
            )));
        }
        Ok(())
    }

    fn check_frame_rate(&self, rate: f64) -> Result<(), MediaError> {
        if rate > self.max_frame_rate {
            return Err(MediaError::Invalid(format!(
                "the video has {rate:.2} frames per second; the most accepted is {:.0}",
                self.max_frame_rate
            )));
        }
        Ok(())
    }

    fn too_long(&self, secs: f64) -> MediaError {
        MediaError::Invalid(format!(
            "the video's real duration passes {secs:.0} s (counted on its decoded frames, whatever its header says); the longest accepted is {:.0} s",
            self.max_duration_secs
        ))
    }
}

/// Opens a video decoder that refuses pictures above the limits' pixel count.
fn open_video_decoder(
    ctx: codec::context::Context,
    limits: &VideoLimits,
) -> Result<codec::decoder::Video, ff::Error> {
    let id = ctx.id();
    ctx.decoder()
        .open_as_with(id, limits.decoder_options())
        .and_then(|opened| opened.video())
}

fn unreadable(e: ff::Error) -> MediaError {
    MediaError::Invalid(format!(
        "the file is not a video that can be read (it may be truncated or not a video at all): {e}"
    ))
}

/// Reads a file's streams and decodes its first video frame. Anything that is not a decodable
/// video is [`MediaError::Invalid`] with a reason a person understands.
pub fn probe(path: &Path) -> Result<VideoProbe, MediaError> {
    probe_within(path, &VideoLimits::NONE)
}

/// [`probe`], refusing a picture or frame rate beyond `limits` before any frame is decoded.
pub fn probe_within(path: &Path, limits: &VideoLimits) -> Result<VideoProbe, MediaError> {
    init();
    let mut ictx = open_input(path, Kind::Video)?;
    let container = ictx.format().name().to_owned();
    if container.contains("_pipe") || container == "image2" {
        return Err(MediaError::Invalid(
            "the file is a still image, not a video".into(),
        ));
    }
    let (index, time_base, params, stream_duration, rate, rotation) = {
        let stream = ictx
            .streams()
            .best(media::Type::Video)
            .ok_or_else(|| MediaError::Invalid("the file has no video track".into()))?;
        let rate = [stream.avg_frame_rate(), stream.rate()]
            .into_iter()
            .find(|r| r.numerator() > 0 && r.denominator() > 0)
            .map_or(0.0, f64::from);
        (
            stream.index(),
            stream.time_base(),
            stream.parameters(),
            stream.duration(),
            rate,
            rotation_of(&stream),
        )
    };
    let (audio_codec, has_audio) = match ictx.streams().best(media::Type::Audio) {
        Some(a) => (Some(a.parameters().id().name().to_owned()), true),
        None => (None, false),
    };
    let video_codec = params.id().name().to_owned();
    let mut duration_secs = if ictx.duration() > 0 {
        ictx.duration() as f64 / 1_000_000.0
    } else if stream_duration > 0 {
        stream_duration as f64 * f64::from(time_base)
    } else {
        0.0
    };
    let bit_rate = ictx.bit_rate();

    let cannot_decode = |e: ff::Error| {
        MediaError::Invalid(format!(
            "the video track ({video_codec}) cannot be decoded: {e}"
        ))
    };
    // The header's picture size and frame rate, before a frame is decoded (opening a decoder
    // reads the stream's parameters, it decodes nothing).
    let header = codec::context::Context::from_parameters(params.clone())
        .and_then(|c| c.decoder().video())
        .map_err(cannot_decode)?;
    if rotation % 180 == 90 {
        limits.check_picture(header.height(), header.width())?;
    } else {
        limits.check_picture(header.width(), header.height())?;
    }
    limits.check_frame_rate(rate)?;
    drop(header);
    let mut decoder = codec::context::Context::from_parameters(params)
        .and_then(|c| open_video_decoder(c, limits))
        .map_err(cannot_decode)?;
    let mut decoded = frame::Video::empty();
    let mut got_frame = false;
    let mut packets_read = 0usize;
    'read: for (stream, packet) in ictx.packets() {
        if stream.index() != index {
            continue;
        }
        packets_read += 1;
        if decoder.send_packet(&packet).is_err() && packets_read > 200 {
            break;
        }
        if decoder.receive_frame(&mut decoded).is_ok() {
            got_frame = true;
            break 'read;
        }
        if packets_read > 500 {
            break;
        }
    }
    if !got_frame && decoder.send_eof().is_ok() && decoder.receive_frame(&mut decoded).is_ok() {
        got_frame = true;
    }
    if !got_frame {
        // A picture beyond `max_pixels` is refused by the decoder itself.
        let header = (decoder.width(), decoder.height());
        limits.check_picture(header.0.max(1), header.1.max(1))?;
        return Err(MediaError::Invalid(
            "no frame of the video could be decoded (the file is damaged or truncated)".into(),
        ));
    }
    let (coded_width, coded_height) = (decoded.width(), decoded.height());
    if coded_width == 0 || coded_height == 0 {
        return Err(MediaError::Invalid("the video has no picture".into()));
    }
    if duration_secs <= 0.0 || !duration_secs.is_finite() {
        duration_secs = 0.0;
    }
    let (width, height) = if rotation % 180 == 90 {
        (coded_height, coded_width)
    } else {
        (coded_width, coded_height)
    };
    Ok(VideoProbe {
        duration_secs,
        width,
        height,
        rotation,
        frame_rate: rate,
        video_codec,
        audio_codec,
        bit_rate,
        has_audio,
        container,
        coded_width,
        coded_height,
    })
}

/// The display rotation of a stream (clockwise degrees: 0, 90, 180 or 270) from its display
/// matrix, as the `ffmpeg` command line reads it.
fn rotation_of(stream: &format::stream::Stream) -> u32 {
    for side in stream.side_data() {
        if side.kind() == codec::packet::side_data::Type::DisplayMatrix {
            return rotation_from_matrix(side.data()).unwrap_or(0);
        }
    }
    0
}

/// Nine little-endian i32 (16.16 fixed point, the last column 2.30) to a clockwise rotation.
pub fn rotation_from_matrix(data: &[u8]) -> Option<u32> {
    if data.len() < 36 {
        return None;
    }
    let m: Vec<f64> = data[..36]
        .chunks_exact(4)
        .map(|c| f64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])) / 65536.0)
        .collect();
    let scale0 = m[0].hypot(m[3]);
    let scale1 = m[1].hypot(m[4]);
    if scale0 == 0.0 || scale1 == 0.0 {
        return None;
    }
    // av_display_rotation_get: counter-clockwise degrees; the CLI negates it.
    let ccw = -(m[1] / scale1).atan2(m[0] / scale0).to_degrees();
    let theta = -ccw.round();
    let theta = theta - 360.0 * (theta / 360.0 + 0.9 / 360.0).floor();
    let snapped = [0.0, 90.0, 180.0, 270.0]
        .into_iter()
        .find(|a| (theta - a).abs() < 1.0)?;
    Some(snapped as u32)
}

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

fn even(x: f64) -> u32 {
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

fn failed(what: &str) -> impl Fn(ff::Error) -> MediaError + '_ {
    move |e| MediaError::Processing(format!("{what}: {e}"))
}

struct VideoOut {
    encoder: codec::encoder::video::Encoder,
    octx: format::context::Output,
    sink: String,
    video_tb: Rational,
    audio_tb: Rational,
    rung: Rung,
    name: String,
}

struct AudioPath {
    index: usize,
    decoder: codec::decoder::Audio,
    graph: filter::Graph,
    encoder: codec::encoder::audio::Encoder,
}

/// A small graph that turns selected decoded frames into upright RGB pictures of one size.
struct Snapshotter {
    graph: filter::Graph,
}

impl Snapshotter {
    fn new(buffer_args: &str, rotation: u32, width: u32, height: u32) -> Result<Self, MediaError> {
        let mut graph = filter::Graph::new();
        add_filter(&mut graph, "buffer", "in", buffer_args)?;
        add_filter(&mut graph, "buffersink", "out", "")?;
        let spec = format!(
            "{}scale={width}:{height}:flags=bicubic,format=rgb24",
            rotation_filters(rotation)
        );
        graph
            .output("in", 0)
            .and_then(|p| p.input("out", 0))
            .and_then(|p| p.parse(&spec))
            .map_err(failed("snapshot filter (parse)"))?;
        graph
            .validate()
            .map_err(failed("snapshot filter (validate)"))?;
        Ok(Snapshotter { graph })
    }

    fn take(&mut self, decoded: &frame::Video) -> Result<Option<image::RgbImage>, MediaError> {
        let mut source = self
            .graph
            .get("in")
            .ok_or_else(|| MediaError::Processing("snapshot filter lost its input".into()))?;
        // The buffer source takes the frame's reference: give it a copy, the ladder needs the
        // original.
        let copy = decoded.clone();
        source
            .source()
            .add(&copy)
            .map_err(failed("snapshot filter"))?;
        let mut sink = self
            .graph
            .get("out")
            .ok_or_else(|| MediaError::Processing("snapshot filter lost its output".into()))?;
        let mut rgb = frame::Video::empty();
        if sink.sink().frame(&mut rgb).is_err() {
            return Ok(None);
        }
        Ok(rgb_to_image(&rgb))
    }
}

/// Copies an RGB24 frame (rows padded to the stride) into an image.
fn rgb_to_image(rgb: &frame::Video) -> Option<image::RgbImage> {
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    let stride = rgb.stride(0);
    let data = rgb.data(0);
    let mut pixels = Vec::with_capacity(w * h * 3);
    for row in 0..h {
        let start = row * stride;
        pixels.extend_from_slice(data.get(start..start + w * 3)?);
    }
    image::RgbImage::from_raw(rgb.width(), rgb.height(), pixels)
}

fn add_filter(
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

fn dictionary(pairs: &[(String, String)]) -> Dictionary<'static> {
    let mut d = Dictionary::new();
    for (k, v) in pairs {
        d.set(k, v);
    }
    d
}

/// Transcodes `input` (already probed) into `out_dir`: `master.m3u8`, one folder per rendition,
/// `poster.jpg`/`poster.webp` and `storyboard.jpg`/`storyboard.vtt`.
pub fn transcode(
    input: &Path,
    probe: &VideoProbe,
    out_dir: &Path,
    options: &TranscodeOptions,
    progress: Progress<'_>,
    cancel: &std::sync::atomic::AtomicBool,
) -> Result<TranscodeOutput, MediaError> {
    let mut ictx = open_input(input, Kind::Video)?;
    let vstream = ictx
        .streams()
        .best(media::Type::Video)
        .ok_or_else(|| MediaError::Invalid("the file has no video track".into()))?;
    let v_index = vstream.index();
    let in_tb = vstream.time_base();
    let start_pts = if vstream.start_time() == ff::ffi::AV_NOPTS_VALUE {
        0
    } else {
        vstream.start_time()
    };
    let mut vctx =
        codec::context::Context::from_parameters(vstream.parameters()).map_err(unreadable)?;
    vctx.set_threading(codec::threading::Config {
        kind: codec::threading::Type::Frame,
        count: 0,
        ..Default::default()
    });
    let limits = options.limits;
    let mut decoder = open_video_decoder(vctx, &limits).map_err(unreadable)?;
    decoder.set_packet_time_base(in_tb);
    let frame_rate = if probe.frame_rate > 0.0 {
        probe.frame_rate
    } else {
        30.0
    };
    let frame_rate_q = [vstream.avg_frame_rate(), vstream.rate()]
        .into_iter()
        .find(|r| r.numerator() > 0 && r.denominator() > 0)
        .unwrap_or(Rational::new(30, 1));

    let rungs = ladder(probe.width, probe.height, frame_rate);

    // Audio: decoded, resampled to 48 kHz stereo float, and encoded once.
    let mut audio = match ictx.streams().best(media::Type::Audio) {
        Some(astream) => Some(open_audio(&astream)?),
        None => None,
    };

    // The ladder graph: rotation, split, one scale per rung.
    let pixel = decoder.format();
    let aspect = decoder.aspect_ratio();
    let aspect = if aspect.numerator() > 0 {
        aspect
    } else {
        Rational::new(1, 1)
    };
    let buffer_args = format!(
        "video_size={}x{}:pix_fmt={}:time_base={}/{}:pixel_aspect={}/{}",
        decoder.width(),
        decoder.height(),
        pixel
            .descriptor()
            .map(|d| d.name())
            .ok_or_else(|| MediaError::Invalid("the video's pixel format is unknown".into()))?,
        in_tb.numerator(),
        in_tb.denominator(),
        aspect.numerator(),
        aspect.denominator()
    );
    let mut graph = filter::Graph::new();
    add_filter(&mut graph, "buffer", "in", &buffer_args)?;
    let mut spec = format!(
        "[in]{}split={}",
        rotation_filters(probe.rotation),
        rungs.len()
    );
    for i in 0..rungs.len() {
        spec.push_str(&format!("[s{i}]"));
    }
    for (i, rung) in rungs.iter().enumerate() {
        add_filter(&mut graph, "buffersink", &format!("out{i}"), "")?;
        spec.push_str(&format!(
            ";[s{i}]scale={}:{}:flags=bicubic,format=yuv420p[out{i}]",
            rung.width, rung.height
        ));
    }
    {
        let mut parser = graph
            .output("in", 0)
            .map_err(failed("ladder filter (source)"))?;
        for i in 0..rungs.len() {
            parser = parser
                .input(&format!("out{i}"), 0)
                .map_err(failed("ladder filter (sinks)"))?;
        }
        parser
            .parse(&spec)
            .map_err(|e| MediaError::Processing(format!("ladder filter {spec:?}: {e}")))?;
    }
    graph
        .validate()
        .map_err(failed("ladder filter (validate)"))?;
    let filtered_tb = graph
        .get("out0")
        .map(|mut s| s.sink().time_base())
        .unwrap_or(in_tb);

    // One encoder and one HLS muxer per rendition.
    let x264 = codec::encoder::find_by_name("libx264")
        .ok_or_else(|| MediaError::Processing("this FFmpeg build has no libx264 encoder".into()))?;
    let mut outputs = Vec::with_capacity(rungs.len());
    for (i, rung) in rungs.iter().enumerate() {
        let name = format!("{}p", rung.lines);
        let dir = out_dir.join(&name);
        std::fs::create_dir_all(&dir).map_err(MediaError::io)?;
        let playlist = dir.join("index.m3u8");
        let mut octx = format::output_as(&playlist, "hls").map_err(failed("HLS muxer"))?;
        let global = octx.format().flags().contains(format::Flags::GLOBAL_HEADER);
        let mut enc = codec::context::Context::new_with_codec(x264)
            .encoder()
            .video()
            .map_err(failed("H.264 encoder"))?;
        enc.set_width(rung.width);
        enc.set_height(rung.height);
        enc.set_format(format::Pixel::YUV420P);
        enc.set_time_base(filtered_tb);
        enc.set_frame_rate(Some(frame_rate_q));
        enc.set_aspect_ratio(Rational::new(1, 1));
        enc.set_gop(gop_frames(frame_rate));
        enc.set_max_bit_rate(rung.max_video_bitrate as usize);
        if global {
            enc.set_flags(codec::Flags::GLOBAL_HEADER);
        }
        let mut enc_opts = x264_options(rung, frame_rate, &options.settings);
        enc_opts.push(("threads".into(), "auto".into()));
        let encoder = enc
            .open_as_with(x264, dictionary(&enc_opts))
            .map_err(failed("opening the H.264 encoder"))?;
        {
            let mut ost = octx.add_stream(x264).map_err(failed("HLS muxer"))?;
            ost.set_parameters(&encoder);
            ost.set_time_base(filtered_tb);
        }
        if let Some(a) = &audio {
            let mut ost = octx
                .add_stream(codec::encoder::find(codec::Id::AAC))
                .map_err(failed("HLS muxer"))?;
            ost.set_parameters(&a.encoder);
            ost.set_time_base(Rational::new(1, AUDIO_RATE));
        }
        let segment_pattern = dir.join("seg_%05d.ts");
        let hls_opts = vec![
            ("hls_time".to_owned(), SEGMENT_SECS.to_string()),
            ("hls_playlist_type".to_owned(), "vod".to_owned()),
            ("hls_list_size".to_owned(), "0".to_owned()),
            ("hls_flags".to_owned(), "independent_segments".to_owned()),
            (
                "hls_segment_filename".to_owned(),
                segment_pattern.to_string_lossy().into_owned(),
            ),
        ];
        octx.write_header_with(dictionary(&hls_opts))
            .map_err(failed("writing the HLS header"))?;
        let video_tb = octx.stream(0).map_or(filtered_tb, |s| s.time_base());
        let audio_tb = octx
            .stream(1)
            .map_or(Rational::new(1, AUDIO_RATE), |s| s.time_base());
        outputs.push(VideoOut {
            encoder,
            octx,
            sink: format!("out{i}"),
            video_tb,
            audio_tb,
            rung: *rung,
            name,
        });
    }

    // Poster and storyboard: a few selected decoded frames go through small graphs of their own.
    let display = (probe.width.max(2), probe.height.max(2));
    let poster_size = fit(display, POSTER_MAX_SIDE);
    let tile_height = even(f64::from(TILE_WIDTH) * f64::from(display.1) / f64::from(display.0));
    let interval = if probe.duration_secs > 0.0 {
        (probe.duration_secs / MAX_STORYBOARD_TILES as f64).max(1.0)
    } else {
        10.0
    };
    let poster_at = (probe.duration_secs * 0.1).min(10.0);
    let mut poster_graph = if options.poster {
        Some(Snapshotter::new(
            &buffer_args,
            probe.rotation,
            poster_size.0,
            poster_size.1,
        )?)
    } else {
        None
    };
    let mut tile_graph = if options.storyboard {
        Some(Snapshotter::new(
            &buffer_args,
            probe.rotation,
            TILE_WIDTH,
            tile_height,
        )?)
    } else {
        None
    };
    let mut poster: Option<image::RgbImage> = None;
    let mut tiles: Vec<image::RgbImage> = Vec::new();
    let mut next_tile_at = 0.0f64;

    let mut decoded = frame::Video::empty();
    let mut filtered = frame::Video::empty();
    let mut encoded = Packet::empty();
    let mut last_reported = -1.0f64;
    let duration = probe.duration_secs;
    let mut report = |secs: f64, progress: &mut dyn FnMut(f64)| {
        if duration > 0.0 {
            let fraction = (secs / duration).clamp(0.0, 1.0);
            if fraction - last_reported >= 0.01 {
                last_reported = fraction;
                progress(fraction);
            }
        }
    };

    // The real duration, counted on what is decoded: timestamps and frames, never the header.
    let max_frames = limits.max_frames();
    let mut frames_decoded: u64 = 0;
    let mut handle_decoded = |decoded: &mut frame::Video,
                              graph: &mut filter::Graph,
                              outputs: &mut Vec<VideoOut>,
                              progress: &mut dyn FnMut(f64)|
     -> Result<(), MediaError> {
        let ts = decoded.timestamp();
        decoded.set_pts(ts);
        let t = ts.map_or(0.0, |p| (p - start_pts) as f64 * f64::from(in_tb));
        frames_decoded += 1;
        if t > limits.max_duration_secs + DURATION_SLACK_SECS {
            return Err(limits.too_long(t));
        }
        if frames_decoded > max_frames {
            return Err(limits.too_long(frames_decoded as f64 / limits.max_frame_rate));
        }
        if probe.rotation % 180 == 90 {
            limits.check_picture(decoded.height(), decoded.width())?;
        } else {
            limits.check_picture(decoded.width(), decoded.height())?;
        }
        if let Some(g) = poster_graph.as_mut()
            && poster.is_none()
            && t >= poster_at
        {
            poster = g.take(decoded)?;
        }
        if let Some(g) = tile_graph.as_mut()
            && tiles.len() < MAX_STORYBOARD_TILES
            && t >= next_tile_at
        {
            if let Some(tile) = g.take(decoded)? {
                tiles.push(tile);
            }
            next_tile_at = tiles.len() as f64 * interval;
        }
        graph
            .get("in")
            .ok_or_else(|| MediaError::Processing("ladder filter lost its input".into()))?
            .source()
            .add(decoded)
            .map_err(failed("ladder filter"))?;
        drain_ladder(graph, outputs, &mut filtered, &mut encoded, false)?;
        report(t, progress);
        Ok(())
    };

    for (stream, mut packet) in ictx.packets() {
        if cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(MediaError::Cancelled);
        }
        let index = stream.index();
        // Any stream (audio too) running past the limit stops the work before it is decoded.
        if let Some(pts) = packet.pts() {
            let stream_start = if stream.start_time() == ff::ffi::AV_NOPTS_VALUE {
                0
            } else {
                stream.start_time()
            };
            let t = (pts - stream_start) as f64 * f64::from(stream.time_base());
            if t > limits.max_duration_secs + DURATION_SLACK_SECS {
                return Err(limits.too_long(t));
            }
        }
        if index == v_index {
            packet.rescale_ts(stream.time_base(), in_tb);
            if let Err(e) = decoder.send_packet(&packet) {
                tracing::debug!(error = %e, "skipping an undecodable video packet");
            }
            while decoder.receive_frame(&mut decoded).is_ok() {
                handle_decoded(&mut decoded, &mut graph, &mut outputs, progress)?;
            }
        } else if let Some(a) = audio.as_mut()
            && index == a.index
        {
            a.feed(Some(&packet), &mut outputs)?;
        }
    }
    // End of input: flush the decoder, the graph, then the encoders.
    let _ = decoder.send_eof();
    while decoder.receive_frame(&mut decoded).is_ok() {
        handle_decoded(&mut decoded, &mut graph, &mut outputs, progress)?;
    }
    graph
        .get("in")
        .ok_or_else(|| MediaError::Processing("ladder filter lost its input".into()))?
        .source()
        .flush()
        .map_err(failed("ladder filter"))?;
    drain_ladder(&mut graph, &mut outputs, &mut filtered, &mut encoded, true)?;
    if let Some(a) = audio.as_mut() {
        a.feed(None, &mut outputs)?;
    }
    for out in &mut outputs {
        out.octx
            .write_trailer()
            .map_err(failed("finishing the HLS playlist"))?;
    }
    progress(1.0);

    // Renditions as written: bandwidth measured from the segments.
    let mut renditions = Vec::with_capacity(outputs.len());
    for out in &outputs {
        let dir = out_dir.join(&out.name);
        let (peak, average, segments, secs) = measure_bandwidth(&dir)?;
        renditions.push(Rendition {
            name: out.name.clone(),
            width: out.rung.width,
            height: out.rung.height,
            bandwidth: peak,
            average_bandwidth: average,
            codecs: codecs_string(&out.rung, frame_rate, audio.is_some()),
            segments,
            duration_secs: secs,
        });
    }
    drop(outputs);
    let master = PathBuf::from("master.m3u8");
    std::fs::write(
        out_dir.join(&master),
        master_playlist(&renditions, frame_rate),
    )
    .map_err(MediaError::io)?;

    let poster = match poster {
        Some(img) => {
            let p = Poster {
                width: img.width(),
                height: img.height(),
            };
            super::image::write_jpeg_and_webp(
                &image::DynamicImage::ImageRgb8(img),
                &out_dir.join("poster"),
            )?;
            Some(p)
        }
        None if options.poster => {
            return Err(MediaError::Invalid(
                "no frame of the video could be decoded for the poster".into(),
            ));
        }
        None => None,
    };
    let storyboard = if tiles.is_empty() {
        None
    } else {
        Some(write_storyboard(
            &tiles,
            TILE_WIDTH,
            tile_height,
            interval,
            probe.duration_secs,
            out_dir,
        )?)
    };
    Ok(TranscodeOutput {
        renditions,
        master,
        poster,
        storyboard,
    })
}

/// Pulls every frame the ladder graph has ready into the encoders, and their packets into the
/// muxers. Every sink is drained each time, so no branch of `split` queues frames.
fn drain_ladder(
    graph: &mut filter::Graph,
    outputs: &mut [VideoOut],
    filtered: &mut frame::Video,
    encoded: &mut Packet,
    eof: bool,
) -> Result<(), MediaError> {
    for out in outputs.iter_mut() {
        let mut sink = graph
            .get(&out.sink)
            .ok_or_else(|| MediaError::Processing("ladder filter lost an output".into()))?;
        while sink.sink().frame(filtered).is_ok() {
            filtered.set_kind(ff::picture::Type::None);
            out.encoder
                .send_frame(filtered)
                .map_err(failed("H.264 encoder"))?;
            write_video_packets(out, encoded)?;
        }
        if eof {
            out.encoder.send_eof().map_err(failed("H.264 encoder"))?;
            write_video_packets(out, encoded)?;
        }
    }
    Ok(())
}

fn write_video_packets(out: &mut VideoOut, encoded: &mut Packet) -> Result<(), MediaError> {
    let enc_tb = out.encoder.time_base();
    while out.encoder.receive_packet(encoded).is_ok() {
        encoded.set_stream(0);
        encoded.rescale_ts(enc_tb, out.video_tb);
        encoded
            .write_interleaved(&mut out.octx)
            .map_err(failed("writing a video segment"))?;
    }
    Ok(())
}

fn open_audio(astream: &format::stream::Stream) -> Result<AudioPath, MediaError> {
    let index = astream.index();
    let mut actx = codec::context::Context::from_parameters(astream.parameters())
        .map_err(failed("audio decoder"))?;
    actx.set_threading(codec::threading::Config {
        kind: codec::threading::Type::Frame,
        count: 0,
        ..Default::default()
    });
    let mut decoder = actx
        .decoder()
        .audio()
        .map_err(|e| MediaError::Invalid(format!("the audio track cannot be decoded: {e}")))?;
    decoder.set_packet_time_base(astream.time_base());
    let aac = codec::encoder::find(codec::Id::AAC)
        .ok_or_else(|| MediaError::Processing("this FFmpeg build has no AAC encoder".into()))?;
    let mut enc = codec::context::Context::new_with_codec(aac)
        .encoder()
        .audio()
        .map_err(failed("AAC encoder"))?;
    enc.set_rate(AUDIO_RATE);
    enc.set_channel_layout(ff::ChannelLayout::STEREO);
    enc.set_format(format::Sample::F32(format::sample::Type::Planar));
    enc.set_bit_rate(AUDIO_BITRATE);
    enc.set_time_base(Rational::new(1, AUDIO_RATE));
    // MPEG-TS carries ADTS headers, so no global header for the audio.
    let encoder = enc
        .open_as_with(aac, Dictionary::new())
        .map_err(failed("opening the AAC encoder"))?;

    let layout = decoder.channel_layout();
    let layout_bits = if layout.bits() != 0 {
        layout.bits()
    } else {
        ff::ChannelLayout::default(i32::from(decoder.channels().max(1))).bits()
    };
    let args = format!(
        "time_base={}/{}:sample_rate={}:sample_fmt={}:channel_layout=0x{:x}",
        astream.time_base().numerator(),
        astream.time_base().denominator(),
        decoder.rate(),
        decoder.format().name(),
        layout_bits
    );
    let mut graph = filter::Graph::new();
    add_filter(&mut graph, "abuffer", "in", &args)?;
    add_filter(&mut graph, "abuffersink", "out", "")?;
    graph
        .output("in", 0)
        .and_then(|p| p.input("out", 0))
        .and_then(|p| {
            p.parse(&format!(
                "aresample={AUDIO_RATE},aformat=sample_fmts=fltp:sample_rates={AUDIO_RATE}:channel_layouts=stereo"
            ))
        })
        .map_err(failed("audio filter"))?;
    graph.validate().map_err(failed("audio filter"))?;
    if let Some(mut sink) = graph.get("out") {
        sink.sink().set_frame_size(encoder.frame_size().max(1));
    }
    Ok(AudioPath {
        index,
        decoder,
        graph,
        encoder,
    })
}

impl AudioPath {
    /// Decodes a packet (or flushes everything on `None`) and writes the AAC packets into every
    /// rendition.
    fn feed(
        &mut self,
        packet: Option<&Packet>,
        outputs: &mut [VideoOut],
    ) -> Result<(), MediaError> {
        let mut decoded = frame::Audio::empty();
        match packet {
            Some(p) => {
                if let Err(e) = self.decoder.send_packet(p) {
                    tracing::debug!(error = %e, "skipping an undecodable audio packet");
                }
            }
            None => {
                let _ = self.decoder.send_eof();
            }
        }
        while self.decoder.receive_frame(&mut decoded).is_ok() {
            let ts = decoded.timestamp();
            decoded.set_pts(ts);
            self.graph
                .get("in")
                .ok_or_else(|| MediaError::Processing("audio filter lost its input".into()))?
                .source()
                .add(&decoded)
                .map_err(failed("audio filter"))?;
            self.drain(outputs)?;
        }
        if packet.is_none() {
            self.graph
                .get("in")
                .ok_or_else(|| MediaError::Processing("audio filter lost its input".into()))?
                .source()
                .flush()
                .map_err(failed("audio filter"))?;
            self.drain(outputs)?;
            self.encoder.send_eof().map_err(failed("AAC encoder"))?;
            self.write_packets(outputs)?;
        }
        Ok(())
    }

    fn drain(&mut self, outputs: &mut [VideoOut]) -> Result<(), MediaError> {
        let mut resampled = frame::Audio::empty();
        let sink_tb = self
            .graph
            .get("out")
            .map_or(Rational::new(1, AUDIO_RATE), |mut s| s.sink().time_base());
        while let Some(mut sink) = self.graph.get("out") {
            if sink.sink().frame(&mut resampled).is_err() {
                break;
            }
            if let Some(pts) = resampled.pts() {
                resampled.set_pts(Some(pts.rescale(sink_tb, Rational::new(1, AUDIO_RATE))));
            }
            self.encoder
                .send_frame(&resampled)
                .map_err(failed("AAC encoder"))?;
            self.write_packets(outputs)?;
        }
        Ok(())
    }

    fn write_packets(&mut self, outputs: &mut [VideoOut]) -> Result<(), MediaError> {
        let mut packet = Packet::empty();
        while self.encoder.receive_packet(&mut packet).is_ok() {
            for out in outputs.iter_mut() {
                let mut copy = packet.clone();
                copy.set_stream(1);
                copy.rescale_ts(Rational::new(1, AUDIO_RATE), out.audio_tb);
                copy.write_interleaved(&mut out.octx)
                    .map_err(failed("writing an audio segment"))?;
            }
        }
        Ok(())
    }
}

use ff::Rescale as _;

/// The largest size with the same aspect whose long side is at most `max` (never upscaled).
fn fit((w, h): (u32, u32), max: u32) -> (u32, u32) {
    let long = w.max(h);
    if long <= max {
        return (even(f64::from(w)), even(f64::from(h)));
    }
    let scale = f64::from(max) / f64::from(long);
    (even(f64::from(w) * scale), even(f64::from(h) * scale))
}

/// (peak, average, segment count, total seconds) of a rendition, from its playlist and segments.
fn measure_bandwidth(dir: &Path) -> Result<(u64, u64, usize, f64), MediaError> {
    let playlist = std::fs::read_to_string(dir.join("index.m3u8")).map_err(MediaError::io)?;
    let segments = parse_media_playlist(&playlist);
    if segments.is_empty() {
        return Err(MediaError::Invalid(
            "the video produced no segment (no frame could be encoded)".into(),
        ));
    }
    let (mut peak, mut bits, mut secs) = (0f64, 0f64, 0f64);
    for (duration, uri) in &segments {
        let size = std::fs::metadata(dir.join(uri))
            .map_err(MediaError::io)?
            .len() as f64
            * 8.0;
        // A very short last segment says little about the peak rate.
        if *duration >= 1.0 || segments.len() == 1 {
            peak = peak.max(size / duration.max(0.001));
        }
        bits += size;
        secs += duration;
    }
    let average = if secs > 0.0 { bits / secs } else { 0.0 };
    Ok((
        peak.max(average).ceil() as u64,
        average.ceil() as u64,
        segments.len(),
        secs,
    ))
}

/// (EXTINF duration, URI) of every segment of a media playlist.
pub fn parse_media_playlist(text: &str) -> Vec<(f64, String)> {
    let mut out = Vec::new();
    let mut pending: Option<f64> = None;
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("#EXTINF:") {
            pending = rest
                .split(',')
                .next()
                .and_then(|d| d.trim().parse::<f64>().ok());
        } else if !line.is_empty()
            && !line.starts_with('#')
            && let Some(d) = pending.take()
        {
            out.push((d, line.to_owned()));
        }
    }
    out
}

/// The master playlist: one `EXT-X-STREAM-INF` per rendition, highest first.
pub fn master_playlist(renditions: &[Rendition], frame_rate: f64) -> String {
    let mut s = String::from("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-INDEPENDENT-SEGMENTS\n");
    for r in renditions {
        s.push_str(&format!(
            "#EXT-X-STREAM-INF:BANDWIDTH={},AVERAGE-BANDWIDTH={},RESOLUTION={}x{},FRAME-RATE={:.3},CODECS=\"{}\"\n{}/index.m3u8\n",
            r.bandwidth, r.average_bandwidth, r.width, r.height, frame_rate, r.codecs, r.name
        ));
    }
    s
}

/// The storyboard: tiles in rows of [`STORYBOARD_COLUMNS`] on one JPEG, and a WebVTT track
/// whose cues point at the tiles (`storyboard.jpg#xywh=x,y,w,h`).
fn write_storyboard(
    tiles: &[image::RgbImage],
    tile_width: u32,
    tile_height: u32,
    interval: f64,
    duration: f64,
    out_dir: &Path,
) -> Result<Storyboard, MediaError> {
    let columns = STORYBOARD_COLUMNS.min(tiles.len()).max(1);
    let rows = tiles.len().div_ceil(columns);
    let mut sheet = image::RgbImage::new(tile_width * columns as u32, tile_height * rows as u32);
    let mut vtt = String::from("WEBVTT\n\n");
    for (i, tile) in tiles.iter().enumerate() {
        let (x, y) = (
            (i % columns) as u32 * tile_width,
            (i / columns) as u32 * tile_height,
        );
        image::imageops::replace(&mut sheet, tile, i64::from(x), i64::from(y));
        let start = i as f64 * interval;
        let end = if i + 1 == tiles.len() && duration > start {
            duration
        } else {
            (i + 1) as f64 * interval
        };
        vtt.push_str(&format!(
            "{} --> {}\nstoryboard.jpg#xywh={x},{y},{tile_width},{tile_height}\n\n",
            vtt_time(start),
            vtt_time(end)
        ));
    }
    sheet
        .save_with_format(out_dir.join("storyboard.jpg"), image::ImageFormat::Jpeg)
        .map_err(|e| MediaError::Processing(format!("writing the storyboard: {e}")))?;
    std::fs::write(out_dir.join("storyboard.vtt"), vtt).map_err(MediaError::io)?;
    Ok(Storyboard {
        tiles: tiles.len(),
        columns,
        tile_width,
        tile_height,
        interval_secs: interval,
    })
}

fn vtt_time(secs: f64) -> String {
    let ms = (secs.max(0.0) * 1000.0).round() as u64;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        (ms / 60_000) % 60,
        (ms / 1000) % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
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
