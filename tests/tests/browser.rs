//! The browser proof: a real browser (Debian's chromium, headless, driven over the DevTools
//! protocol by playwright-core) on a page served from another origin uploads videos straight to
//! storage and plays them with hls.js, the way a web frontend does. It fails without CORS on the
//! API (the page cannot read any answer, nor load the playlists) or on the storage endpoint (the
//! presigned PUTs are blocked, and multipart part ETags are unreadable).
//!
//! Lectern runs in local mode (`STORAGE_BACKEND=local`: the API serves the S3 endpoint) with the
//! default CORS set (the frontend origin, plus loopback origins on any port). The npm packages
//! (`tests/browser/package.json`) and chromium come from `scripts/bootstrap.sh`.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lectern_tests::{TestApp, ffmpeg, fixtures, free_port, scratch_dir};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: u64 = 1024 * 1024;

/// Where `scripts/bootstrap.sh` installed the npm packages of `tests/browser/package.json`.
fn node_dir() -> PathBuf {
    std::env::var_os("LECTERN_NODE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("LECTERN_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/var/cache/lectern"))
                .join("node")
        })
}

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

/// A file the page server answers with.
struct StaticFile {
    content_type: &'static str,
    body: Vec<u8>,
}

/// A tiny HTTP server for the page and its files, on a loopback port of its own: an origin
/// other than the API's. Runs until the test's runtime stops.
async fn serve_page(files: HashMap<String, StaticFile>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let origin = format!("http://{}", listener.local_addr().expect("addr"));
    let files = Arc::new(files);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let files = files.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut chunk = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                    if head.len() > 64 * 1024 {
                        return;
                    }
                }
                let text = String::from_utf8_lossy(&head);
                let target = text.split_whitespace().nth(1).unwrap_or("/");
                let path = target.split('?').next().unwrap_or("/");
                let (status, content_type, body): (&str, &str, &[u8]) = match files.get(path) {
                    Some(file) => ("200 OK", file.content_type, &file.body),
                    None => ("404 Not Found", "text/plain", b"not found"),
                };
                let header = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
                     Cache-Control: no-store\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(header.as_bytes()).await;
                let _ = stream.write_all(body).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    origin
}

/// The test videos and the thumbnail: a small one for the single PUT, one above the multipart
/// threshold (two 5 MiB parts) for the multipart upload.
#[rustfmt::skip]
fn make_media(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let single = dir.join("single.mp4");
    let multi = dir.join("multi.mp4");
    let thumbnail = dir.join("thumbnail.png");
    ffmpeg(&[
        "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=25",
        "-f", "lavfi", "-i", "sine=frequency=660:sample_rate=44100",
        "-t", "4", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
        "-c:a", "aac", "-shortest", "-movflags", "+faststart",
        single.to_str().unwrap(),
    ]);
    // Noise at a fixed high bit rate makes four seconds weigh about 7 MB; 400 lines make a
    // ladder of two renditions (400p and 360p).
    ffmpeg(&[
        "-f", "lavfi", "-i", "testsrc2=size=640x400:rate=25",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
        "-t", "4", "-vf", "noise=alls=40:allf=t",
        "-c:v", "libx264", "-preset", "ultrafast", "-b:v", "14M", "-minrate", "14M",
        "-maxrate", "14M", "-bufsize", "4M", "-pix_fmt", "yuv420p",
        "-c:a", "aac", "-shortest", "-movflags", "+faststart",
        multi.to_str().unwrap(),
    ]);
    ffmpeg(&[
        "-f", "lavfi", "-i", "testsrc2=size=640x360", "-frames:v", "1",
        thumbnail.to_str().unwrap(),
    ]);
    (single, multi, thumbnail)
}

fn step<'a>(result: &'a Value, key: &str) -> &'a Value {
    let value = &result[key];
    assert!(!value.is_null(), "no {key} in {result}");
    value
}

