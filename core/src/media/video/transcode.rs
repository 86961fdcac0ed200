//! The transcode: one decode feeding the ladder's encoders and muxers, the audio path, the
//! poster and the storyboard.

use std::path::Path;

use ff::{Packet, Rational, codec, filter, format, frame, media};

use super::audio::open_audio;
use super::hls::measure_bandwidth;
use super::ladder::even;
use super::pictures::{Snapshotter, fit, write_storyboard};
use super::probe::{open_video_decoder, unreadable};
use super::*;
use crate::media::{Kind, MediaError};

pub(super) struct VideoOut {
    pub(super) encoder: codec::encoder::video::Encoder,
    pub(super) octx: format::context::Output,
    pub(super) sink: String,
    pub(super) video_tb: Rational,
    pub(super) audio_tb: Rational,
    pub(super) rung: Rung,
    pub(super) name: String,
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
            crate::media::image::write_jpeg_and_webp(
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
pub(super) fn drain_ladder(
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

pub(super) fn write_video_packets(
    out: &mut VideoOut,
    encoded: &mut Packet,
) -> Result<(), MediaError> {
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
