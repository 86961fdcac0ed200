//! Media benchmarks (run with `scripts/bench media`, release build). Prints figures; asserts nothing.
//!
//! 1. The HLS ladder of a 60-second 1080p30 source: Lectern's in-process pipeline (one decode,
//!    `split`, one libx264 `veryfast` encoder per rung, AAC once) against the `ffmpeg` command line
//!    doing the same ladder in one run with the same encoder settings. Target: ratio <= 1.05.
//! 2. Thumbnails of a 24-megapixel JPEG: time and peak memory (VmHWM of a fresh process) of a
//!    300-pixel thumbnail beside `vipsthumbnail -s 300` (libvips; target: at least half its
//!    speed, at most twice its peak memory), of the whole image job, and of a full-size decode.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use lectern_core::media::{image as media_image, video};

fn ffmpeg(args: &[&str]) -> std::time::Duration {
    let started = Instant::now();
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .output()
        .expect("the ffmpeg command line");
    assert!(
        out.status.success(),
        "ffmpeg failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    started.elapsed()
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The command-line equivalent of [`video::transcode`]'s ladder (no poster, no storyboard).
fn cli_ladder(source: &Path, probe: &video::VideoProbe, out: &Path) -> Vec<String> {
    let rungs = video::ladder(probe.width, probe.height, probe.frame_rate);
    let settings = video::EncodeSettings::default();
    let mut filter = format!(
        "[0:v]{}split={}",
        video::rotation_filters(probe.rotation),
        rungs.len()
    );
    for i in 0..rungs.len() {
        filter.push_str(&format!("[s{i}]"));
    }
    for (i, r) in rungs.iter().enumerate() {
        filter.push_str(&format!(
            ";[s{i}]scale={}:{}:flags=bicubic,format=yuv420p[v{i}]",
            r.width, r.height
        ));
    }
    let mut args: Vec<String> = vec![
        "-noautorotate".into(),
        "-i".into(),
        source.to_string_lossy().into_owned(),
        "-filter_complex".into(),
        filter,
    ];
    for (i, r) in rungs.iter().enumerate() {
        let dir = out.join(format!("{}p", r.lines));
        std::fs::create_dir_all(&dir).unwrap();
        args.extend(["-map".into(), format!("[v{i}]")]);
        if probe.has_audio {
            args.extend(["-map".into(), "0:a:0".into()]);
        }
        args.extend(["-c:v".into(), "libx264".into()]);
        for (k, v) in video::x264_options(r, probe.frame_rate, &settings) {
            let key = match k.as_str() {
                "profile" => "profile:v".to_owned(),
                other => other.to_owned(),
            };
            args.extend([format!("-{key}"), v]);
        }
        args.extend(["-g".into(), video::gop_frames(probe.frame_rate).to_string()]);
        if probe.has_audio {
            args.extend(
                ["-c:a", "aac", "-b:a", "128k", "-ar", "48000", "-ac", "2"].map(String::from),
            );
        }
        args.extend(
            [
                "-f",
                "hls",
                "-hls_time",
                "6",
                "-hls_playlist_type",
                "vod",
                "-hls_list_size",
                "0",
                "-hls_flags",
                "independent_segments",
            ]
            .map(String::from),
        );
        args.extend([
            "-hls_segment_filename".into(),
            dir.join("seg_%05d.ts").to_string_lossy().into_owned(),
            dir.join("index.m3u8").to_string_lossy().into_owned(),
        ]);
    }
    args
}

fn ours(source: &Path, probe: &video::VideoProbe, out: &Path, extras: bool) -> std::time::Duration {
    let _ = std::fs::remove_dir_all(out);
    std::fs::create_dir_all(out).unwrap();
    let options = video::TranscodeOptions {
        poster: extras,
        storyboard: extras,
        ..Default::default()
    };
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let started = Instant::now();
    let output =
        video::transcode(source, probe, out, &options, &mut |_| {}, &cancel).expect("transcode");
    let elapsed = started.elapsed();
    assert_eq!(output.renditions.len(), 4);
    elapsed
}

fn cli(source: &Path, probe: &video::VideoProbe, out: &Path) -> std::time::Duration {
    let _ = std::fs::remove_dir_all(out);
    std::fs::create_dir_all(out).unwrap();
    let args = cli_ladder(source, probe, out);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ffmpeg(&args)
}

fn video_bench(dir: &Path) {
    let source = dir.join("source-1080p30-60s.mp4");
    if !source.exists() {
        println!("making a 60 s 1080p30 source (testsrc2 + tone, x264 crf 18)...");
        ffmpeg(&[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=1920x1080:rate=30:duration=60",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:duration=60",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-crf",
            "18",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-shortest",
            source.to_str().unwrap(),
        ]);
    }
    compare(
        dir,
        &source,
        "with audio (AAC once in lectern, once per rendition in the CLI)",
    );
    let silent = dir.join("source-1080p30-60s-silent.mp4");
    if !silent.exists() {
        ffmpeg(&[
            "-i",
            source.to_str().unwrap(),
            "-an",
            "-c:v",
            "copy",
            silent.to_str().unwrap(),
        ]);
    }
    compare(dir, &silent, "video only (the same work on both sides)");
}

fn compare(dir: &Path, source: &Path, label: &str) {
    let source = source.to_path_buf();
    let probe = video::probe(&source).expect("probe");
    println!("--- {label}");
    println!(
        "source: {}x{} {:.2} fps {:.1} s, {} + {:?}",
        probe.width,
        probe.height,
        probe.frame_rate,
        probe.duration_secs,
        probe.video_codec,
        probe.audio_codec
    );
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let (mut lectern, mut command_line, mut full) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        // Alternate, so a noisy neighbour hurts both sides alike.
        let c = cli(&source, &probe, &dir.join("cli"));
        let l = ours(&source, &probe, &dir.join("ours"), false);
        let f = ours(&source, &probe, &dir.join("ours-full"), true);
        println!(
            "round {round}: lectern ladder {:.2} s, ffmpeg CLI {:.2} s, ratio {:.3}; with poster + storyboard {:.2} s",
            l.as_secs_f64(),
            c.as_secs_f64(),
            l.as_secs_f64() / c.as_secs_f64(),
            f.as_secs_f64()
        );
        lectern.push(l.as_secs_f64());
        command_line.push(c.as_secs_f64());
        full.push(f.as_secs_f64());
    }
    let best = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "HLS ladder {label}, 60 s 1080p30 -> 1080p/720p/480p/360p (x264 veryfast, one decode):\n  lectern {:.2} s  ffmpeg CLI {:.2} s  ratio {:.3} (best of {rounds}; target <= 1.05)\n  lectern with poster + storyboard {:.2} s (ratio {:.3})",
        best(&lectern),
        best(&command_line),
        best(&lectern) / best(&command_line),
        best(&full),
        best(&full) / best(&command_line)
    );
    for d in ["cli", "ours", "ours-full"] {
        let _ = std::fs::remove_dir_all(dir.join(d));
    }
}