fn assert_played_to_the_end(played: &Value, what: &str) {
    assert_eq!(played["ended"], true, "{what}: {played}");
    let duration = played["duration"].as_f64().expect("duration");
    let current = played["currentTime"].as_f64().expect("currentTime");
    assert!(
        (3.5..5.0).contains(&duration) && current >= duration - 0.25,
        "{what}: stopped at {current} of {duration} s: {played}"
    );
    assert!(
        played["levels"].as_u64().unwrap_or(0) >= 1,
        "{what}: {played}"
    );
    assert!(
        played["fragments"].as_u64().unwrap_or(0) >= 1,
        "{what}: {played}"
    );
    let fatal: Vec<&Value> = played["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter(|e| e.as_str().is_some_and(|e| e.contains("fatal")))
        .collect();
    assert!(fatal.is_empty(), "{what}: {played}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_on_another_origin_uploads_and_plays_hls_with_a_real_browser() {
    let node = node_dir();
    for package in ["playwright-core", "hls.js"] {
        assert!(
            node.join("node_modules").join(package).exists(),
            "{} is missing: run scripts/bootstrap.sh (it installs tests/browser/package.json there)",
            node.join("node_modules").join(package).display()
        );
    }
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: run scripts/bootstrap.sh (it installs Debian's chromium)"
    );

    let scratch = scratch_dir("browser");
    let s3_port = free_port().to_string();
    let s3_dir = scratch.join("s3").display().to_string();
    let part = (5 * MIB).to_string();
    let app = TestApp::spawn_with_env(&[
        ("STORAGE_BACKEND", "local"),
        ("LOCAL_S3_PORT", &s3_port),
        ("LOCAL_S3_DIR", &s3_dir),
        ("MEDIA_PART_BYTES", &part),
        ("MEDIA_MULTIPART_THRESHOLD_BYTES", &part),
    ])
    .await;
    app.wait_until_ready().await;
    let (token, instructor) = app.verified_instructor("browser@example.com").await;
    let instructor = instructor.parse().expect("uuid");
    let (course, _) = fixtures::published_course_with_videos(
        &app.db.pool,
        instructor,
        "Watched in a browser",
        "0",
        0,
        0.0,
    )
    .await;
    let section: uuid::Uuid = sqlx::query_scalar("SELECT id FROM sections WHERE course_id = $1")
        .bind(course)
        .fetch_one(&app.db.pool)
        .await
        .expect("the course's section");

    let (single, multi, thumbnail) = make_media(&scratch);
    assert!(
        std::fs::metadata(&multi).expect("multi.mp4").len() > 5 * MIB,
        "the multipart video must exceed the threshold"
    );
    let read = |p: &Path| std::fs::read(p).expect("read");
    let mut files = HashMap::new();
    for (path, content_type, body) in [
        (
            "/page.html",
            "text/html; charset=utf-8",
            read(&browser_dir().join("page.html")),
        ),
        (
            "/hls.min.js",
            "text/javascript",
            read(&node.join("node_modules/hls.js/dist/hls.min.js")),
        ),
        ("/files/single.mp4", "video/mp4", read(&single)),
        ("/files/multi.mp4", "video/mp4", read(&multi)),
        ("/files/thumbnail.png", "image/png", read(&thumbnail)),
    ] {
        files.insert(path.to_owned(), StaticFile { content_type, body });
    }
    let page = serve_page(files).await;
    assert_ne!(page, app.url, "the page is on an origin of its own");

    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(browser_dir().join("run.mjs"))
        .env("LECTERN_API_URL", &app.url)
        .env("LECTERN_PAGE_URL", &page)
        .env("LECTERN_TOKEN", &token)
        .env("LECTERN_COURSE_ID", course.to_string())
        .env("LECTERN_SECTION_ID", section.to_string())
        .env("LECTERN_NODE_DIR", &node)
        .env("CHROMIUM", &chromium)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(150), cmd.output())
        .await
        .expect("the browser run finishes in time")
        .expect("node runs (installed by scripts/bootstrap.sh)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("--- browser run ---\n{report}");
    let result: Value = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .and_then(|json| serde_json::from_str(json).ok())
        .unwrap_or_else(|| panic!("no RESULT line:\n{report}"));
    assert!(
        out.status.success(),
        "the browser run failed:\n{report}\n--- worker log ---\n{}",
        app.worker_log()
    );

    let single = step(&result, "single");
    assert_eq!(single["method"], "put", "{single}");
    let multi = step(&result, "multi");
    assert_eq!(multi["method"], "multipart", "{multi}");
    assert_eq!(multi["parts"], 2, "{multi}");
    let etags = multi["etags"].as_array().expect("etags");
    assert_eq!(etags.len(), 2, "every part's ETag was readable: {multi}");
    assert!(
        etags
            .iter()
            .all(|e| e.as_str().is_some_and(|e| e.len() > 2))
    );
    assert_played_to_the_end(step(&result, "playedSingle"), "the single-PUT video");
    let ladder = step(&result, "playedMulti")
        .as_array()
        .expect("one run per rendition");
    assert_eq!(ladder.len(), 2, "a ladder of two renditions: {ladder:?}");
    for (level, played) in ladder.iter().enumerate() {
        assert_played_to_the_end(played, &format!("rendition {level} of the multipart video"));
        assert_eq!(played["levels"], 2, "{played}");
        assert_eq!(
            played["fragmentLevels"],
            serde_json::json!([level]),
            "every segment from the pinned rendition: {played}"
        );
    }

    // The storefront: an anonymous visitor plays the free preview lesson and sees the thumbnail.
    assert_played_to_the_end(step(&result, "preview"), "the preview lesson");
    let thumb = step(&result, "thumbnail");
    assert!(thumb["naturalWidth"].as_u64().unwrap_or(0) > 0, "{thumb}");
    drop(app);
    let _ = std::fs::remove_dir_all(&scratch);
}
