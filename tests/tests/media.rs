//! The media pipeline end to end: real media made here with the `ffmpeg` command line, uploaded
//! through presigned URLs with a plain HTTP client, processed by the real worker, played back
//! through signed URLs and checked with `ffprobe`/`ffmpeg`.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use lectern_tests::{Options, TestApp};
use serde_json::{Value, json};
use uuid::Uuid;

const JOB_WAIT: Duration = Duration::from_secs(180);

fn access(body: &Value) -> String {
    body["access_token"].as_str().unwrap().to_owned()
}

/// A test pattern video with a tone, `secs` long, `w`x`h`, H.264 + AAC in MP4.
fn make_video(
    dir: &Path,
    name: &str,
    w: u32,
    h: u32,
    secs: u32,
    audio: bool,
    extra: &[&str],
) -> Vec<u8> {
    let path = dir.join(name);
    let size = format!("testsrc2=size={w}x{h}:rate=30:duration={secs}");
    let tone = format!("sine=frequency=440:duration={secs}");
    let mut args = vec!["-f", "lavfi", "-i", size.as_str()];
    if audio {
        args.extend([
            "-f",
            "lavfi",
            "-i",
            tone.as_str(),
            "-c:a",
            "aac",
            "-shortest",
        ]);
    }
    args.extend([
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-pix_fmt",
        "yuv420p",
    ]);
    args.extend(extra);
    let p = path.to_string_lossy().into_owned();
    args.push(&p);
    lectern_tests::ffmpeg(&args);
    std::fs::read(&path).unwrap()
}

/// `ffprobe` as JSON: the first video stream's size and the container's duration. Runs off the
/// test's runtime thread, which also serves the test S3 server the segments come from.
async fn ffprobe(url: &str) -> Value {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || ffprobe_blocking(&url))
        .await
        .unwrap()
}

fn ffprobe_blocking(url: &str) -> Value {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_type,width,height:stream_side_data:format=duration",
            "-of",
            "json",
            url,
        ])
        .output()
        .expect("ffprobe");
    assert!(
        out.status.success(),
        "ffprobe {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Decodes every frame of a URL's first video stream; returns how many frames.
async fn decode_all(url: &str) -> u64 {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || decode_all_blocking(&url))
        .await
        .unwrap()
}

fn decode_all_blocking(url: &str) -> u64 {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=nb_read_frames",
            "-of",
            "csv=p=0",
            url,
        ])
        .output()
        .expect("ffprobe");
    assert!(
        out.status.success(),
        "decoding {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // HLS inputs list the stream once per program too: every line says the same.
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text
        .lines()
        .map(|l| l.trim().trim_end_matches(','))
        .find(|l| !l.is_empty());
    first
        .and_then(|l| l.parse().ok())
        .unwrap_or_else(|| panic!("ffprobe said {text:?}"))
}

/// The owner's event stream: a WebSocket on the API, read in the background until dropped.
struct Events {
    received: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Events {
    async fn open(app: &TestApp, token: &str) -> Events {
        use futures::StreamExt;
        let url = format!(
            "{}/api/v1/ws?token={token}",
            app.url.replace("http://", "ws://")
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("websocket");
        // The first message says the socket is live (and subscribed).
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                assert_eq!(v["type"], "ready", "{v}");
            }
            other => panic!("no ready message: {other:?}"),
        }
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = received.clone();
        let reader = tokio::spawn(async move {
            while let Some(Ok(msg)) = ws.next().await {
                if let tokio_tungstenite::tungstenite::Message::Text(t) = msg
                    && let Ok(v) = serde_json::from_str::<Value>(&t)
                {
                    sink.lock().unwrap().push(v);
                }
            }
        });
        Events { received, reader }
    }