/// Child mode: one image in a fresh process; prints elapsed ms, peak RSS and baseline RSS (KiB).
fn image_child(path: &Path, mode: &str) {
    let out = std::env::temp_dir().join(format!("lectern-bench-img-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    let limits = media_image::ImageLimits {
        max_pixels: 100_000_000,
        ..Default::default()
    };
    let base = peak_rss_kib();
    let started = Instant::now();
    match mode {
        // What `vipsthumbnail -s 300` makes: one 300-pixel JPEG.
        "--image-thumbnail" => {
            let decoded =
                media_image::decode(path, &limits, media_image::THUMBNAIL_SIDE).expect("decode");
            let thumb = decoded.image.thumbnail(300, 300).to_rgb8();
            thumb.save(out.join("thumbnail.jpg")).expect("encode");
        }
        // For comparison: the whole job after a full-size decode.
        "--image-full" => {
            let img = image::open(path).expect("decode");
            let thumb = img.thumbnail(300, 300);
            media_image::write_jpeg_and_webp(&thumb, &out.join("thumbnail")).unwrap();
            let preview = img.thumbnail(1280, 1280);
            media_image::write_jpeg_and_webp(&preview, &out.join("preview")).unwrap();
        }
        // The image job: thumbnail and preview, JPEG and WebP each.
        _ => {
            media_image::process(path, &limits, &out).expect("process");
        }
    }
    let elapsed = started.elapsed();
    println!("{} {} {}", elapsed.as_millis(), peak_rss_kib(), base);
    let _ = std::fs::remove_dir_all(&out);
}

/// Runs `command` under GNU time: (wall ms, peak RSS KiB), or None when either is missing.
fn timed_peak(command: &[&str]) -> Option<(u64, u64)> {
    let started = Instant::now();
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%M"])
        .args(command)
        .output()
        .ok()?;
    let ms = started.elapsed().as_millis() as u64;
    if !out.status.success() {
        return None;
    }
    let kib: u64 = String::from_utf8_lossy(&out.stderr)
        .lines()
        .last()?
        .trim()
        .parse()
        .ok()?;
    Some((ms, kib))
}

fn image_bench(dir: &Path) {
    let jpeg = dir.join("photo-24mp.jpg");
    if !jpeg.exists() {
        ffmpeg(&[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=6000x4000",
            "-frames:v",
            "1",
            "-q:v",
            "3",
            jpeg.to_str().unwrap(),
        ]);
    }
    let size = std::fs::metadata(&jpeg).map(|m| m.len()).unwrap_or(0);
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    println!(
        "24 MP JPEG ({:.1} MB), best of {rounds} fresh processes:",
        size as f64 / 1e6
    );
    let me = std::env::current_exe().unwrap();
    let mut figures = std::collections::HashMap::new();
    for (mode, label) in [
        ("--image-thumbnail", "lectern, 300 px thumbnail (JPEG)"),
        (
            "--image",
            "lectern, image job (thumbnail + 1280 preview, JPEG + WebP)",
        ),
        ("--image-full", "full-size decode, same outputs (reference)"),
    ] {
        let mut best: Option<(u64, u64)> = None;
        for _ in 0..rounds {
            let out = Command::new(&me).arg(mode).arg(&jpeg).output().unwrap();
            let nums: Vec<u64> = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
            if nums.len() != 3 {
                println!(
                    "  {label}: failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                break;
            }
            let run = (nums[0], nums[1]);
            best = Some(best.map_or(run, |b: (u64, u64)| (b.0.min(run.0), b.1.min(run.1))));
        }
        if let Some((ms, kib)) = best {
            println!(
                "  {label}: {ms} ms, peak RSS {:.1} MiB",
                kib as f64 / 1024.0
            );
            figures.insert(mode, (ms, kib));
        }
    }
    // libvips, the reference of the issue: `vipsthumbnail -s 300` on the same file.
    let thumb_out = dir.join("vips-thumb.jpg");
    let out_arg = format!("--output={}", thumb_out.display());
    let mut vips: Option<(u64, u64)> = None;
    for _ in 0..rounds {
        match timed_peak(&[
            "vipsthumbnail",
            "-s",
            "300",
            &out_arg,
            jpeg.to_str().unwrap(),
        ]) {
            Some(run) => vips = Some(vips.map_or(run, |b| (b.0.min(run.0), b.1.min(run.1)))),
            None => break,
        }
    }
    let _ = std::fs::remove_file(&thumb_out);
    match (vips, figures.get("--image-thumbnail")) {
        (Some((vms, vkib)), Some(&(ms, kib))) => {
            println!(
                "  vipsthumbnail -s 300: {vms} ms, peak RSS {:.1} MiB",
                vkib as f64 / 1024.0
            );
            println!(
                "  lectern thumbnail vs vipsthumbnail: speed {:.2}x (target >= 0.5), peak memory {:.2}x (target <= 2)",
                vms as f64 / ms.max(1) as f64,
                kib as f64 / vkib.max(1) as f64
            );
        }
        _ => println!(
            "  vipsthumbnail or GNU time not found (scripts/bench media installs libvips-tools and time)"
        ),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 3 && args[1].starts_with("--image") {
        image_child(Path::new(&args[2]), &args[1]);
        return;
    }
    let dir: PathBuf = std::env::var("BENCH_MEDIA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir().join("lectern-media-bench"));
    std::fs::create_dir_all(&dir).unwrap();
    video::init();
    let only = args.get(1).map(String::as_str);
    if only != Some("video") {
        image_bench(&dir);
    }
    if only != Some("image") {
        video_bench(&dir);
    }
}
