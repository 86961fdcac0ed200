//! Media as an attacker sends it: bytes swapped after `/complete`, playlists pointing at other
//! tenants' files or at the network, containers that are not what their first bytes say; and
//! what a killed worker or the embedded S3 endpoint would leave open.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lectern_tests::{Options, TestApp, run_to_end};
use serde_json::{Value, json};
use uuid::Uuid;

const JOB_WAIT: Duration = Duration::from_secs(180);

/// A test pattern video, `secs` long, `w`x`h`, H.264 in `format` (`mp4`, `mpegts`).
fn make_video(dir: &Path, name: &str, w: u32, h: u32, secs: u32, format: &str) -> Vec<u8> {
    let path = dir.join(name);
    let src = format!("testsrc2=size={w}x{h}:rate=30:duration={secs}");
    let out = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
        ])
        .arg(&src)
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
        ])
        .args(["-f", format])
        .arg(&path)
        .output()
        .expect("the ffmpeg command line (installed by scripts/bootstrap.sh)");
    assert!(
        out.status.success(),
        "ffmpeg: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(&path).unwrap()
}

/// Starts a presigned-PUT upload of `size` bytes; returns the start answer.
async fn start_upload(app: &TestApp, token: &str, size: usize, name: &str) -> Value {
    let body = json!({"file_name": name, "file_size": size, "mime_type": "video/mp4"});
    let (status, started) = app
        .call("POST", "/api/v1/media/uploads", Some(token), Some(&body))
        .await;
    assert_eq!(status, 201, "{started}");
    assert_eq!(started["upload"]["method"], "put", "{started}");
    started
}

