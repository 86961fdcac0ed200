//! What a video file is: its streams and first decodable frame, read under limits.

use std::path::Path;

use ff::{Dictionary, codec, format, frame, media};
use serde::{Deserialize, Serialize};

use super::{ff, init};
use crate::media::{Kind, MediaError, sniff};

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
    pub(super) coded_width: u32,
    #[serde(skip)]
    pub(super) coded_height: u32,
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
    pub(super) fn max_frames(&self) -> u64 {
        let frames = (self.max_duration_secs * self.max_frame_rate).ceil();
        if frames.is_finite() && frames < u64::MAX as f64 {
            frames as u64 + 1
        } else {
            u64::MAX
        }
    }

    /// The decoder option that makes libavcodec refuse larger pictures before allocating them
    /// (an `int` in FFmpeg: a larger value is refused as out of range).
    pub(super) fn decoder_options(&self) -> Dictionary<'static> {
        let mut options = Dictionary::new();
        options.set(
            "max_pixels",
            &self.max_pixels.min(i32::MAX as u64).to_string(),
        );
        options
    }

    pub(super) fn check_picture(&self, width: u32, height: u32) -> Result<(), MediaError> {
        let pixels = u64::from(width) * u64::from(height);
        if width > self.max_width || height > self.max_height || pixels > self.max_pixels {
            return Err(MediaError::Invalid(format!(
                "the video is {width} × {height} pixels; the largest accepted is {} × {} and {} pixels in all",
                self.max_width, self.max_height, self.max_pixels
            )));
        }
        Ok(())
    }

    pub(super) fn check_frame_rate(&self, rate: f64) -> Result<(), MediaError> {
        if rate > self.max_frame_rate {
            return Err(MediaError::Invalid(format!(
                "the video has {rate:.2} frames per second; the most accepted is {:.0}",
                self.max_frame_rate
            )));
        }
        Ok(())
    }

    pub(super) fn too_long(&self, secs: f64) -> MediaError {
        MediaError::Invalid(format!(
            "the video's real duration passes {secs:.0} s (counted on its decoded frames, whatever its header says); the longest accepted is {:.0} s",
            self.max_duration_secs
        ))
    }
}

/// Opens a video decoder that refuses pictures above the limits' pixel count.
pub(super) fn open_video_decoder(
    ctx: codec::context::Context,
    limits: &VideoLimits,
) -> Result<codec::decoder::Video, ff::Error> {
    let id = ctx.id();
    ctx.decoder()
        .open_as_with(id, limits.decoder_options())
        .and_then(|opened| opened.video())
}

pub(super) fn unreadable(e: ff::Error) -> MediaError {
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
pub(super) fn rotation_of(stream: &format::stream::Stream) -> u32 {
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
