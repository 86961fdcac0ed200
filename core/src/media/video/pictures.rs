//! Still pictures of a video: the poster frame and the storyboard (sprite and WebVTT track).

use std::path::Path;

use ff::{filter, frame};

use super::ladder::even;
use super::*;

/// A small graph that turns selected decoded frames into upright RGB pictures of one size.
pub(super) struct Snapshotter {
    graph: filter::Graph,
}

impl Snapshotter {
    pub(super) fn new(
        buffer_args: &str,
        rotation: u32,
        width: u32,
        height: u32,
    ) -> Result<Self, MediaError> {
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

    pub(super) fn take(
        &mut self,
        decoded: &frame::Video,
    ) -> Result<Option<image::RgbImage>, MediaError> {
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
pub(super) fn rgb_to_image(rgb: &frame::Video) -> Option<image::RgbImage> {
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

/// The largest size with the same aspect whose long side is at most `max` (never upscaled).
pub(super) fn fit((w, h): (u32, u32), max: u32) -> (u32, u32) {
    let long = w.max(h);
    if long <= max {
        return (even(f64::from(w)), even(f64::from(h)));
    }
    let scale = f64::from(max) / f64::from(long);
    (even(f64::from(w) * scale), even(f64::from(h) * scale))
}

/// The storyboard: tiles in rows of [`STORYBOARD_COLUMNS`] on one JPEG, and a WebVTT track
/// whose cues point at the tiles (`storyboard.jpg#xywh=x,y,w,h`).
pub(super) fn write_storyboard(
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

pub(super) fn vtt_time(secs: f64) -> String {
    let ms = (secs.max(0.0) * 1000.0).round() as u64;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        (ms / 60_000) % 60,
        (ms / 1000) % 60,
        ms % 1000
    )
}
