//! Bounded work per upload, end to end: limits on what a video may cost (picture, frame rate,
//! the real duration counted while decoding), per-user upload quotas, part URLs that cannot
//! carry more than declared, videos only from verified instructors, and jobs that fail for good
//! leaving their media `failed` with the reason. Real files are made with the `ffmpeg` CLI.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use lectern_tests::{Options, TestApp};
use serde_json::{Value, json};

const JOB_WAIT: Duration = Duration::from_secs(180);

/// The container duration `ffprobe` reads from a file's header.
fn header_duration(path: &Path) -> f64 {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "format=duration", "-of"])
        .args(["csv=p=0"])
        .arg(path)
        .output()
        .expect("ffprobe");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Rewrites the durations of an MP4's movie header (`mvhd`) and of every track (`tkhd`, `mdhd`)
/// to `secs`, leaving the samples alone: the header lies, the frames are all still there.
fn patch_mp4_duration(mp4: &mut [u8], secs: u64) {
    fn be32(b: &[u8], at: usize) -> u64 {
        u64::from(u32::from_be_bytes(b[at..at + 4].try_into().unwrap()))
    }
    fn put(b: &mut [u8], at: usize, wide: bool, value: u64) {
        if wide {
            b[at..at + 8].copy_from_slice(&value.to_be_bytes());
        } else {
            b[at..at + 4].copy_from_slice(&u32::try_from(value).unwrap().to_be_bytes());
        }
    }
    /// Children of the box whose content spans `start..end`.
    fn boxes(b: &[u8], start: usize, end: usize) -> Vec<(String, usize, usize)> {
        let mut out = Vec::new();
        let mut at = start;
        while at + 8 <= end {
            let mut size = be32(b, at) as usize;
            let name = String::from_utf8_lossy(&b[at + 4..at + 8]).into_owned();
            let mut header = 8;
            if size == 1 {
                size = usize::try_from(u64::from_be_bytes(b[at + 8..at + 16].try_into().unwrap()))
                    .unwrap();
                header = 16;
            } else if size == 0 {
                size = end - at;
            }
            out.push((name, at + header, at + size));
            at += size;
        }
        out
    }
    let mut movie_scale = 0;
    let mut patched = 0;
    for (name, start, end) in boxes(mp4, 0, mp4.len()) {
        if name != "moov" {
            continue;
        }
        for (name, start, end) in boxes(mp4, start, end) {
            match name.as_str() {
                "mvhd" => {
                    let wide = mp4[start] == 1;
                    let at = start + 4 + if wide { 16 } else { 8 };
                    movie_scale = be32(mp4, at);
                    put(mp4, at + 4, wide, secs * movie_scale);
                    patched += 1;
                }
                "trak" => {
                    for (name, start, end) in boxes(mp4, start, end) {
                        if name == "tkhd" {
                            let wide = mp4[start] == 1;
                            let at = start + 4 + if wide { 16 } else { 8 } + 8;
                            assert!(movie_scale > 0, "mvhd comes before the tracks");
                            put(mp4, at, wide, secs * movie_scale);
                            patched += 1;
                        } else if name == "mdia" {
                            for (name, start, _) in boxes(mp4, start, end) {
                                if name == "mdhd" {
                                    let wide = mp4[start] == 1;
                                    let at = start + 4 + if wide { 16 } else { 8 };
                                    let scale = be32(mp4, at);
                                    put(mp4, at + 4, wide, secs * scale);
                                    patched += 1;
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
    assert!(patched >= 3, "mvhd, tkhd and mdhd found and patched");
}

async fn start_upload(app: &TestApp, token: &str, body: Value) -> (u16, Value) {
    app.call("POST", "/api/v1/media/uploads", Some(token), Some(&body))
        .await
}

/// Starts a single-PUT upload and sends the bytes; returns the media id.
async fn upload(
    app: &TestApp,
    token: &str,
    bytes: &[u8],
    name: &str,
    mime: &str,
    extra: Value,
) -> String {
    let mut body = json!({"file_name": name, "file_size": bytes.len(), "mime_type": mime});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let (status, started) = start_upload(app, token, body).await;
    assert_eq!(status, 201, "{started}");
    let request = &started["upload"]["request"];
    let mut req = app
        .http
        .put(request["url"].as_str().unwrap())
        .body(bytes.to_vec());
    for (k, v) in request["headers"].as_object().unwrap() {
        if !k.eq_ignore_ascii_case("content-length") {
            req = req.header(k, v.as_str().unwrap());
        }
    }
    let res = req.send().await.unwrap();
    assert!(res.status().is_success(), "presigned PUT: {}", res.status());
    started["media"]["id"].as_str().unwrap().to_owned()
}

async fn complete(app: &TestApp, token: &str, id: &str, body: Option<&Value>) -> (u16, Value) {
    app.call(
        "POST",
        &format!("/api/v1/media/uploads/{id}/complete"),
        Some(token),
        body,
    )
    .await
}

async fn media(app: &TestApp, token: &str, id: &str) -> Value {
    let (status, body) = app
        .call("GET", &format!("/api/v1/media/{id}"), Some(token), None)
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Uploads a video, completes it, and waits for its job to fail for good; returns the job.
async fn upload_until_failed(
    app: &TestApp,
    token: &str,
    bytes: &[u8],
    extra: Value,
) -> (String, Value) {
    let id = upload(app, token, bytes, "clip.mp4", "video/mp4", extra).await;
    let (status, done) = complete(app, token, &id, None).await;
    assert_eq!(status, 202, "{done}");
    let job = app
        .wait_for_job(done["job"]["id"].as_str().unwrap(), "failed", JOB_WAIT)
        .await;
    (id, job)
}

#[tokio::test]
async fn a_video_whose_header_understates_its_duration_stops_at_the_limit() {
    let app = TestApp::spawn_with(Options {
        env: vec![("MEDIA_VIDEO_MAX_DURATION_SECS".into(), "10".into())],
        ..Default::default()
    })
    .await;
    app.wait_until_ready().await;
    let (token, _) = app.verified_instructor("liar@example.com").await;
    let dir = lectern_tests::scratch_dir("limits");
    // 30 s of frames, no edit list (which would cut the samples to the header's length).
    let path = dir.join("long.mp4");
    lectern_tests::ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=160x120:rate=25:duration=30",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-pix_fmt",
        "yuv420p",
        "-use_editlist",
        "0",
        path.to_str().unwrap(),
    ]);
    let mut bytes = std::fs::read(&path).unwrap();
    patch_mp4_duration(&mut bytes, 4);
    let lying = dir.join("lying.mp4");
    std::fs::write(&lying, &bytes).unwrap();
    let claimed = header_duration(&lying);
    assert!(
        (3.5..=4.5).contains(&claimed),
        "the header claims {claimed} s"
    );

    let (id, job) = upload_until_failed(&app, &token, &bytes, json!({})).await;
    assert_eq!(job["attempts"], 1, "refused for good, not retried: {job}");
    let seen = media(&app, &token, &id).await;
    assert_eq!(seen["state"], "failed", "{seen}");
    let error = seen["error"].as_str().unwrap();
    assert!(error.contains("duration"), "{error}");
    assert!(error.contains("longest accepted is 10 s"), "{error}");
    assert_eq!(seen["renditions"], json!([]));
    assert_eq!(
        app.stored_files(&format!("media/{id}/v")),
        0,
        "no rendition stored"
    );
}

#[tokio::test]
async fn a_16k_picture_is_refused_before_a_frame_is_decoded() {
    let app = TestApp::spawn().await;
    app.wait_until_ready().await;
    let (token, _) = app.verified_instructor("huge@example.com").await;
    let dir = lectern_tests::scratch_dir("limits");
    // 16000 × 16000: about the largest picture FFmpeg itself can allocate (16384² is past its
    // own image-size check), far beyond the default 4096 × 4096.
    let path = dir.join("huge.mp4");
    lectern_tests::ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "color=c=black:s=16000x16000:d=1:r=1",
        "-frames:v",
        "1",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-pix_fmt",
        "yuv420p",
        path.to_str().unwrap(),
    ]);
    let bytes = std::fs::read(&path).unwrap();
    let (id, job) = upload_until_failed(&app, &token, &bytes, json!({})).await;
    assert_eq!(job["attempts"], 1, "refused for good, not retried: {job}");
    let seen = media(&app, &token, &id).await;
    assert_eq!(seen["state"], "failed", "{seen}");
    let error = seen["error"].as_str().unwrap();
    assert!(error.contains("16000 × 16000"), "{error}");
    assert!(error.contains("largest accepted is 4096 × 4096"), "{error}");
    assert_eq!(
        app.stored_files(&format!("media/{id}/v")),
        0,
        "no rendition stored"
    );
}

#[tokio::test]
async fn part_urls_carry_exactly_their_part_and_completion_checks_the_total() {
    const MIB: usize = 1024 * 1024;
    let app = TestApp::spawn_with(Options {
        env: vec![
            (
                "MEDIA_MULTIPART_THRESHOLD_BYTES".into(),
                (5 * MIB).to_string(),
            ),
            ("MEDIA_PART_BYTES".into(), (5 * MIB).to_string()),
        ],
        ..Default::default()
    })
    .await;
    app.wait_until_ready().await;
    let (token, _) = app.verified_instructor("parts@example.com").await;
    let mut file = b"%PDF-1.7\n".to_vec();
    file.resize(6 * MIB, b'x');
    let (status, started) = start_upload(
        &app,
        &token,
        json!({"file_name": "notes.pdf", "file_size": file.len(), "mime_type": "application/pdf"}),
    )
    .await;
    assert_eq!(status, 201, "{started}");
    let id = started["media"]["id"].as_str().unwrap().to_owned();
    let parts = started["upload"]["parts"].as_array().unwrap().clone();
    assert_eq!(parts.len(), 2, "{started}");
    let put = |url: String, body: Vec<u8>| {
        let http = app.http.clone();
        async move { http.put(url).body(body).send().await.unwrap() }
    };
    let url = |n: usize| parts[n]["url"].as_str().unwrap().to_owned();

    // A part bigger than its share is refused by storage (its URL is signed for its length).
    let res = put(url(0), vec![b'x'; 5 * MIB + 1]).await;
    assert_eq!(res.status().as_u16(), 403, "an oversized first part");
    let res = put(url(1), vec![b'x'; 4 * MIB]).await;
    assert_eq!(res.status().as_u16(), 403, "an oversized last part");

    // The right sizes go through.
    let mut etags = Vec::new();
    for (n, chunk) in [&file[..5 * MIB], &file[5 * MIB..]].into_iter().enumerate() {
        let res = put(url(n), chunk.to_vec()).await;
        assert!(res.status().is_success(), "part {n}: {}", res.status());
        let etag = res.headers()["etag"].to_str().unwrap().to_owned();
        etags.push(json!({"part_number": n + 1, "etag": etag}));
    }
    // Completing with fewer bytes than declared waits for the rest.
    let (status, err) = complete(
        &app,
        &token,
        &id,
        Some(&json!({"parts": [etags[0].clone()]})),
    )
    .await;
    assert_eq!(status, 409, "{err}");
    assert_eq!(err["error"]["code"], "upload_incomplete", "{err}");

    // A part that was not handed out by the API (signed here with the server's own keys, as a
    // stale URL from another part size would be): the total exceeds the declaration.
    let upload_id: String =
        sqlx::query_scalar("SELECT multipart_upload_id FROM media WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    let services = app.services();
    let extra = services
        .storage
        .presign_upload_part(
            &format!("media/{id}/source"),
            &upload_id,
            3,
            1024,
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let res = put(extra.url, vec![b'y'; 1024]).await;
    assert!(res.status().is_success(), "{}", res.status());
    let etag = res.headers()["etag"].to_str().unwrap().to_owned();
    let mut all = etags.clone();
    all.push(json!({"part_number": 3, "etag": etag}));
    let (status, err) = complete(&app, &token, &id, Some(&json!({ "parts": all }))).await;
    assert_eq!(status, 422, "{err}");
    assert!(
        err["error"]["fields"]["file_size"][0]
            .as_str()
            .unwrap()
            .contains("more than"),
        "{err}"
    );
    let seen = media(&app, &token, &id).await;
    assert_eq!(seen["state"], "failed", "{seen}");
    assert_eq!(
        app.stored_files(&format!("media/{id}")),
        0,
        "nothing assembled or left"
    );
    let left = services
        .storage
        .list_parts(&format!("media/{id}/source"), &upload_id)
        .await;
    assert!(
        left.as_ref().map_or(true, Vec::is_empty),
        "the multipart upload is aborted: {left:?}"
    );
}

#[tokio::test]
async fn upload_quotas_refuse_the_next_upload_until_one_is_deleted() {
    let app = TestApp::spawn_with_env(&[
        ("MEDIA_QUOTA_PENDING_UPLOADS", "2"),
        ("MEDIA_QUOTA_PENDING_BYTES", "1000"),
        ("MEDIA_QUOTA_STORED_BYTES", "1200"),
    ])
    .await;
    app.wait_until_ready().await;
    let (token, _) = app.verified_instructor("hoarder@example.com").await;
    let declare = |size: usize| json!({"file_name": "a.pdf", "file_size": size, "mime_type": "application/pdf"});
    let refused = |status: u16, body: &Value, what: &str| {
        assert_eq!(status, 409, "{what}: {body}");
        assert_eq!(
            body["error"]["code"], "upload_quota_exceeded",
            "{what}: {body}"
        );
    };

    // Pending bytes: 600 + 600 is over 1000.
    let pdf = |size: usize| {
        let mut b = b"%PDF-1.4\n".to_vec();
        b.resize(size, b'%');
        b
    };
    let first = upload(
        &app,
        &token,
        &pdf(600),
        "a.pdf",
        "application/pdf",
        json!({}),
    )
    .await;
    let (status, body) = start_upload(&app, &token, declare(600)).await;
    refused(status, &body, "pending bytes");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not completed"),
        "{body}"
    );
    // Pending uploads: two at most.
    let (status, second) = start_upload(&app, &token, declare(300)).await;
    assert_eq!(status, 201, "{second}");
    let second = second["media"]["id"].as_str().unwrap().to_owned();
    let (status, body) = start_upload(&app, &token, declare(10)).await;
    refused(status, &body, "pending uploads");
    // Deleting one frees its place.
    let (status, _) = app
        .call(
            "DELETE",
            &format!("/api/v1/media/{second}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 202);
    let third = upload(
        &app,
        &token,
        &pdf(300),
        "b.pdf",
        "application/pdf",
        json!({}),
    )
    .await;

    // Stored bytes: 900 kept, then 400 more is over 1200.
    for id in [&first, &third] {
        let (status, done) = complete(&app, &token, id, None).await;
        assert_eq!(status, 200, "{done}");
        assert_eq!(done["media"]["state"], "ready");
    }
    let (status, body) = start_upload(&app, &token, declare(400)).await;
    refused(status, &body, "stored bytes");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("storage"),
        "{body}"
    );
    let (status, _) = app
        .call(
            "DELETE",
            &format!("/api/v1/media/{first}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 202);
    let (status, body) = start_upload(&app, &token, declare(400)).await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn only_verified_instructors_upload_videos() {
    let app = TestApp::spawn().await;
    app.wait_until_ready().await;
    let body = app.register("fresh@example.com", "instructor").await;
    let token = body["access_token"].as_str().unwrap().to_owned();
    let video = json!({"file_name": "a.mp4", "file_size": 1000, "mime_type": "video/mp4"});
    let (status, err) = start_upload(&app, &token, video.clone()).await;
    assert_eq!(status, 403, "{err}");
    assert_eq!(err["error"]["code"], "email_unverified", "{err}");
    // Other kinds stay open to them.
    let (status, body) = start_upload(
        &app,
        &token,
        json!({"file_name": "a.png", "file_size": 1000, "mime_type": "image/png"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    // Once verified, videos too.
    sqlx::query("UPDATE users SET email_verified_at = now() WHERE email = 'fresh@example.com'")
        .execute(&app.db.pool)
        .await
        .unwrap();
    let (status, body) = start_upload(&app, &token, video).await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn a_job_cut_by_the_watchdog_leaves_its_media_failed_and_the_checklist_says_so() {
    let app = TestApp::spawn_with_env(&[
        ("JOB_TIMEOUTS", "transcode_video=1"),
        ("JOB_RETRY_BASE_MS", "100"),
    ])
    .await;
    app.wait_until_ready().await;
    let (token, _) = app.verified_instructor("slow@example.com").await;
    let (status, course) = app
        .call(
            "POST",
            "/api/v1/courses",
            Some(&token),
            Some(&json!({"title": "Slow"})),
        )
        .await;
    assert_eq!(status, 201, "{course}");
    let course_id = course["id"].as_str().unwrap().to_owned();
    let dir = lectern_tests::scratch_dir("limits");
    // Far more than a second of transcoding, on any machine.
    let path = dir.join("slow.mp4");
    lectern_tests::ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=1280x720:rate=30:duration=30",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-pix_fmt",
        "yuv420p",
        path.to_str().unwrap(),
    ]);
    let bytes = std::fs::read(&path).unwrap();
    let (id, job) =
        upload_until_failed(&app, &token, &bytes, json!({"course_id": course_id})).await;
    assert_eq!(
        job["attempts"], job["max_attempts"],
        "every attempt was used: {job}"
    );
    assert!(
        job["last_error"].as_str().unwrap().contains("watchdog"),
        "{job}"
    );

    // The owner sees the media failed, with the reason.
    let seen = media(&app, &token, &id).await;
    assert_eq!(seen["state"], "failed", "{seen}");
    let error = seen["error"].as_str().unwrap();
    assert!(error.contains("watchdog"), "{error}");

    // The publishing checklist counts it.
    let (status, body) = app
        .call(
            "POST",
            &format!("/api/v1/courses/{course_id}/publish"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let videos = body["error"]["fields"]["videos"].to_string();
    assert!(videos.contains("1 video(s) failed processing"), "{body}");
}
