//! HLS playlists: the master playlist, and what each rendition's media playlist holds.

use std::path::Path;

use super::*;

/// (peak, average, segment count, total seconds) of a rendition, from its playlist and segments.
pub(super) fn measure_bandwidth(dir: &Path) -> Result<(u64, u64, usize, f64), MediaError> {
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