    /// Waits until an event of `kind` for `media_id` arrived; returns every event so far.
    async fn until(&self, kind: &str, media_id: &str) -> Vec<Value> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let seen = self.received.lock().unwrap().clone();
            if seen
                .iter()
                .any(|e| e["type"] == kind && e["media_id"] == media_id)
            {
                return seen;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {kind} event: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// A verified instructor (only those upload videos).
/// Starts an upload and PUTs the bytes to the presigned URL; returns the start answer.
async fn presigned_upload(
    app: &TestApp,
    token: &str,
    bytes: &[u8],
    name: &str,
    mime: &str,
    extra: Value,
) -> Value {
    let mut body = json!({"file_name": name, "file_size": bytes.len(), "mime_type": mime});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let (status, started) = app
        .call("POST", "/api/v1/media/uploads", Some(token), Some(&body))
        .await;
    assert_eq!(status, 201, "{started}");
    assert_eq!(started["upload"]["method"], "put", "{started}");
    put_presigned(app, &started["upload"]["request"], bytes.to_vec()).await;
    started
}

async fn put_presigned(app: &TestApp, request: &Value, bytes: Vec<u8>) -> reqwest::Response {
    let mut req = app.http.put(request["url"].as_str().unwrap()).body(bytes);
    for (k, v) in request["headers"].as_object().unwrap() {
        if !k.eq_ignore_ascii_case("content-length") {
            req = req.header(k, v.as_str().unwrap());
        }
    }
    let res = req.send().await.unwrap();
    assert!(res.status().is_success(), "presigned PUT: {}", res.status());
    res
}

/// PUTs one part of a multipart upload to its presigned URL; returns `{part_number, etag}`.
async fn put_part(app: &TestApp, part: &Value, chunk: Vec<u8>) -> Value {
    let res = app
        .http
        .put(part["url"].as_str().unwrap())
        .body(chunk)
        .send()
        .await
        .unwrap();
    assert!(
        res.status().is_success(),
        "part {}: {}",
        part["part_number"],
        res.status()
    );
    let etag = res.headers().get("etag").unwrap().to_str().unwrap();
    json!({"part_number": part["part_number"], "etag": etag})
}

/// Completes a multipart upload with its parts' ETags.
async fn complete_with_parts(
    app: &TestApp,
    token: &str,
    id: &str,
    parts: &[Value],
) -> (u16, Value) {
    app.call(
        "POST",
        &format!("/api/v1/media/uploads/{id}/complete"),
        Some(token),
        Some(&json!({ "parts": parts })),
    )
    .await
}

async fn complete(app: &TestApp, token: &str, id: &str) -> (u16, Value) {
    app.call(
        "POST",
        &format!("/api/v1/media/uploads/{id}/complete"),
        Some(token),
        None,
    )
    .await
}

/// Uploads a file and waits for its processing job to succeed; returns the media view.
async fn upload_and_process(
    app: &TestApp,
    token: &str,
    bytes: &[u8],
    name: &str,
    mime: &str,
) -> Value {
    let started = presigned_upload(app, token, bytes, name, mime, json!({})).await;
    let id = started["media"]["id"].as_str().unwrap().to_owned();
    let (status, done) = complete(app, token, &id).await;
    assert_eq!(status, 202, "{done}");
    let job = done["job"]["id"].as_str().unwrap().to_owned();
    app.wait_for_job(&job, "succeeded", JOB_WAIT).await;
    let (status, media) = app
        .call("GET", &format!("/api/v1/media/{id}"), Some(token), None)
        .await;
    assert_eq!(status, 200, "{media}");
    media
}

async fn playback(app: &TestApp, token: &str, id: &str) -> (u16, Value) {
    app.call(
        "GET",
        &format!("/api/v1/media/{id}/playback"),
        Some(token),
        None,
    )
    .await
}

async fn text(app: &TestApp, url: &str) -> (u16, String) {
    let res = app.http.get(url).send().await.unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

async fn bytes(app: &TestApp, url: &str) -> (u16, Vec<u8>) {
    let res = app.http.get(url).send().await.unwrap();
    (res.status().as_u16(), res.bytes().await.unwrap().to_vec())
}

#[tokio::test]
async fn a_video_becomes_an_hls_ladder_that_plays_through_signed_urls() {
    let app = TestApp::spawn().await;
    app.wait_until_ready().await;
    let (token, teacher_id) = app.verified_instructor("teacher@example.com").await;
    let dir = lectern_tests::scratch_dir("media");
    // 854x480: the ladder is the source rung and 360p below it.
    let source = make_video(&dir, "lecture.mp4", 854, 480, 4, true, &[]);
    let events = Events::open(&app, &token).await;

    let started =
        presigned_upload(&app, &token, &source, "lecture.mp4", "video/mp4", json!({})).await;
    let id = started["media"]["id"].as_str().unwrap().to_owned();
    assert_eq!(started["media"]["state"], "pending");
    let (status, first) = complete(&app, &token, &id).await;
    assert_eq!(status, 202, "{first}");
    let (status, again) = complete(&app, &token, &id).await;
    assert!(status == 202 || status == 200, "{again}");
    assert_eq!(
        again["job"]["id"], first["job"]["id"],
        "completing twice gives the same job"
    );
    let job_id = first["job"]["id"].as_str().unwrap();
    let job = app.wait_for_job(job_id, "succeeded", JOB_WAIT).await;
    assert_eq!(job["progress"], 100);

    // The owner saw the progress rise on their socket, then the media become ready.
    let seen = events.until("media.ready", &id).await;
    let progress: Vec<i64> = seen
        .iter()
        .filter(|e| e["type"] == "media.progress" && e["media_id"] == id.as_str())
        .map(|e| e["progress"].as_i64().unwrap())
        .collect();
    assert!(!progress.is_empty(), "no progress events: {seen:?}");
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "{progress:?}");
    assert!(
        progress.iter().all(|p| (0..100).contains(p)),
        "{progress:?}"
    );
    assert!(progress.iter().any(|p| *p > 0), "{progress:?}");
    drop(events);
    assert!(
        app.scratch_left().is_empty(),
        "work folders left behind: {:?}",
        app.scratch_left()
    );

    let (_, media) = app
        .call("GET", &format!("/api/v1/media/{id}"), Some(&token), None)
        .await;
    assert_eq!(media["state"], "ready", "{media}");
    assert_eq!(
        (media["width"].as_i64(), media["height"].as_i64()),
        (Some(854), Some(480))
    );
    assert_eq!(media["has_audio"], true);
    assert_eq!(media["video_codec"], "h264");
    let duration = media["duration_secs"].as_f64().unwrap();
    assert!((duration - 4.0).abs() < 0.5, "{duration}");
    let names: Vec<&str> = media["renditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        vec!["480p", "360p"],
        "source rung and the standard rung below, never upscaled"
    );
    assert_eq!(media["job"]["state"], "succeeded");

    // The owner plays it.
    let (status, play) = playback(&app, &token, &id).await;
    assert_eq!(status, 200, "{play}");
    let master_url = play["hls_url"].as_str().unwrap();
    let (status, master) = text(&app, master_url).await;
    assert_eq!(status, 200, "{master}");
    assert!(master.starts_with("#EXTM3U"), "{master}");
    let infs: Vec<&str> = master
        .lines()
        .filter(|l| l.starts_with("#EXT-X-STREAM-INF:"))
        .collect();
    assert_eq!(infs.len(), 2, "{master}");
    for inf in &infs {
        assert!(inf.contains("BANDWIDTH="), "{inf}");
        assert!(inf.contains("CODECS=\"avc1.64"), "{inf}");
        assert!(inf.contains("mp4a.40.2"), "{inf}");
    }
    assert!(infs[0].contains("RESOLUTION=854x480"), "{master}");
    assert!(infs[1].contains("RESOLUTION=640x360"), "{master}");

    // Every variant: a playlist of signed segment URLs that decodes, as long as the source.
    let base = master_url.split("master.m3u8").next().unwrap();
    for uri in master
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let variant_url = format!("{base}{uri}");
        let (status, variant) = text(&app, &variant_url).await;
        assert_eq!(status, 200, "{variant}");
        let segments: Vec<&str> = variant.lines().filter(|l| l.starts_with("http")).collect();
        assert!(!segments.is_empty(), "{variant}");
        for s in &segments {
            assert!(s.contains("X-Amz-Signature="), "segments are signed: {s}");
        }
        // The same segment without its signature is refused by storage.
        let unsigned = segments[0].split('?').next().unwrap();
        let (status, _) = bytes(&app, unsigned).await;
        assert_eq!(status, 403, "unsigned segment must not be readable");
        let probed = ffprobe(&variant_url).await;
        let d: f64 = probed["format"]["duration"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((d - 4.0).abs() < 0.5, "variant lasts {d} s, the source 4 s");
        let frames = decode_all(&variant_url).await;
        assert!(
            (110..=130).contains(&frames),
            "4 s at 30 fps, got {frames} frames"
        );
    }

    // The poster is a valid image of the video's shape; the storyboard track points at tiles.
    let (status, poster) = bytes(&app, play["poster"]["jpeg"].as_str().unwrap()).await;
    assert_eq!(status, 200);
    let img = image::load_from_memory(&poster).expect("poster decodes");
    assert_eq!((img.width(), img.height()), (854, 480));
    let (_, webp) = bytes(&app, play["poster"]["webp"].as_str().unwrap()).await;
    image::load_from_memory(&webp).expect("webp poster decodes");
    let (status, vtt) = text(&app, play["storyboard_vtt_url"].as_str().unwrap()).await;
    assert_eq!(status, 200);
    assert!(vtt.starts_with("WEBVTT"), "{vtt}");
    let sprite_url = vtt
        .lines()
        .find(|l| l.contains("#xywh="))
        .unwrap()
        .split('#')
        .next()
        .unwrap()
        .to_owned();
    let (status, sprite) = bytes(&app, &sprite_url).await;
    assert_eq!(status, 200);
    image::load_from_memory(&sprite).expect("sprite decodes");

    // Who may play: a stranger no; a student once enrolled in the media's course.
    let student = app.register("student@example.com", "student").await;
    let student_token = access(&student);
    let (status, _) = playback(&app, &student_token, &id).await;
    assert_eq!(status, 404);
    let (status, _) = app
        .call(
            "GET",
            &format!("/api/v1/media/{id}"),
            Some(&student_token),
            None,
        )
        .await;
    assert_eq!(status, 404);
    let course = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO courses (id, instructor_id, title, slug) VALUES ($1, $2, 'Course', $3)",
    )
    .bind(course)
    .bind(Uuid::parse_str(&teacher_id).unwrap())
    .bind(format!("course-{course}"))
    .execute(&app.db.pool)
    .await
    .unwrap();
    sqlx::query("UPDATE media SET course_id = $1 WHERE id = $2")
        .bind(course)
        .bind(Uuid::parse_str(&id).unwrap())
        .execute(&app.db.pool)
        .await
        .unwrap();
    let (status, _) = playback(&app, &student_token, &id).await;
    assert_eq!(status, 404, "not enrolled yet");
    sqlx::query(
        "INSERT INTO enrollments (id, user_id, course_id, status) VALUES ($1, $2, $3, 'active')",
    )
    .bind(Uuid::now_v7())
    .bind(Uuid::parse_str(student["user"]["id"].as_str().unwrap()).unwrap())
    .bind(course)
    .execute(&app.db.pool)
    .await
    .unwrap();
    let (status, play) = playback(&app, &student_token, &id).await;
    assert_eq!(status, 200, "{play}");
    // A token for another media, or a forged one, opens nothing.
    let bad = master_url.replace(&id, &Uuid::now_v7().to_string());
    assert_eq!(text(&app, &bad).await.0, 404);
    let forged = format!("{}x", master_url);
    assert_eq!(text(&app, &forged).await.0, 404);

    // Deleting removes the row now and every object through a job.
    assert!(app.stored_files(&format!("media/{id}")) > 5);
    let (status, deleted) = app
        .call("DELETE", &format!("/api/v1/media/{id}"), Some(&token), None)
        .await;
    assert_eq!(status, 202, "{deleted}");
    app.wait_for_job(
        deleted["job"]["id"].as_str().unwrap(),
        "succeeded",
        JOB_WAIT,
    )
    .await;
    assert_eq!(app.stored_files(&format!("media/{id}")), 0);
    let (status, _) = app
        .call("GET", &format!("/api/v1/media/{id}"), Some(&token), None)
        .await;
    assert_eq!(status, 404);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn portrait_and_rotated_phone_videos_come_out_upright_even_without_audio() {
    let app = TestApp::spawn().await;
    app.wait_until_ready().await;
    let (token, _) = app.verified_instructor("phone@example.com").await;
    let dir = lectern_tests::scratch_dir("media");
    // Landscape pixels with a 90° display rotation (as phones record), and true portrait pixels
    // without an audio track.
    let mut rotated = make_video(&dir, "rotated.mp4", 320, 240, 2, true, &[]);
    rotate_first_track_90(&mut rotated);
    let portrait = make_video(&dir, "portrait.mp4", 240, 320, 2, false, &[]);
    for (source, name, rotation, audio) in [
        (rotated, "rotated.mp4", 90, true),
        (portrait, "portrait.mp4", 0, false),
    ] {
        let media = upload_and_process(&app, &token, &source, name, "video/mp4").await;
        assert_eq!(media["rotation"], rotation, "{media}");
        assert_eq!(
            (media["width"].as_i64(), media["height"].as_i64()),
            (Some(240), Some(320)),
            "{name}"
        );
        assert_eq!(media["has_audio"], audio, "{name}");
        let id = media["id"].as_str().unwrap();
        let (_, play) = playback(&app, &token, id).await;
        let master_url = play["hls_url"].as_str().unwrap();
        let (_, master) = text(&app, master_url).await;
        assert!(master.contains("RESOLUTION=240x320"), "{master}");
        if !audio {
            assert!(
                !master.contains("mp4a"),
                "no audio codec for a silent video: {master}"
            );
        }
        let base = master_url.split("master.m3u8").next().unwrap();
        let uri = master
            .lines()
            .find(|l| !l.starts_with('#') && !l.is_empty())
            .unwrap();
        let probed = ffprobe(&format!("{base}{uri}")).await;
        let video = probed["streams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["codec_type"] == "video")
            .unwrap();
        assert_eq!(
            (video["width"].as_i64(), video["height"].as_i64()),
            (Some(240), Some(320)),
            "{probed}"
        );
        assert!(
            video.get("side_data_list").is_none(),
            "pixels are upright, no rotation left: {probed}"
        );
        let has_audio_stream = probed["streams"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["codec_type"] == "audio");
        assert_eq!(has_audio_stream, audio, "{probed}");
        assert!(decode_all(&format!("{base}{uri}")).await >= 55);
        let (_, poster) = bytes(&app, play["poster"]["jpeg"].as_str().unwrap()).await;
        let img = image::load_from_memory(&poster).expect("poster");
        assert!(img.height() > img.width(), "portrait poster");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn images_get_thumbnails_through_the_direct_upload() {
    let app = TestApp::spawn().await;
    app.wait_until_ready().await;
    let (token, _) = app.verified_instructor("photos@example.com").await;
    let mut png = Vec::new();
    image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(900, 600, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
    }))
    .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
    .unwrap();
    let form = reqwest::multipart::Form::new().text("title", "Cover").part(
        "file",
        reqwest::multipart::Part::bytes(png)
            .file_name("cover.png")
            .mime_str("image/png")
            .unwrap(),
    );
    let res = app
        .http
        .post(format!("{}/api/v1/media", app.url))
        .bearer_auth(&token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 202);
    let done: Value = res.json().await.unwrap();
    assert_eq!(done["media"]["title"], "Cover");
    assert_eq!(done["media"]["kind"], "image");
    app.wait_for_job(done["job"]["id"].as_str().unwrap(), "succeeded", JOB_WAIT)
        .await;
    let id = done["media"]["id"].as_str().unwrap();
    let (status, play) = playback(&app, &token, id).await;
    assert_eq!(status, 200, "{play}");
    for (key, want) in [("thumbnail", (300, 200)), ("preview", (900, 600))] {
        for format in ["jpeg", "webp"] {
            let (status, body) = bytes(&app, play[key][format].as_str().unwrap()).await;
            assert_eq!(status, 200);
            let img = image::load_from_memory(&body).expect("decodes");
            assert_eq!((img.width(), img.height()), want, "{key} {format}");
        }
    }

    // A body that is not multipart is a 415; a file over the direct limit a 413.
    let (status, body) = app
        .call("POST", "/api/v1/media", Some(&token), Some(&json!({})))
        .await;
    assert_eq!(status, 415, "{body}");
    let big = vec![0u8; 26 * 1024 * 1024];
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(big)
            .file_name("big.png")
            .mime_str("image/png")
            .unwrap(),
    );
    let res = app
        .http
        .post(format!("{}/api/v1/media", app.url))
        .bearer_auth(&token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 413);
}

#[tokio::test]
async fn a_50_mb_multipart_upload_goes_straight_to_storage() {
    let app = TestApp::spawn_with(Options {
        env: vec![(
            "MEDIA_MULTIPART_THRESHOLD_BYTES".into(),
            (16 * 1024 * 1024).to_string(),
        )],
        ..Default::default()
    })
    .await;
    app.wait_until_ready().await;
    let (token, _) = app.verified_instructor("big@example.com").await;
    let mut file = b"%PDF-1.7\n".to_vec();
    file.extend((0..50 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8));
    let body = json!({"file_name": "handbook.pdf", "file_size": file.len(), "mime_type": "application/pdf"});
    let (status, started) = app
        .call("POST", "/api/v1/media/uploads", Some(&token), Some(&body))
        .await;
    assert_eq!(status, 201, "{started}");
    let upload = &started["upload"];
    assert_eq!(upload["method"], "multipart");
    let part_size = upload["part_size"].as_u64().unwrap() as usize;
    let parts = upload["parts"].as_array().unwrap();
    assert_eq!(parts.len(), file.len().div_ceil(part_size));
    let id = started["media"]["id"].as_str().unwrap();

    // Completing a multipart upload needs the parts and their ETags.
    let (status, err) = complete(&app, &token, id).await;
    assert_eq!(status, 422, "{err}");
    assert!(err["error"]["fields"]["parts"].is_array(), "{err}");

    let mut etags = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let chunk = file[i * part_size..((i + 1) * part_size).min(file.len())].to_vec();
        etags.push(put_part(&app, part, chunk).await);
    }
    let (status, done) = complete_with_parts(&app, &token, id, &etags).await;
    assert_eq!(status, 200, "documents are ready at once: {done}");
    assert_eq!(done["media"]["state"], "ready");
    let (_, play) = playback(&app, &token, id).await;
    let (status, stored) = bytes(&app, play["file_url"].as_str().unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(stored.len(), file.len());
    assert!(stored == file, "the stored file is the uploaded file");

    // Each part URL is signed for its exact length: a short body is refused by storage, and
    // the parts sent do not add up to the declared size, so completion waits for the rest.
    let declared = 20 * 1024 * 1024usize;
    let body =
        json!({"file_name": "short.pdf", "file_size": declared, "mime_type": "application/pdf"});
    let (status, started) = app
        .call("POST", "/api/v1/media/uploads", Some(&token), Some(&body))
        .await;
    assert_eq!(status, 201, "{started}");
    let upload = &started["upload"];
    let part_size = upload["part_size"].as_u64().unwrap() as usize;
    let parts = upload["parts"].as_array().unwrap();
    assert!(parts.len() >= 2, "{upload}");
    let id = started["media"]["id"].as_str().unwrap();
    let short = app
        .http
        .put(parts[1]["url"].as_str().unwrap())
        .body(file[..1024].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(short.status().as_u16(), 403, "a short part is refused");
    let etags = vec![put_part(&app, &parts[0], file[..part_size].to_vec()).await];
    let (status, err) = complete_with_parts(&app, &token, id, &etags).await;
    assert_eq!(status, 409, "{err}");
    assert_eq!(err["error"]["code"], "upload_incomplete", "{err}");
    let (_, media) = app
        .call("GET", &format!("/api/v1/media/{id}"), Some(&token), None)
        .await;
    assert_eq!(media["state"], "pending", "{media}");
}

#[tokio::test]
async fn bad_input_gets_a_clear_answer_and_the_worker_keeps_going() {
    let app = TestApp::spawn_with(Options {
        env: vec![("MEDIA_VIDEO_MAX_DURATION_SECS".into(), "3".into())],
        ..Default::default()
    })
    .await;
    app.wait_until_ready().await;
    let (token, _) = app.verified_instructor("careless@example.com").await;
    let (other_token, _) = app.verified_instructor("other@example.com").await;
    let dir = lectern_tests::scratch_dir("media");
    let start = |body: Value| {
        let app = &app;
        let token = token.clone();
        async move {
            app.call("POST", "/api/v1/media/uploads", Some(&token), Some(&body))
                .await
        }
    };

    // Declared size and type.
    let (status, err) = start(json!({"file_name": "a.mp4", "mime_type": "video/mp4"})).await;
    assert_eq!(status, 422, "{err}");
    assert!(err["error"]["fields"]["file_size"].is_array(), "{err}");
    let (status, err) =
        start(json!({"file_name": "a.mp4", "file_size": 0, "mime_type": "video/mp4"})).await;
    assert_eq!(status, 422, "{err}");
    let (status, err) = start(
        json!({"file_name": "a.exe", "file_size": 10, "mime_type": "application/x-msdownload"}),
    )
    .await;
    assert_eq!(status, 422, "{err}");
    assert!(
        err["error"]["fields"]["mime_type"][0]
            .as_str()
            .unwrap()
            .contains("not accepted"),
        "{err}"
    );
    let (status, err) =
        start(json!({"file_name": "huge.png", "file_size": 1u64 << 40, "mime_type": "image/png"}))
            .await;
    assert_eq!(status, 422, "{err}");
    // A student may not upload; a course that is not the caller's is not found.
    let student = app.register("pupil@example.com", "student").await;
    let (status, _) = app
        .call(
            "POST",
            "/api/v1/media/uploads",
            Some(&access(&student)),
            Some(&json!({"file_name": "a.png", "file_size": 10, "mime_type": "image/png"})),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = start(json!({"file_name": "a.png", "file_size": 10, "mime_type": "image/png", "course_id": Uuid::now_v7()})).await;
    assert_eq!(status, 404);

    // Complete before the upload; someone else's upload id.
    let (status, started) =
        start(json!({"file_name": "x.mp4", "file_size": 1000, "mime_type": "video/mp4"})).await;
    assert_eq!(status, 201);
    let early = started["media"]["id"].as_str().unwrap().to_owned();
    let (status, err) = complete(&app, &token, &early).await;
    assert_eq!(status, 409, "{err}");
    assert_eq!(err["error"]["code"], "upload_incomplete");
    let (status, _) = complete(&app, &other_token, &early).await;
    assert_eq!(status, 404);
    let (status, _) = app
        .call(
            "GET",
            &format!("/api/v1/media/{early}"),
            Some(&other_token),
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = app
        .call(
            "DELETE",
            &format!("/api/v1/media/{early}"),
            Some(&other_token),
            None,
        )
        .await;
    assert_eq!(status, 404);

    // A PNG sent as video/mp4, and random bytes named .mp4: refused on completion, object removed.
    let mut png = Vec::new();
    image::DynamicImage::ImageRgb8(image::RgbImage::new(8, 8))
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let random: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for (bytes, name) in [(png.clone(), "slides.mp4"), (random, "noise.mp4")] {
        let started = presigned_upload(&app, &token, &bytes, name, "video/mp4", json!({})).await;
        let id = started["media"]["id"].as_str().unwrap();
        let (status, err) = complete(&app, &token, id).await;
        assert_eq!(status, 422, "{name}: {err}");
        assert!(err["error"]["fields"]["file"].is_array(), "{err}");
        assert_eq!(
            app.stored_files(&format!("media/{id}")),
            0,
            "{name}: the refused object is removed"
        );
        let (_, media) = app
            .call("GET", &format!("/api/v1/media/{id}"), Some(&token), None)
            .await;
        assert_eq!(media["state"], "failed");
        if name == "slides.mp4" {
            assert!(media["error"].as_str().unwrap().contains("PNG"), "{media}");
        }
    }

    // Files that pass the first bytes but are not videos the pipeline accepts: the job fails
    // with a reason a person understands.
    let good = make_video(&dir, "ok.mp4", 320, 240, 2, true, &[]);
    let truncated = good[..good.len() / 2].to_vec();
    // Index first (faststart), data cut: it opens and decodes, then runs out.
    let faststart = make_video(
        &dir,
        "fast.mp4",
        320,
        240,
        3,
        true,
        &["-movflags", "+faststart"],
    );
    let cut_after_index = faststart[..faststart.len() / 3].to_vec();
    let long = make_video(&dir, "long.mp4", 64, 64, 5, false, &[]);
    lectern_tests::ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "color=c=red:s=16x16:r=10:d=1",
        "-vf",
        "scale=1:1",
        "-c:v",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        dir.join("tiny.avi").to_str().unwrap(),
    ]);
    let tiny = std::fs::read(dir.join("tiny.avi")).unwrap();
    let cases: [(&[u8], &str, &str, &str); 4] = [
        (&truncated, "cut.mp4", "video/mp4", "truncated"),
        (&cut_after_index, "cut-fast.mp4", "video/mp4", "truncated"),
        (&tiny, "tiny.avi", "video/x-msvideo", "1 × 1"),
        (&long, "long.mp4", "video/mp4", "longest accepted is 3 s"),
    ];
    for (bytes, name, mime, reason) in cases {
        let started = presigned_upload(&app, &token, bytes, name, mime, json!({})).await;
        let id = started["media"]["id"].as_str().unwrap();
        let (status, done) = complete(&app, &token, id).await;
        assert_eq!(status, 202, "{name}: {done}");
        let job = app
            .wait_for_job(done["job"]["id"].as_str().unwrap(), "failed", JOB_WAIT)
            .await;
        assert_eq!(
            job["attempts"], 1,
            "{name}: a bad file is not retried: {job}"
        );
        let last = job["last_error"].as_str().unwrap();
        assert!(last.contains(reason), "{name}: {last}");
        let (_, media) = app
            .call("GET", &format!("/api/v1/media/{id}"), Some(&token), None)
            .await;
        assert_eq!(media["state"], "failed");
        assert!(media["error"].as_str().unwrap().contains(reason), "{media}");
        assert_eq!(media["renditions"], json!([]));
        assert_eq!(
            app.stored_files(&format!("media/{id}")),
            1,
            "{name}: only the source, nothing half-written"
        );
    }

    // A 50,000 × 50,000 PNG of a few bytes: refused before decoding.
    let bomb = png_bomb(50_000, 50_000);
    assert!(bomb.len() < 1024);
    let started = presigned_upload(&app, &token, &bomb, "bomb.png", "image/png", json!({})).await;
    let id = started["media"]["id"].as_str().unwrap();
    let (status, done) = complete(&app, &token, id).await;
    assert_eq!(status, 202, "{done}");
    let job = app
        .wait_for_job(done["job"]["id"].as_str().unwrap(), "failed", JOB_WAIT)
        .await;
    assert!(
        job["last_error"]
            .as_str()
            .unwrap()
            .contains("50000 × 50000"),
        "{job}"
    );
    assert_eq!(
        job["attempts"], 1,
        "a bomb is refused for good, not retried: {job}"
    );
    let (_, media) = app
        .call("GET", &format!("/api/v1/media/{id}"), Some(&token), None)
        .await;
    assert_eq!(media["state"], "failed", "{media}");
    assert_eq!(
        app.stored_files(&format!("media/{id}")),
        1,
        "only the source stays (for the owner to delete or an operator to inspect); no output is half-written"
    );

    // The worker is still alive and processes a good file.
    let media = upload_and_process(&app, &token, &good, "ok.mp4", "video/mp4").await;
    assert_eq!(media["state"], "ready");
    assert!(
        app.scratch_left().is_empty(),
        "work folders left behind by failed jobs: {:?}",
        app.scratch_left()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn abandoned_uploads_are_swept_with_their_objects() {
    let app = TestApp::spawn_with_env(&[
        ("MEDIA_UPLOAD_EXPIRY_SECS", "2"),
        ("MEDIA_SWEEP_INTERVAL_SECS", "1"),
    ])
    .await;
    app.wait_until_ready().await;
    let (token, _) = app.verified_instructor("forgetful@example.com").await;
    let bytes = b"%PDF-1.4 never completed".to_vec();
    let started = presigned_upload(
        &app,
        &token,
        &bytes,
        "draft.pdf",
        "application/pdf",
        json!({}),
    )
    .await;
    let id = started["media"]["id"].as_str().unwrap().to_owned();
    assert_eq!(app.stored_files(&format!("media/{id}")), 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _) = app
            .call("GET", &format!("/api/v1/media/{id}"), Some(&token), None)
            .await;
        if status == 404 && app.stored_files(&format!("media/{id}")) == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "upload not swept:\n{}",
            app.worker_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for b in bytes {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A valid PNG that claims `w` × `h` pixels, in a few hundred bytes.
fn png_bomb(w: u32, h: u32) -> Vec<u8> {
    fn chunk(kind: &[u8], data: &[u8]) -> Vec<u8> {
        let mut out = (data.len() as u32).to_be_bytes().to_vec();
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
        out
    }
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let idat = [
        0x78, 0x01, 0x01, 0x04, 0x00, 0xfb, 0xff, 0, 0, 0, 0, 0, 0x04, 0x00, 0x01,
    ];
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(chunk(b"IHDR", &ihdr));
    png.extend(chunk(b"IDAT", &idat));
    png.extend(chunk(b"IEND", &[]));
    png
}