/// PUTs `bytes` to the presigned request of a start answer; returns the HTTP status.
async fn put(app: &TestApp, started: &Value, bytes: Vec<u8>) -> u16 {
    let request = &started["upload"]["request"];
    let mut req = app.http.put(request["url"].as_str().unwrap()).body(bytes);
    for (k, v) in request["headers"].as_object().unwrap() {
        if !k.eq_ignore_ascii_case("content-length") {
            req = req.header(k, v.as_str().unwrap());
        }
    }
    req.send().await.unwrap().status().as_u16()
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

/// Uploads a video through a presigned PUT and completes it; returns (media id, job id).
async fn upload(app: &TestApp, token: &str, bytes: &[u8], name: &str) -> (String, String) {
    let started = start_upload(app, token, bytes.len(), name).await;
    assert_eq!(put(app, &started, bytes.to_vec()).await, 200);
    let id = started["media"]["id"].as_str().unwrap().to_owned();
    let (status, done) = complete(app, token, &id).await;
    assert_eq!(status, 202, "{done}");
    (id, done["job"]["id"].as_str().unwrap().to_owned())
}

/// Waits until the job is final (succeeded or failed); returns its state.
async fn final_state(app: &TestApp, job: &str, worker_log: &Path) -> String {
    let deadline = Instant::now() + JOB_WAIT;
    loop {
        let (status, view) = app.get_as_admin(&format!("/api/v1/jobs/{job}")).await;
        assert_eq!(status, 200, "{view}");
        let state = view["state"].as_str().unwrap_or_default().to_owned();
        if state == "succeeded" || state == "failed" {
            return state;
        }
        assert!(
            Instant::now() < deadline,
            "job {job} still {state}:\n{}",
            std::fs::read_to_string(worker_log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn media(app: &TestApp, token: &str, id: &str) -> Value {
    let (status, view) = app
        .call("GET", &format!("/api/v1/media/{id}"), Some(token), None)
        .await;
    assert_eq!(status, 200, "{view}");
    view
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn media_dir(app: &TestApp, id: &str) -> PathBuf {
    app.s3
        .dir
        .join(lectern_tests::BUCKET)
        .join("media")
        .join(id)
}

/// An HLS media playlist whose segments are `uris`, padded with a comment to exactly `size`
/// bytes (the presigned PUT is signed for the declared length, and the size check passes).
fn playlist(uris: &[String], size: usize) -> Vec<u8> {
    let mut text = String::from("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:6\n");
    text.push_str("#EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-PLAYLIST-TYPE:VOD\n");
    for uri in uris {
        text.push_str(&format!("#EXTINF:6.0,\n{uri}\n"));
    }
    text.push_str("#EXT-X-ENDLIST\n#");
    assert!(text.len() < size, "the playlist fits in the declared size");
    let pad = size - text.len() - 1;
    text.push_str(&"x".repeat(pad));
    text.push('\n');
    assert_eq!(text.len(), size);
    text.into_bytes()
}

/// A loopback HTTP server that counts the connections it gets and answers none.
fn connection_counter() -> (u16, Arc<AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            seen.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    (port, count)
}

fn sha(path: &Path) -> Vec<u8> {
    use sha2::Digest;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .unwrap()
        .read_to_end(&mut bytes)
        .unwrap();
    sha2::Sha256::digest(&bytes).to_vec()
}

#[tokio::test]
async fn a_playlist_put_after_complete_reads_no_other_tenant_and_no_network() {
    let app = TestApp::spawn_with(Options {
        no_worker: true,
        ..Default::default()
    })
    .await;
    app.wait_until_ready().await;
    let dir = lectern_tests::scratch_dir("hostile");
    let first_worker = app.spawn_worker("worker-1.log");

    // The victim's video, processed and stored: 640 × 360.
    let victim = app.verified_instructor("victim@example.com").await.0;
    let victim_mp4 = make_video(&dir, "victim.mp4", 640, 360, 4, "mp4");
    let (victim_id, victim_job) = upload(&app, &victim, &victim_mp4, "victim.mp4").await;
    assert_eq!(
        final_state(&app, &victim_job, &app.dir.join("worker-1.log")).await,
        "succeeded"
    );
    drop(first_worker);
    let victim_segments: Vec<PathBuf> = files_under(&media_dir(&app, &victim_id))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "ts"))
        .collect();
    assert!(
        !victim_segments.is_empty(),
        "the victim's segments are on disk"
    );

    // Two attackers upload a real MP4 (176 × 144), complete it, then PUT a playlist of the same
    // size to the same presigned URL: one naming the victim's segments by absolute path, one a
    // server on loopback. No worker runs until both are swapped.
    let attacker = app.verified_instructor("attacker@example.com").await.0;
    let attacker_mp4 = make_video(&dir, "attacker.mp4", 176, 144, 2, "mp4");
    let (port, connections) = connection_counter();
    let local = playlist(
        &victim_segments
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>(),
        attacker_mp4.len(),
    );
    let remote = playlist(
        &[format!("http://127.0.0.1:{port}/segment0.ts")],
        attacker_mp4.len(),
    );
    let mut attacks = Vec::new();
    for (name, swapped) in [("local.mp4", local), ("remote.mp4", remote)] {
        let started = start_upload(&app, &attacker, attacker_mp4.len(), name).await;
        assert_eq!(put(&app, &started, attacker_mp4.clone()).await, 200);
        let id = started["media"]["id"].as_str().unwrap().to_owned();
        let (status, done) = complete(&app, &attacker, &id).await;
        assert_eq!(status, 202, "{done}");
        // The URL cannot be revoked; what it writes now must never be read.
        let _ = put(&app, &started, swapped).await;
        attacks.push((id, done["job"]["id"].as_str().unwrap().to_owned()));
    }

    let _worker = app.spawn_worker("worker-2.log");
    for (id, job) in &attacks {
        let state = final_state(&app, job, &app.dir.join("worker-2.log")).await;
        let view = media(&app, &attacker, id).await;
        // Either the verified MP4 was processed, or the media failed with a reason.
        if state == "succeeded" {
            assert_eq!(view["state"], "ready", "{view}");
            assert_eq!(
                (view["width"].as_i64(), view["height"].as_i64()),
                (Some(176), Some(144)),
                "{view}"
            );
            assert!(view["duration_secs"].as_f64().unwrap() < 3.0, "{view}");
        } else {
            assert_eq!(view["state"], "failed", "{view}");
            assert!(
                view["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{view}"
            );
        }
        // What was processed is what /complete checked, byte for byte.
        let source = media_dir(&app, id).join("source");
        assert_eq!(std::fs::read(&source).unwrap(), attacker_mp4, "{id}");
        // No rendition holds the victim's segments.
        let victim_hashes: Vec<Vec<u8>> = victim_segments.iter().map(|p| sha(p)).collect();
        for file in files_under(&media_dir(&app, id)) {
            assert!(
                !victim_hashes.contains(&sha(&file)),
                "{} is the victim's",
                file.display()
            );
        }
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "the worker fetched a URL named by an upload"
    );

    // The swapped objects at the upload keys go with their media.
    for (id, _) in &attacks {
        let (status, _) = app
            .call(
                "DELETE",
                &format!("/api/v1/media/{id}"),
                Some(&attacker),
                None,
            )
            .await;
        assert_eq!(status, 202);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while attacks
        .iter()
        .any(|(id, _)| !files_under(&media_dir(&app, id)).is_empty())
    {
        assert!(Instant::now() < deadline, "objects left behind");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_file_that_starts_like_an_mp4_is_read_as_one_or_not_at_all() {
    let app = TestApp::spawn().await;
    app.wait_until_ready().await;
    let dir = lectern_tests::scratch_dir("hostile");
    let token = app.verified_instructor("sly@example.com").await.0;
    // An MPEG-TS stream whose first packet carries an `ftyp` box header: the sniff says MP4
    // (brand `jp2 `), FFmpeg's probe would pick its MPEG-TS demuxer and decode it.
    let mut bytes = make_video(&dir, "real.ts", 160, 120, 2, "mpegts");
    bytes[4..12].copy_from_slice(b"ftypjp2 ");
    let (id, job) = upload(&app, &token, &bytes, "clip.mp4").await;
    let state = final_state(&app, &job, &app.dir.join("worker.log")).await;
    let view = media(&app, &token, &id).await;
    assert_eq!(
        (state.as_str(), view["state"].as_str()),
        ("failed", Some("failed")),
        "{view}"
    );
    let reason = view["error"].as_str().unwrap();
    assert!(reason.contains("MPEG-4"), "{reason}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The work folders of a job attempt in the app's temporary folder.
fn work_folders(app: &TestApp, job: &str) -> Vec<String> {
    let job = job.replace('-', "");
    app.scratch_left()
        .into_iter()
        .filter(|name| name.starts_with(&format!("lectern-work-{job}-")))
        .collect()
}

async fn wait_for_work_folder(app: &TestApp, job: &str, log: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(name) = work_folders(app, job).into_iter().next() {
            return name;
        }
        assert!(
            Instant::now() < deadline,
            "no work folder for {job}:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until a worker's log says its start-up sweep ran.
async fn wait_for_sweep(log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains("swept working folders")
    {
        assert!(Instant::now() < deadline, "no sweep logged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_killed_workers_folder_is_swept_at_the_next_start_and_a_live_one_is_not() {
    let app = TestApp::spawn_with(Options {
        no_worker: true,
        ..Default::default()
    })
    .await;
    app.wait_until_ready().await;
    let dir = lectern_tests::scratch_dir("hostile");
    let token = app.verified_instructor("busy@example.com").await.0;
    // Long enough that transcoding its ladder takes a while.
    let mp4 = make_video(&dir, "long.mp4", 1280, 720, 60, "mp4");

    // A worker is killed mid-transcode: its folder stays behind.
    let mut killed = app.spawn_worker("worker-a.log");
    let (_, first_job) = upload(&app, &token, &mp4, "first.mp4").await;
    let dead = wait_for_work_folder(&app, &first_job, &app.dir.join("worker-a.log")).await;
    killed.signal("KILL");
    killed.wait_exit(Duration::from_secs(10)).expect("killed");
    assert!(
        app.scratch_left().contains(&dead),
        "left by the killed worker"
    );

    // The next worker sweeps it at start.
    let log_b = app.dir.join("worker-b.log");
    let _live = app.spawn_worker("worker-b.log");
    wait_for_sweep(&log_b).await;
    assert!(
        !app.scratch_left().contains(&dead),
        "{:?}",
        app.scratch_left()
    );

    // A folder in use by a live worker survives another worker's start-up sweep.
    let (_, second_job) = upload(&app, &token, &mp4, "second.mp4").await;
    let busy = wait_for_work_folder(&app, &second_job, &log_b).await;
    let log_c = app.dir.join("worker-c.log");
    let _other = app.spawn_worker("worker-c.log");
    wait_for_sweep(&log_c).await;
    let (status, job) = app
        .get_as_admin(&format!("/api/v1/jobs/{second_job}"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(job["state"], "running", "still transcoding: {job}");
    assert!(
        app.scratch_left().contains(&busy),
        "{:?}",
        app.scratch_left()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[tokio::test]
async fn the_embedded_s3_endpoint_refuses_the_published_key_pair() {
    let port = lectern_tests::free_port().to_string();
    for keys in [
        vec![
            ("S3_ACCESS_KEY_ID", "lectern-local"),
            ("S3_SECRET_ACCESS_KEY", "lectern-local-secret"),
        ],
        vec![],
    ] {
        let mut vars = vec![
            ("JWT_SECRET", lectern_tests::JWT_SECRET),
            ("STORAGE_BACKEND", "local"),
            ("LOCAL_S3_PORT", port.as_str()),
        ];
        vars.extend(keys);
        for binary in ["lectern-api", "lectern-worker"] {
            let (status, output) = run_to_end(binary, &[], &env(&vars));
            assert_eq!(status.code(), Some(2), "{binary}: {output}");
            assert!(
                output.contains("S3_SECRET_ACCESS_KEY"),
                "{binary}: {output}"
            );
            assert!(output.contains("scripts/dev run"), "{binary}: {output}");
        }
    }

    // With a pair of its own, the endpoint serves that pair and no other.
    let s3_dir = lectern_tests::scratch_dir("hostile");
    let secret = Uuid::new_v4().simple().to_string();
    let app = TestApp::spawn_with(Options {
        no_worker: true,
        env: vec![
            ("STORAGE_BACKEND".into(), "local".into()),
            ("LOCAL_S3_PORT".into(), port.clone()),
            ("LOCAL_S3_DIR".into(), s3_dir.display().to_string()),
            ("S3_ACCESS_KEY_ID".into(), "lectern-test-own".into()),
            ("S3_SECRET_ACCESS_KEY".into(), secret.clone()),
        ],
    })
    .await;
    app.wait_until_ready().await;
    let storage = |key: &str, secret: &str| {
        lectern_core::storage::Storage::new(&lectern_core::config::StorageConfig {
            endpoint: Some(format!("http://127.0.0.1:{port}").parse().unwrap()),
            bucket: lectern_tests::BUCKET.into(),
            region: "us-east-1".into(),
            access_key_id: key.into(),
            secret_access_key: lectern_core::config::Secret::from(secret),
            force_path_style: true,
            local: None,
        })
    };
    assert!(storage("lectern-test-own", &secret).list("").await.is_ok());
    assert!(
        storage("lectern-local", "lectern-local-secret")
            .list("")
            .await
            .is_err()
    );
    drop(app);
    let _ = std::fs::remove_dir_all(&s3_dir);
}

#[tokio::test]
async fn what_a_presigned_put_writes_after_complete_is_swept_once_its_url_is_dead() {
    let app = TestApp::spawn_with_env(&[
        ("MEDIA_URL_TTL_SECS", "4"),
        ("MEDIA_SWEEP_INTERVAL_SECS", "1"),
    ])
    .await;
    app.wait_until_ready().await;
    let token = app.verified_instructor("late@example.com").await.0;
    let pdf = b"%PDF-1.4 the verified document".to_vec();
    let body =
        json!({"file_name": "notes.pdf", "file_size": pdf.len(), "mime_type": "application/pdf"});
    let (status, started) = app
        .call("POST", "/api/v1/media/uploads", Some(&token), Some(&body))
        .await;
    assert_eq!(status, 201, "{started}");
    assert_eq!(put(&app, &started, pdf.clone()).await, 200);
    let id = started["media"]["id"].as_str().unwrap().to_owned();
    let (status, done) = complete(&app, &token, &id).await;
    // A document is ready at once: no job.
    assert_eq!(
        (status, done["media"]["state"].as_str()),
        (200, Some("ready")),
        "{done}"
    );
    assert!(
        !media_dir(&app, &id).join("upload").exists(),
        "removed at /complete"
    );
    let stray = b"%PDF-1.4 swapped after complete".to_vec();
    let stray = stray[..pdf.len()].to_vec();
    assert_eq!(put(&app, &started, stray).await, 200, "the URL still works");
    assert!(media_dir(&app, &id).join("upload").exists());

    let deadline = Instant::now() + Duration::from_secs(60);
    while media_dir(&app, &id).join("upload").exists() {
        assert!(
            Instant::now() < deadline,
            "stray upload never swept:\n{}",
            app.worker_log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let view = media(&app, &token, &id).await;
    assert_eq!(view["state"], "ready", "{view}");
    assert_eq!(
        std::fs::read(media_dir(&app, &id).join("source")).unwrap(),
        pdf
    );
}
